"""The report stage: pictures, the stand-alone HTML page, comparison, and a real browser."""

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from stages import report
from tests.conftest import REPO

ARTIFACTS = Path(os.environ.get("VOXELFLOW_TEST_ARTIFACTS", REPO / "test-artifacts"))
FIGURES = {"confusion", "roc", "pr", "reliability", "training", "errors", "saliency"}


@pytest.fixture(scope="module")
def written(trained, tiny_data, tiny_params, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    params = tiny_params.model_copy(deep=True)
    params.evaluate.gallery_errors = 3
    params.evaluate.saliency_per_class = 1
    summary = report.run(
        trained / "classifier",
        trained / "pretrained",
        tiny_data["preprocessed"],
        tiny_data["ingested"],
        trained / "metrics",
        root / "reports",
        params,
        root / "evaluations.jsonl",
    )
    return root, summary


def test_report_writes_every_figure_and_embeds_them(written, trained):
    root, summary = written
    assert {Path(name).stem for name in summary["figures"]} == FIGURES
    for name in FIGURES:
        assert (root / "reports" / "figures" / f"{name}.png").read_bytes()[
            :8
        ] == b"\x89PNG\r\n\x1a\n"
    page = (root / "reports" / "index.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == len(FIGURES)
    for source in sources:  # embedded: the page stands alone
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1])[:4] == b"\x89PNG"
    metrics = json.loads((trained / "metrics" / "eval.json").read_text())
    assert f"{metrics['balanced_accuracy']:.3f}" in page
    assert "95% interval" in page and "No earlier model" in page
    assert summary["compared_with"] is None
    wrong = sum(
        row["actual"] != row["predicted"]
        for row in report._predictions(
            trained / "metrics" / "predictions.csv", metrics["confusion_matrix"]["classes"]
        )[0]
    )
    assert summary["errors_shown"] == min(3, wrong)
    history = [json.loads(line) for line in (root / "evaluations.jsonl").read_text().splitlines()]
    assert (
        len(history) == 1
        and history[0]["metrics"]["balanced_accuracy"] == metrics["balanced_accuracy"]
    )


def test_report_compares_with_the_previous_model(
    written, trained, tiny_data, tiny_params, tmp_path
):
    root, _ = written
    history = tmp_path / "evaluations.jsonl"
    older = {
        "model_hash": "0" * 64,
        "params_hash": "x",
        "date": "2026-01-01T00:00:00",
        "metrics": {"balanced_accuracy": 0.25, "brier": 2.0, "test_volumes": 3},
    }
    history.write_text(json.dumps(older) + "\n" + (root / "evaluations.jsonl").read_text())
    summary = report.run(
        trained / "classifier",
        trained / "pretrained",
        tiny_data["preprocessed"],
        tiny_data["ingested"],
        trained / "metrics",
        tmp_path / "r",
        tiny_params,
        history,
    )
    assert summary["compared_with"] == "0" * 12
    page = (tmp_path / "r" / "index.html").read_text()
    assert "Previous model: 000000000000" in page and "0.250" in page
    assert len(history.read_text().splitlines()) == 2  # the same model is not recorded twice


def test_most_confident_errors_and_saliency_examples_order():
    import numpy as np

    rows = [
        {"id": str(i), "actual": a, "predicted": p}
        for i, (a, p) in enumerate([("x", "y"), ("x", "x"), ("y", "x"), ("y", "y")])
    ]
    probabilities = np.array([[0.4, 0.6], [0.9, 0.1], [0.95, 0.05], [0.2, 0.8]])
    assert report.most_confident_errors(rows, probabilities, 5) == [2, 0]
    labels = np.array([0, 0, 1, 1])
    assert report.saliency_examples(labels, probabilities, 1) == [1, 3]


CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)
PROBE = """<script>window.addEventListener("load", () => {
  const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0);
  document.body.setAttribute("data-images", String(document.images.length));
  document.body.setAttribute("data-broken", String(broken.length));
});</script>"""


def _browse(page: Path) -> tuple[int, int]:
    """(images, broken images) of the page once loaded in headless Chromium."""
    probed = page.with_name("probed-" + page.name)
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probed.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    images = re.search(r'data-images="(\d+)"', result.stdout)
    broken = re.search(r'data-broken="(\d+)"', result.stdout)
    assert images and broken, result.stderr[-2000:]
    return int(images.group(1)), int(broken.group(1))


@pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium not installed (README: apt install chromium)"
)
def test_the_report_renders_in_headless_chromium(written, tmp_path):
    root, _ = written
    page = root / "reports" / "index.html"
    assert _browse(page) == (len(FIGURES), 0)
    # the probe does see a broken reference
    broken = tmp_path / "broken.html"
    broken.write_text(page.read_text().replace("</h1>", '</h1><img src="missing.png">', 1))
    assert _browse(broken) == (len(FIGURES) + 1, 1)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "report.png"
    screenshot.unlink(missing_ok=True)
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={screenshot}",
            "--window-size=1200,4000",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert screenshot.read_bytes()[:4] == b"\x89PNG" and screenshot.stat().st_size > 20_000
