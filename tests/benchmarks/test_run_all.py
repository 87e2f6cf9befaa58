import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("run_all", REPO / "benchmarks" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_bench_replaces_only_its_own_section(tmp_path):
    run_all = _module()
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## An earlier run\n\nanalysis kept\n")
    run_all.rewrite(results, "## Latest\n\nfigures one\n")
    run_all.rewrite(results, "## Latest\n\nfigures two\n")
    text = results.read_text()
    assert text.count(run_all.START) == 1 and "figures one" not in text
    assert text.index("figures two") < text.index("## An earlier run")
    assert text.endswith("analysis kept\n")
    assert list(tmp_path.iterdir()) == [results]


def test_a_benchmark_that_cannot_run_says_why(tmp_path, monkeypatch):
    run_all = _module()
    monkeypatch.setattr(run_all, "HERE", REPO / "benchmarks")
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n")
    monkeypatch.chdir(tmp_path)
    run_all.main(["--only", "global-stats-baseline", "--results", str(results)])
    text = results.read_text()
    assert "cores usable" in text and "Python 3." in text
    assert "skipped: needs `data/preprocessed`" in text or "balanced accuracy" in text.lower()
