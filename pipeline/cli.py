"""The ``higgs`` command line: thin handlers over the library in ``pipeline/``.

    higgs synth --rows 100000 --seed 1 --out data/sources/sample.csv.gz
    higgs convert --source data/sources/sample.csv.gz --out data/sample
    higgs verify data/sample
    higgs validate --data data/sample --against runs      # or --baseline data/other
    higgs train --data data/sample --out runs/try --preset sample --workers 2
    higgs lr-find --data data/sample --out runs/lrfind --set train.optimizer=sgd
    higgs tune --data data/sample --out runs/tune --trials 8
    higgs evaluate --data data/sample --run runs/try
    higgs publish --run runs/try --to published
    higgs models --to published
    higgs rollback --to published --run 20261121-083000-sample
    higgs run --preset sample
    higgs paper --preset paper      # Baldi et al. 2014 Table 1: deep model and BDT × 3 feature sets

Every command prints what it wrote and exits non-zero with a one-line reason on failure.
Config comes from ``--preset``, ``--config FILE.yaml`` and repeated ``--set key=value``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections.abc import Callable, Sequence

from pipeline.core.config import Config, StrategyName, choices, load_config, preset_names
from pipeline.core.errors import PipelineError

log = logging.getLogger("higgs")


def _add_config_args(parser: argparse.ArgumentParser, default_preset: str = "sample") -> None:
    parser.add_argument("--preset", default=default_preset, choices=preset_names(),
                        help=f"named configuration (default: {default_preset})")
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file with config overrides")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="override one config value (repeatable)")


def _config(args: argparse.Namespace, extra: Sequence[str] = ()) -> Config:
    return load_config(args.preset, args.config, [*args.overrides, *extra])


# --- handlers: parse → config → one library call → print what was written ---------------


def cmd_synth(args: argparse.Namespace) -> int:
    from pipeline.data import synth

    result = synth.write_csv(args.out, rows=args.rows, seed=args.seed, fmt=args.format)
    print(f"wrote {result.rows} events ({result.signal_fraction:.1%} signal) to {result.path} "
          f"[{result.events_per_s:,.0f} events/s generated, {result.write_rows_per_s:,.0f} rows/s written]")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    cfg = _config(args, [f"data.source={args.source}"] if args.source else [])
    from pipeline.data import source

    info = source.ensure_source(cfg.data)
    print(f"source ready: {info.path} ({info.bytes:,} bytes, sha256 {info.sha256})")
    return 0


def cmd_convert(args: argparse.Namespace, beam_args: Sequence[str]) -> int:
    extra = [f"data.max_bad_rows={args.max_bad_rows}"] if args.max_bad_rows is not None else []
    cfg = _config(args, extra)
    from pipeline.data import convert, source

    src = source.resolve(args.source, cfg.data)
    result = convert.convert(src, args.out, cfg.data, beam_args=beam_args, overwrite=args.overwrite,
                             wait=args.wait)
    rows = result.manifest["rows"]
    verb = "already complete, nothing to do:" if result.skipped else "wrote"
    print(f"{verb} {args.out} — training {rows['training']:,}, validation {rows['validation']:,}, "
          f"test {rows['test']:,} rows, {result.manifest['bad_rows']} bad rows")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from pipeline.data import verify

    splits = args.split or None
    result = verify.verify_dataset(args.data, crc=not args.sizes_only,
                                   **({"splits": splits} if splits else {}))
    print(result.summary())
def cmd_validate(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from pipeline import chain
    from pipeline.data import dataset

    report = chain.step_validate(cfg, args.data, args.against or cfg.runtime.publish_to,
                                 baseline=args.baseline, require_baseline=True)
    print(report.table_text(compact=not args.all))
    print(f"wrote {dataset.validation_uri(args.data)}")
    if not report.ok:
        print(f"higgs validate: {report.headline()}", file=sys.stderr)
        return 2
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    extra = []
    if args.strategy:
        extra.append(f"train.strategy={args.strategy}")
    if args.workers:
        extra.append(f"train.workers={args.workers}")
    if args.epochs is not None:
        extra.append(f"train.epochs={args.epochs}")
    cfg = _config(args, extra)
    from pipeline import backends
    from pipeline.training import train

    if args.estimate:
        estimate = train.estimate(cfg, args.data)
        print(estimate.summary())
        return 0
    result = backends.train(cfg, args.data, args.out)
    print(f"wrote {result.run_dir} (model {result.model_path}, {result.epochs} epochs, "
          f"best val_auc {result.best_val_auc:.4f})")
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from pipeline.training import lrfind

    result = lrfind.lr_find(cfg, args.data, args.out, min_lr=args.min_lr, max_lr=args.max_lr,
                            steps=args.steps)
    stopped = ", stopped on divergence" if result.diverged else ""
    print(f"suggested learning rate {result.suggested_lr:.3g} (min-loss rate / 10; steepest "
          f"{result.steepest_lr:.3g}) from {len(result.lrs)} steps{stopped}; "
          f"wrote {result.plot_path} and {result.json_path}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    extra = [f"tune.trials={args.trials}"] if args.trials else []
    extra += [f"tune.parallel={args.parallel}"] if args.parallel else []
    cfg = _config(args, extra)
    from pipeline.training import tune

    print(tune.summary(tune.tune(cfg, args.data, args.out)))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    cfg = _config(args)
    from pipeline import chain

    metrics = chain.step_evaluate(cfg, args.data, args.run, args.published or cfg.runtime.publish_to)
    base = metrics.get("baseline")
    base_auc = f"{base['auc']:.4f}" if base else "off"
    print(f"wrote {args.run}/report — AUC {metrics['auc']:.4f} "
          f"(95% CI {metrics['auc_ci95'][0]:.4f}–{metrics['auc_ci95'][1]:.4f}, "
          f"Keras estimate {metrics['keras_auc']:.4f}), BDT baseline {base_auc}, "
          f"blessed: {metrics.get('blessed')}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from pipeline.publish import store as publish

    result = publish.publish(args.run, args.to, via=args.via)
    if not result.copied:
        what = f"{result.uri} was already published with these {result.files} files (verified)"
    elif result.copied < result.files:  # an earlier publish of this run stopped midway
        what = (f"completed {result.uri}: copied {result.copied} of {result.files} files, "
                "verified the rest (already there)")
    else:
        what = f"published {result.files} files to {result.uri}"
    print(f"{what}; {result.latest_reason}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from pipeline.publish import store

    print(store.format_models(store.list_models(args.to), args.to))
    if args.history:
        def auc(x: float | None) -> str:
            return "—" if x is None else f"{x:.4f}"

        for move in store.read_history(args.to):
            print(f"{move['at']}  {move['action']:8}  {move['from'] or '—'} → {move['to']}  "
                  f"AUC {auc(move.get('from_auc'))} → {auc(move.get('to_auc'))}  "
                  f"by {move['by']} via {move['via']}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from pipeline.publish import store

    _moved, reason = store.rollback(args.to, args.run, via=args.via)
    print(reason)
    return 0


def cmd_run(args: argparse.Namespace, beam_args: Sequence[str]) -> int:
    extra = [f"data.source={args.source}"] if args.source else []
    cfg = _config(args, extra)
    from pipeline import chain

    result = chain.run_chain(cfg, data=args.data, run_dir=args.out, publish_to=args.to,
                             beam_args=beam_args)
    print(result.summary())
    return 0


def cmd_paper(args: argparse.Namespace, beam_args: Sequence[str]) -> int:
    extra = [f"data.source={args.source}"] if args.source else []
    cfg = _config(args, extra)
    from pipeline.experiments import paper

    result = paper.run_paper(cfg, data=args.data, out=args.out, beam_args=beam_args)
    print(result.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the ``higgs`` argument parser (all subcommands)."""
    parser = argparse.ArgumentParser(prog="higgs", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="generate a HIGGS-like CSV.gz (the embedded sample)")
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True, metavar="FILE.csv.gz")
    p.add_argument("--format", default="uci", choices=["uci", "compact"],
                   help="uci: every value as %%.18e like the real HIGGS.csv.gz (default); "
                        "compact: shortest float32 text")
    p.set_defaults(handler=cmd_synth)

    p = sub.add_parser("fetch", help="download or generate the source file (resumes, verifies)")
    p.add_argument("--source", default=None, metavar="URI", help="path, gs:// or https:// URL")
    _add_config_args(p)
    p.set_defaults(handler=cmd_fetch)

    p = sub.add_parser("convert", help="CSV.gz → sharded TFRecords (Apache Beam); "
                                       "unknown options go to Beam")
    p.add_argument("--source", required=True, metavar="URI")
    p.add_argument("--out", required=True, metavar="DATA")
    p.add_argument("--overwrite", action="store_true",
                   help="rebuild even if complete (replaces only the files the old manifest lists)")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for another conversion into DATA to finish (default: refuse)")
    p.add_argument("--max-bad-rows", type=int, default=None)
    _add_config_args(p)
    p.set_defaults(handler=cmd_convert, takes_beam_args=True)

    p = sub.add_parser("verify", help="check every shard's records and CRCs against DATA/manifest.json")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--split", action="append", choices=["training", "validation", "test"],
                   help="check only this split (repeatable; default: all)")
    p.add_argument("--sizes-only", action="store_true", help="presence and sizes only, no CRCs")
    p.set_defaults(handler=cmd_verify)
    p = sub.add_parser("validate", help="compare a dataset with the published model's dataset "
                                        "(drift, schema, label balance); exit 2 on anomalies")
    p.add_argument("--data", required=True, metavar="DATA")
    against = p.add_mutually_exclusive_group()
    against.add_argument("--baseline", default=None, metavar="DATA", help="the dataset to compare with")
    against.add_argument("--against", default=None, metavar="OUT",
                         help="compare with the dataset of the model published here "
                              "(default: runtime.publish_to)")
    p.add_argument("--all", action="store_true", help="print every check, not one scope per feature")
    _add_config_args(p)
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser("train", help="train the wide-and-deep model")
    p.add_argument("--data", required=True, metavar="DATA")
    p.add_argument("--out", required=True, metavar="RUN")
    p.add_argument("--strategy", default=None,
                   choices=choices(StrategyName))
    p.add_argument("--workers", type=int, default=None,
                   help="start N MultiWorkerMirroredStrategy processes on 127.0.0.1")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--estimate", action="store_true",
                   help="time a few real steps and print the expected run time; no training")
    _add_config_args(p)
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("lr-find", help="LR range test: loss vs exponentially growing rate → PNG + JSON")
    p.add_argument("--data", required=True, metavar="DATA")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--min-lr", type=float, default=1e-6)
    p.add_argument("--max-lr", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=100)
    _add_config_args(p)
    p.set_defaults(handler=cmd_lr_find)

    p = sub.add_parser("tune", help="hyperparameter search (Optuna) over the tune.* space → best_config.yaml")
    p.add_argument("--data", required=True, metavar="DATA")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--trials", type=int, default=None, help="total trials (default: tune.trials)")
    p.add_argument("--parallel", type=int, default=None, help="trials at once (default: tune.parallel)")
    _add_config_args(p)
    p.set_defaults(handler=cmd_tune)

    p = sub.add_parser("evaluate", help="exact AUC report, baseline and blessing → RUN/report/")
    p.add_argument("--data", required=True, metavar="DATA")
    p.add_argument("--run", required=True, metavar="RUN")
    p.add_argument("--published", default=None, metavar="OUT",
                   help="where published models live, to compare against (default: runtime.publish_to)")
    _add_config_args(p)
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser("publish", help="copy model + report to a directory or gs:// (immutable); "
                                       "latest.json moves by compare-and-swap to a blessed model")
    p.add_argument("--run", required=True, metavar="RUN")
    p.add_argument("--to", required=True, metavar="OUT")
    p.set_defaults(handler=cmd_publish)

    p = sub.add_parser("models", help="list the published models: AUC, blessing, dataset, code, latest")
    p.add_argument("--to", required=True, metavar="OUT", help="the published store (directory or gs://)")
    p.add_argument("--history", action="store_true", help="also print every move of latest.json")
    p.set_defaults(handler=cmd_models)

    p = sub.add_parser("rollback", help="point latest.json at an earlier published, blessed model")
    p.add_argument("--to", required=True, metavar="OUT", help="the published store (directory or gs://)")
    p.add_argument("--run", required=True, metavar="ID", help="the published model's run id")
    p.set_defaults(handler=cmd_rollback)

    p = sub.add_parser("run", help="the whole chain in-process (what the flow runs)")
    p.add_argument("--source", default=None, metavar="URI")
    p.add_argument("--data", default=None, metavar="DATA")
    p.add_argument("--out", default=None, metavar="RUN")
    p.add_argument("--to", default=None, metavar="OUT")
    _add_config_args(p)
    p.set_defaults(handler=cmd_run, takes_beam_args=True)

    p = sub.add_parser("paper", help="the paper's Table 1: deep model and BDT on the low-level, "
                                     "high-level and complete feature sets → OUT/table.md")
    p.add_argument("--source", default=None, metavar="URI", help="source to convert (without --data)")
    p.add_argument("--data", default=None, metavar="DATA", help="a converted dataset (default: convert "
                                                                "the config's source)")
    p.add_argument("--out", default=None, metavar="OUT",
                   help="output directory (default: <runs_root>/paper-<time>-<preset>)")
    _add_config_args(p, default_preset="paper")
    p.set_defaults(handler=cmd_paper, takes_beam_args=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``higgs`` console script; returns the exit code."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # Beam's and Dask's INFO lines say nothing a user acts on
        logging.getLogger("apache_beam").setLevel(logging.WARNING)
        # dask.distributed sets its loggers' levels from its config when first imported.
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    handler: Callable[..., int] = args.handler
    args.via = shlex.join(["higgs", *(sys.argv[1:] if argv is None else argv)])  # for the registry
    try:
        if getattr(args, "takes_beam_args", False):
            return handler(args, unknown)
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        return handler(args)
    except (PipelineError, FileNotFoundError) as exc:
        print(f"higgs {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"higgs {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
