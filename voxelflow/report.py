"""The HTML report: one stand-alone page (images embedded) about one trained model.

:func:`render` turns plain data (what the stages wrote) into HTML; nothing here trains or
predicts. The evaluation history (:func:`record_evaluation`) is a JSON-lines file, one
entry per evaluated model (keyed by the model file's hash), from which the report picks the
previous model to compare with.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from voxelflow.atomic import write_text

# the metrics the summary table and the comparison show, with their direction
HEADLINE = {
    "balanced_accuracy": "higher",
    "accuracy": "higher",
    "macro_auc_ovr": "higher",
    "cohen_kappa": "higher",
    "sensitivity": "higher",
    "specificity": "higher",
    "log_loss": "lower",
    "brier": "lower",
    "ece": "lower",
}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
.better { color: #1a7f37; } .worse { color: #c62828; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.3em 0; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
.figures figure { margin: 0; flex: 1 1 420px; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.note { color: #555; font-size: 0.9em; }
"""


def read_history(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: line {number} is not JSON ({error})") from None
    return entries


def previous_evaluation(history: list[dict], model_hash: str) -> dict | None:
    """The latest entry of another model than ``model_hash`` (None: no earlier model)."""
    for entry in reversed(history):
        if entry.get("model_hash") != model_hash:
            return entry
    return None


def record_evaluation(path: str | Path, entry: dict) -> None:
    """Appends ``entry`` unless its model is already the last one recorded (atomically)."""
    history = read_history(path)
    if history and history[-1].get("model_hash") == entry["model_hash"]:
        history[-1] = entry
    else:
        history.append(entry)
    write_text(path, "".join(json.dumps(item, sort_keys=True) + "\n" for item in history))


def _e(value) -> str:
    return html.escape(str(value))


def _number(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _interval(intervals: dict, key: str) -> str:
    pair = intervals.get(key)
    return "" if not pair or None in pair else f"[{pair[0]:.3f}, {pair[1]:.3f}]"


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_e(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def metrics_table(metrics: dict) -> str:
    intervals = metrics.get("confidence_intervals", {})
    level = intervals.get("level")
    rows = [
        [_e(key), _number(metrics[key]), _interval(intervals, key)]
        for key in HEADLINE
        if key in metrics
    ]
    header = ["metric", "value", f"{int(level * 100)}% interval" if level else "interval"]
    per_class = [
        [
            _e(name),
            _number(values["precision"]),
            _number(values["recall"]),
            _number(values["f1"]),
            _number(values["auc_ovr"]),
            str(values["support"]),
        ]
        for name, values in metrics["per_class"].items()
    ]
    return _table(header, rows) + _table(
        ["class", "precision", "recall", "F1", "AUC (one-vs-rest)", "test volumes"], per_class
    )


def comparison_table(current: dict, previous: dict) -> str:
    rows = []
    for key, direction in HEADLINE.items():
        now, before = current.get(key), previous.get("metrics", {}).get(key)
        if now is None or before is None:
            continue
        change = now - before
        good = change > 0 if direction == "higher" else change < 0
        css = "better" if good and change else "worse" if change else ""
        rows.append(
            [_e(key), _number(before), _number(now), f'<span class="{css}">{change:+.3f}</span>']
        )
    when = previous.get("date", "?")
    return (
        f"<p>Previous model: {_e(previous.get('model_hash', '?')[:12])}, evaluated {_e(when)}"
        f" on {_e(previous.get('metrics', {}).get('test_volumes', '?'))} test volumes.</p>"
        + _table(["metric", "previous", "this model", "change"], rows)
    )


def render(context: dict, figures: dict[str, Path]) -> str:
    """The report page. ``context`` holds: ``title``, ``metrics`` (eval.json), ``data``
    (ingest report), ``model`` (model summary brief), ``params`` (text), ``training``
    (bundle facts), ``previous`` (an evaluation-history entry or None), ``notes``.
    ``figures``: name -> PNG path, embedded in this order of sections."""
    metrics = context["metrics"]
    data = context["data"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_e(context['title'])}</title><style>{STYLE}</style></head><body>",
        f"<h1>{_e(context['title'])}</h1>",
        f"<p class='note'>{_e(context.get('subtitle', ''))}</p>",
        "<h2>Test metrics</h2>",
        f"<p>{metrics['test_volumes']} test volumes "
        f"({', '.join(f'{_e(k)}: {v}' for k, v in metrics['test_volumes_per_class'].items())})."
        f" Chance balanced accuracy {_number(metrics['baselines']['chance_balanced_accuracy'])},"
        f" majority-class accuracy {_number(metrics['baselines']['majority_class_accuracy'])}."
        "</p>",
        metrics_table(metrics),
    ]
    intervals = metrics.get("confidence_intervals")
    if intervals:
        parts.append(
            f"<p class='note'>Intervals: {_e(intervals['method'])}, {intervals['resamples']} "
            f"resamples, seed {intervals['seed']}.</p>"
        )
    if "tta" in metrics:
        tta = metrics["tta"]
        parts += [
            "<h2>Test-time augmentation</h2>",
            f"<p>Averaged over {len(tta['passes'])} passes: {_e(', '.join(tta['passes']))}.</p>",
            metrics_table(tta),
        ]
    parts.append("<h2>Comparison with the previous model</h2>")
    previous = context.get("previous")
    parts.append(
        comparison_table(metrics, previous)
        if previous
        else "<p>No earlier model was evaluated in this workspace.</p>"
    )
    sections = [
        ("Evaluation plots", ["confusion", "roc", "pr", "reliability"]),
        ("Training curves", ["training"]),
        ("Most confident errors", ["errors"]),
        ("Where the model looks (Grad-CAM)", ["saliency"]),
    ]
    for heading, names in sections:
        present = [name for name in names if name in figures]
        if not present:
            continue
        parts.append(f"<h2>{_e(heading)}</h2><div class='figures'>")
        parts += [f"<figure>{_image(figures[name], name)}</figure>" for name in present]
        parts.append("</div>")
        if heading.startswith("Where"):
            parts.append(
                "<p class='note'>Grad-CAM of the true class on correctly classified test "
                "volumes, slices through the map's peak; warm colours drive the score.</p>"
            )
    splits = data.get("per_split", {})
    hidden = data.get("labels_hidden")
    hidden_note = f", {hidden} training labels hidden (label_fraction)" if hidden else ""
    parts += [
        "<h2>Data</h2>",
        f"<p>{data.get('accepted', '?')} volumes accepted, {data.get('rejected', '?')} "
        f"rejected, {data.get('subjects', '?')} subjects" + hidden_note + ".</p>",
        _table(
            ["split", *context["classes"], "unlabelled"],
            [
                [
                    _e(split),
                    *(str(counts.get(name, 0)) for name in context["classes"]),
                    str(counts.get("unlabelled", 0)),
                ]
                for split, counts in splits.items()
            ],
        ),
    ]
    if data.get("rejected_reasons"):
        parts.append(
            _table(
                ["rejection reason", "files"],
                [[_e(reason), str(count)] for reason, count in data["rejected_reasons"].items()],
            )
        )
    model = context.get("model", {})
    training = context.get("training", {})
    parts += [
        "<h2>Model</h2>",
        _table(
            ["fact", "value"],
            [[_e(key), _e(value)] for key, value in {**model, **training}.items()],
        ),
        "<h2>Parameters</h2>",
        f"<pre>{_e(context['params'])}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts)
