import json

import pytest

from tests.benchmarks import load_benchmark


def _module():
    return load_benchmark("pretraining_experiment")


def _row(seed, mode, score):
    return {"seed": seed, "mode": mode, "balanced_accuracy": score, "macro_auc": score}


def test_rerun_replaces_one_arm_and_keeps_the_other(tmp_path, monkeypatch):
    experiment = _module()
    kept = tmp_path / "rows.json"
    old = [_row(s, m, 0.5) for s in (1, 2) for m in ("none", "self_supervised")]
    kept.write_text(json.dumps({"rows": old, "summary": {}}))
    ran = []

    def fake_run(seed, mode, fraction, extra, vary="all"):
        ran.append((seed, mode))
        return _row(seed, mode, 0.7 + seed / 100)

    monkeypatch.setattr(experiment, "run", fake_run)
    monkeypatch.setattr(experiment.subprocess, "run", lambda *a, **k: None)
    experiment.main(["--seeds", "1", "2", "--rerun", "none", "--json", str(kept)])
    assert ran == [(1, "none"), (2, "none")]
    result = json.loads(kept.read_text())
    assert [(r["seed"], r["mode"], r["balanced_accuracy"]) for r in result["rows"]] == [
        (1, "none", 0.71),
        (1, "self_supervised", 0.5),
        (2, "none", 0.72),
        (2, "self_supervised", 0.5),
    ]
    gains = result["summary"]["balanced_accuracy"]["gain_self_supervised_over_none"]
    assert gains["per_seed"] == [-0.21, -0.22]


def test_rerun_needs_rows_to_keep(tmp_path):
    experiment = _module()
    with pytest.raises(SystemExit):
        experiment.main(["--rerun", "none", "--json", str(tmp_path / "missing.json")])
