"""Changed copies of a HIGGS CSV, to rehearse the data gate (``higgs validate``) on real files.

    higgs synth --rows 20000 --seed 1 --out /tmp/base.csv.gz
    python -m pipeline.data.variants /tmp/base.csv.gz /tmp/scaled.csv.gz --rescale lepton_pT=1.3
    python -m pipeline.data.variants /tmp/base.csv.gz /tmp/perm.csv.gz --permute m_bb
    python -m pipeline.data.variants /tmp/base.csv.gz /tmp/bal.csv.gz --signal-fraction 0.40
    python -m pipeline.data.variants /tmp/base.csv.gz /tmp/shift.csv.gz --shift-from lepton_phi
    python -m pipeline.data.variants /tmp/base.csv.gz /tmp/drop.csv.gz --drop lepton_phi

Each variant is the kind of upstream change the validation is there to catch: a unit change
(one feature rescaled), a broken join (one feature's values permuted against the labels: same
overall histogram, other per-class ones), a changed selection (the label balance), a column
dropped upstream with the rest shifted left (still 29 columns: ``--shift-from``), and a column
dropped or duplicated outright (28 or 30 columns, which the converter refuses).

The source is read with the converter's own parser (:func:`pipeline.data.convert.parse_block`)
and written with the generator's writer (:func:`pipeline.data.synth.format_csv`), so a variant
has the same text format as the file it came from would have had; only ``--drop`` and
``--duplicate`` edit the text, by comma-separated field. Files are read whole: this is for
samples (a million rows is ~110 MB of arrays), not the 11M-row file.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.core import schema
from pipeline.core.errors import PipelineError

_BLOCK_BYTES = 16 << 20
_WRITE_ROWS = 65_536


class VariantError(PipelineError):
    """A variant cannot be made from this source or with these arguments."""


def read_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a HIGGS CSV(.gz) with the converter's parser.

    Args:
        path: a local ``.csv.gz`` or ``.csv`` file.

    Returns:
        ``(labels float32 [n], features float32 [n, 28])``.

    Raises:
        VariantError: the file is missing or holds rows the converter would reject.
    """
    from pipeline.data import textblocks
    from pipeline.data.convert import parse_block

    path = Path(path)
    if not path.is_file():
        raise VariantError(f"source {path} not found; generate one with 'higgs synth --rows N --out {path}'")
    labels, features = [], []
    with open(path, "rb") as raw, textblocks.open_text(raw) as stream:
        for line0, lines, text in textblocks.iter_text_blocks(stream, _BLOCK_BYTES):
            y, x, bad = parse_block(text, lines)
            if bad:
                line, kind = bad[0]
                raise VariantError(f"{path} line {line0 + line + 1} is a bad row ({kind}); make "
                                   "variants of a clean file")
            labels.append(y)
            features.append(x)
    return np.concatenate(labels), np.concatenate(features)


def write_csv(path: str | Path, labels: np.ndarray, features: np.ndarray,
              edit: tuple[str, int] | None = None) -> Path:
    """Write rows with the generator's text format, gzipped, atomically.

    Args:
        path: destination ``.csv.gz``.
        labels: float32 [n].
        features: float32 [n, 28].
        edit: ``("drop", j)`` or ``("duplicate", j)`` removes or repeats feature ``j``'s
            field in every line (28 or 30 columns).

    Returns:
        The path written.
    """
    from isal import igzip

    from pipeline.data import synth

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with igzip.open(tmp, "wb", compresslevel=1) as out:
        for start in range(0, labels.shape[0], _WRITE_ROWS):
            text = synth.format_csv(labels[start:start + _WRITE_ROWS], features[start:start + _WRITE_ROWS])
            out.write(text if edit is None else _edit_fields(text, *edit))
    os.replace(tmp, path)
    return path


def _edit_fields(text: bytes, how: str, j: int) -> bytes:
    field = 1 + j  # the label is field 0
    out = []
    for line in text.splitlines():
        fields = line.split(b",")
        if how == "drop":
            del fields[field]
        else:
            fields.insert(field, fields[field])
        out.append(b",".join(fields))
    return b"\n".join(out) + b"\n"


def rescale(labels: np.ndarray, features: np.ndarray, feature: str,
            factor: float) -> tuple[np.ndarray, np.ndarray]:
    """One feature multiplied by ``factor`` (a unit change upstream)."""
    x = features.copy()
    x[:, _index(feature)] *= np.float32(factor)
    return labels, x


def permute(labels: np.ndarray, features: np.ndarray, feature: str,
            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One feature's values shuffled across rows: its overall histogram is kept, its relation
    to the label (and to the other features) is gone."""
    x = features.copy()
    j = _index(feature)
    x[:, j] = np.random.default_rng(seed).permutation(x[:, j])
    return labels, x


def rebalance(labels: np.ndarray, features: np.ndarray, signal_fraction: float,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of one class dropped at random (order kept) until the signal fraction is reached."""
    if not 0.0 < signal_fraction < 1.0:
        raise VariantError(f"signal fraction must be in (0, 1), got {signal_fraction}")
    signal = labels == 1
    n_sig, n_bkg = int(signal.sum()), int((~signal).sum())
    if signal_fraction < n_sig / labels.shape[0]:
        keep_class, keep = signal, round(signal_fraction * n_bkg / (1 - signal_fraction))
    else:
        keep_class, keep = ~signal, round(n_sig * (1 - signal_fraction) / signal_fraction)
    rows = np.flatnonzero(keep_class)
    dropped = np.random.default_rng(seed).choice(rows, size=rows.shape[0] - keep, replace=False)
    mask = np.ones(labels.shape[0], bool)
    mask[dropped] = False
    return labels[mask], features[mask]


def shift_from(labels: np.ndarray, features: np.ndarray, feature: str) -> tuple[np.ndarray, np.ndarray]:
    """``feature`` dropped and every later column shifted left; the last one is repeated to
    keep 28 (what a dropped column looks like to a reader that only counts columns)."""
    j = _index(feature)
    x = np.concatenate([features[:, :j], features[:, j + 1:], features[:, -1:]], axis=1)
    return labels, np.ascontiguousarray(x)


def _index(feature: str) -> int:
    try:
        return schema.feature_index(feature)
    except KeyError as exc:
        raise VariantError(str(exc).strip("'\"")) from None


def make(source: str | Path, out: str | Path, *, rescale_by: tuple[str, float] | None = None,
         permute_feature: str | None = None, signal_fraction: float | None = None,
         shift_feature: str | None = None, drop: str | None = None, duplicate: str | None = None,
         seed: int = 0) -> Path:
    """Write one changed copy of ``source`` (the changes given are applied in this order).

    Args:
        source: a HIGGS CSV(.gz).
        out: the variant's path.
        rescale_by: ``(feature, factor)``.
        permute_feature: a feature to permute against the labels.
        signal_fraction: the signal fraction to reach by dropping rows.
        shift_feature: a feature to drop, shifting the later columns left.
        drop: a feature whose field is removed (28 columns).
        duplicate: a feature whose field is repeated (30 columns).
        seed: seed of the permutation and the row drop.

    Returns:
        The path written.
    """
    labels, features = read_csv(source)
    if rescale_by is not None:
        labels, features = rescale(labels, features, *rescale_by)
    if permute_feature is not None:
        labels, features = permute(labels, features, permute_feature, seed)
    if signal_fraction is not None:
        labels, features = rebalance(labels, features, signal_fraction, seed)
    if shift_feature is not None:
        labels, features = shift_from(labels, features, shift_feature)
    if drop is not None and duplicate is not None:
        raise VariantError("give one of --drop and --duplicate")
    edit = ("drop", _index(drop)) if drop else ("duplicate", _index(duplicate)) if duplicate else None
    return write_csv(out, labels, features, edit)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipeline.data.variants SOURCE OUT [changes]``; exit 2 with one line on errors."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.data.variants",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("source")
    parser.add_argument("out")
    parser.add_argument("--rescale", metavar="FEATURE=FACTOR")
    parser.add_argument("--permute", metavar="FEATURE")
    parser.add_argument("--signal-fraction", type=float)
    parser.add_argument("--shift-from", metavar="FEATURE")
    parser.add_argument("--drop", metavar="FEATURE")
    parser.add_argument("--duplicate", metavar="FEATURE")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        rescale_by = None
        if args.rescale:
            name, _, factor = args.rescale.partition("=")
            rescale_by = (name, float(factor))
        path = make(args.source, args.out, rescale_by=rescale_by, permute_feature=args.permute,
                    signal_fraction=args.signal_fraction, shift_feature=args.shift_from,
                    drop=args.drop, duplicate=args.duplicate, seed=args.seed)
    except (PipelineError, ValueError) as exc:
        print(f"variants: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
