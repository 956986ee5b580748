"""Data validation on real files: generated samples, changed copies, the real converter and CLI.

    .venv/bin/pytest tests/test_validate.py -q

Every dataset here is a CSV.gz written by ``pipeline.data.synth`` or ``pipeline.data.variants``
and converted by ``pipeline.data.convert`` (DirectRunner); ``higgs validate`` runs through
``pipeline.cli.main``. The flow's gate is in tests/test_flow_validate.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline import cli
from pipeline.core import schema
from pipeline.core.config import EvaluateConfig, ValidateConfig, load_config
from pipeline.data import convert, dataset, records, stats, synth, validate, variants
from pipeline.evaluation.evaluate import bless

ROWS = 20_000  # training split 18,182 rows, ~9k per class
CFG = ValidateConfig()


@pytest.fixture(scope="module")
def drift(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Converted datasets: ``base`` (seed 1), ``clean2``/``clean3`` (seeds 2, 3) and changed copies
    of ``base`` (``scaled``, ``permuted``, ``balance``, ``shifted``); ``<name>.csv.gz`` sources
    for ``dropped``/``duplicated`` too."""
    root = tmp_path_factory.mktemp("drift")
    sources = {name: root / f"{name}.csv.gz" for name in
               ("base", "clean2", "clean3", "scaled", "permuted", "balance", "shifted", "dropped",
                "duplicated")}
    for seed, name in ((1, "base"), (2, "clean2"), (3, "clean3")):
        synth.write_csv(sources[name], rows=ROWS, seed=seed)
    base = sources["base"]
    variants.make(base, sources["scaled"], rescale_by=("lepton_pT", 1.3))
    variants.make(base, sources["permuted"], permute_feature="m_bb")
    variants.make(base, sources["balance"], signal_fraction=0.40)
    variants.make(base, sources["shifted"], shift_feature="lepton_phi")
    variants.make(base, sources["dropped"], drop="lepton_phi")
    variants.make(base, sources["duplicated"], duplicate="jet1_pt")
    data_cfg = load_config("sample").data
    out = {f"{name}.csv.gz": str(path) for name, path in sources.items()}
    for name in ("base", "clean2", "clean3", "scaled", "permuted", "balance", "shifted"):
        out[name] = str(root / name)
        convert.convert(str(sources[name]), out[name], data_cfg)
    return out


def _validate_cli(capsys: pytest.CaptureFixture[str], data: str, baseline: str,
                  *extra: str) -> tuple[int, str, str, dict]:
    code = cli.main(["validate", "--data", data, "--baseline", baseline, *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err, json.loads(Path(dataset.validation_uri(data)).read_text())


def _anomalies(report: dict) -> list[dict]:
    return [c for c in report["checks"] if c["status"] == "ANOMALY"]


# --- proven both ways: clean pairs pass, every injected change raises its anomaly ------------


@pytest.mark.parametrize(("data", "baseline"), [("clean2", "base"), ("clean3", "base"), ("clean3", "clean2")])
def test_samples_with_different_seeds_validate_clean_with_margin(drift, capsys, data, baseline):
    code, out, err, report = _validate_cli(capsys, drift[data], drift[baseline])
    assert code == 0, err
    assert report["ok"] is True and report["anomalies"] == 0 and report["worst"] is None
    assert f"{drift[data]} matches {drift[baseline]}" in out and err == ""
    checks = report["checks"]
    assert len(checks) == 5 + 2 * 3 * schema.NUM_FEATURES  # dataset checks + psi/mean_shift × scopes
    # The thresholds keep their margin over same-generator noise at this size (docs/validate.md).
    worst = max(c["value"] / c["threshold"] for c in checks if c["threshold"] > 0)
    assert worst < 0.6, [c for c in checks if c["threshold"] and c["value"] / c["threshold"] >= 0.6]


def test_rescaled_feature_is_caught_on_that_feature_only(drift, capsys):
    code, out, err, report = _validate_cli(capsys, drift["scaled"], drift["base"])
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("higgs validate: 6 data anomalies in ")
    assert "worst: lepton_pT psi (" in err and "validation.json" in err
    anomalies = _anomalies(report)
    assert {(a["feature"], a["statistic"], a["scope"]) for a in anomalies} == {
        ("lepton_pT", stat, scope) for stat in ("psi", "mean_shift") for scope in stats.SCOPES}
    shift = next(a for a in anomalies if a["statistic"] == "mean_shift" and a["scope"] == "overall")
    assert shift["value"] > 3 * CFG.max_mean_shift  # 30% of a mean ~1 with std ~0.6
    assert "ANOMALY" in out and report["worst"]["feature"] == "lepton_pT"


def test_feature_permuted_against_the_labels_keeps_its_overall_histogram(drift, capsys):
    code, _, err, report = _validate_cli(capsys, drift["permuted"], drift["base"])
    assert code == 2 and "m_bb" in err
    anomalies = _anomalies(report)
    assert {a["feature"] for a in anomalies} == {"m_bb"}
    assert {a["scope"] for a in anomalies} == {"signal", "background"}
    overall = next(c for c in report["checks"]
                   if (c["feature"], c["statistic"], c["scope"]) == ("m_bb", "psi", "overall"))
    assert overall["status"] == "OK" and overall["value"] < CFG.max_psi / 4  # the same values


def test_changed_label_balance_is_a_signal_fraction_anomaly(drift, capsys):
    code, _, err, report = _validate_cli(capsys, drift["balance"], drift["base"])
    assert code == 2 and "signal_fraction_shift" in err
    assert report["worst"]["statistic"] == "signal_fraction_shift"
    assert 0.12 < report["worst"]["value"] < 0.14  # 0.53 → 0.40
    # The classes themselves are unchanged: no per-class check fires.
    assert not [a for a in _anomalies(report) if a["scope"] in ("signal", "background")]


def test_column_dropped_upstream_and_the_rest_shifted_is_caught(drift, capsys):
    code, _, _, report = _validate_cli(capsys, drift["shifted"], drift["base"])
    assert code == 2
    schema_check = next(c for c in report["checks"] if c["statistic"] == "schema")
    assert schema_check["status"] == "OK"  # still 29 columns: only the values tell
    flagged = {a["feature"] for a in _anomalies(report)}
    assert flagged <= set(schema.FEATURES[2:]) and len(flagged) >= 20
    assert {"lepton_pT", "lepton_eta"}.isdisjoint(flagged)  # before the dropped column


@pytest.mark.parametrize(("name", "columns"), [("dropped", 28), ("duplicated", 30)])
def test_column_dropped_or_duplicated_is_refused_by_the_converter(drift, capsys, tmp_path, name, columns):
    out = tmp_path / name
    code = cli.main(["convert", "--source", drift[f"{name}.csv.gz"], "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"all have {columns} columns, not 29" in err and "a column was dropped or added" in err
    assert not Path(dataset.manifest_uri(str(out))).exists()


def test_the_table_lists_feature_statistic_value_threshold_status(drift, capsys):
    code, out, _, _ = _validate_cli(capsys, drift["scaled"], drift["base"], "--all")
    assert code == 2
    lines = out.splitlines()
    assert lines[0].split() == ["feature", "statistic", "scope", "value", "threshold", "status"]
    rows = [line.split() for line in lines[1:] if line.split() and line.split()[-1] in ("OK", "ANOMALY")]
    assert len(rows) == 5 + 2 * 3 * schema.NUM_FEATURES  # --all: every check
    assert rows[5][:3] == ["lepton_pT", "psi", "overall"] and rows[5][-1] == "ANOMALY"


# --- the statistics the converter writes ----------------------------------------------------


def _training_rows(data: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels and features of the training shards, decoded from the record bytes."""
    ds = dataset.open_dataset(data)
    blob = b"".join(Path(p).read_bytes() for p in ds.shard_paths("training"))
    framed = np.frombuffer(blob, np.uint8).reshape(-1, records.FRAMED_BYTES)
    features, labels = records.decode_examples(framed[:, 12:12 + records.EXAMPLE_BYTES])
    return labels, features


def test_manifest_statistics_match_numpy_on_the_records(drift):
    manifest = dataset.load_manifest(drift["base"])
    st = manifest["statistics"]
    assert st["version"] == stats.STATISTICS_VERSION and st["bad_row_rate"] == 0.0
    assert {s: st["splits"][s]["rows"] for s in schema.SPLITS} == manifest["rows"]
    labels, features = _training_rows(drift["base"])
    train = st["splits"]["training"]
    assert train["signal_fraction"] == pytest.approx(float(labels.mean()))
    for j, name in enumerate(schema.FEATURES):
        edges = np.asarray(st["edges"][name])
        for scope, rows in (("signal", labels == 1), ("background", labels == 0),
                            ("overall", np.ones_like(labels, bool))):
            column = features[rows, j].astype(np.float64)
            expected = np.bincount(np.searchsorted(edges, column, side="right"), minlength=len(edges) + 1)
            got = train[scope][name]
            assert got["histogram"] == expected.tolist(), (name, scope)
            assert got["count"] == rows.sum()
            assert got["mean"] == pytest.approx(column.mean(), rel=1e-9, abs=1e-12)
            assert got["std"] == pytest.approx(column.std(), rel=1e-6)
            assert (got["min"], got["max"]) == (column.min(), column.max())
    # feature_stats (the training split, all rows) stays what it was.
    assert manifest["feature_stats"]["m_bb"]["mean"] == train["overall"]["m_bb"]["mean"]


def test_histogram_bins_are_fixed_exact_and_mergeable():
    kinds = schema.FEATURE_KINDS
    # Values exactly on an edge go to the bin above it; below / above the range to the end bins.
    for j, name in enumerate(schema.FEATURES):
        edges = stats.bin_edges(kinds[name])
        probe = np.concatenate([edges, np.nextafter(edges.astype(np.float32), -np.inf),
                                [-1e6, -1.0, 0.0, 1e6]]).astype(np.float32)
        block = np.zeros((probe.size, schema.NUM_FEATURES), np.float32)
        block[:, j] = probe
        acc = stats.SplitStats()
        acc.add(np.zeros(probe.size, np.float32), block)
        got = acc.describe()["background"][name]["histogram"]
        expected = np.bincount(np.searchsorted(edges, probe.astype(np.float64), side="right"),
                               minlength=len(edges) + 1)
        assert got == expected.tolist(), name
    labels, features = synth.generate(5000, seed=4)
    whole, parts = stats.SplitStats(), stats.SplitStats()
    whole.add(labels, features)
    for a, b in ((0, 1234), (1234, 1235), (1235, 5000)):
        part = stats.SplitStats()
        part.add(labels[a:b], features[a:b])
        parts.merge(stats.SplitStats.from_dict(part.to_dict()))  # as between Beam steps
    assert (parts.histograms == whole.histograms).all() and parts.rows == 5000
    for mine, theirs in zip(parts.classes, whole.classes, strict=True):
        np.testing.assert_allclose(mine.mean, theirs.mean, rtol=1e-12)
        np.testing.assert_allclose(mine.m2, theirs.m2, rtol=1e-6)


def test_empty_block_encodes_to_no_records():
    empty = records.encode_examples(np.zeros((0, schema.NUM_FEATURES), np.float32), np.zeros(0, np.float32))
    assert empty.shape == (0, records.EXAMPLE_BYTES) and records.frame_records(empty) == b""


def test_reconversion_drops_the_old_validation_and_an_old_dataset_is_rebuilt(drift, tmp_path):
    source, out = drift["clean2.csv.gz"], str(tmp_path / "data")
    data_cfg = load_config("sample").data
    convert.convert(source, out, data_cfg)
    validate.validate(out, drift["base"], CFG)
    assert Path(dataset.validation_uri(out)).is_file()
    assert convert.convert(source, out, data_cfg).skipped is True  # reuse keeps the validation
    assert convert.convert(source, out, data_cfg, overwrite=True).skipped is False
    assert not Path(dataset.validation_uri(out)).exists()  # it described the old files
    # A dataset converted before the manifest had statistics: same source, rebuilt (not refused).
    manifest_path = Path(dataset.manifest_uri(out))
    old = json.loads(manifest_path.read_text())
    del old["statistics"]
    manifest_path.write_text(json.dumps(old))
    again = convert.convert(source, out, data_cfg)
    assert again.skipped is False and again.manifest["statistics"]["version"] == stats.STATISTICS_VERSION


# --- comparisons that cannot be made, errors, the gate and the blessing ----------------------


def test_missing_statistics_and_other_schema_are_anomalies_not_crashes(drift):
    base = dataset.load_manifest(drift["base"])
    new = dataset.load_manifest(drift["clean2"])
    old = {k: v for k, v in base.items() if k != "statistics"}
    checks = {c.statistic: c for c in validate.compare(new, old, CFG)}
    assert checks["statistics"].anomaly and "rebuild it with 'higgs convert --overwrite'" in \
        checks["statistics"].detail
    assert "psi" not in checks  # nothing comparable: no distance is made up
    other = {**base, "features": [*schema.FEATURES[1:], "lepton_pt_gev"]}
    schema_check = next(c for c in validate.compare(new, other, CFG) if c.statistic == "schema")
    assert schema_check.anomaly and "baseline lacks lepton_pT" in schema_check.detail
    assert "unknown columns lepton_pt_gev" in schema_check.detail


def test_unusable_baselines_fail_with_one_line(drift, capsys, tmp_path):
    assert cli.main(["validate", "--data", drift["clean2"], "--baseline", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "baseline " in err and "is not a dataset" in err
    assert cli.main(["validate", "--data", drift["clean2"], "--against", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no model is published at" in err and "--baseline DATA" in err
    assert cli.main(["validate", "--data", str(tmp_path / "nodata"), "--baseline", drift["base"]]) == 2
    assert "is not a dataset" in capsys.readouterr().err


def test_thresholds_come_from_the_validate_config(drift, capsys):
    code, _, _, report = _validate_cli(capsys, drift["scaled"], drift["base"],
                                       "--set", "validate.max_psi=2", "--set", "validate.max_mean_shift=2")
    assert code == 0 and report["thresholds"]["max_psi"] == 2.0


def test_fail_stops_warn_passes_and_the_blessing_refuses(drift):
    report = validate.validate(drift["balance"], drift["base"], CFG, baseline_run="20261121-083000-sample")
    with pytest.raises(validate.DataAnomalyError) as err:
        validate.enforce(report, "fail")
    assert "\n" not in str(err.value) and "published run 20261121-083000-sample" in str(err.value)
    validate.enforce(report, "warn")  # trains; the blessing says no
    decision = bless(0.95, None, EvaluateConfig(), validation=report)
    assert decision["blessed"] is False
    assert decision["reasons"][0].startswith("data validation failed: 1 data anomaly")
    assert decision["data_validation"]["anomalies"][0]["statistic"] == "signal_fraction_shift"
    clean = validate.validate(drift["clean2"], drift["base"], CFG)
    assert bless(0.95, None, EvaluateConfig(), validation=clean)["blessed"] is True
