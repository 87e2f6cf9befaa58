"""The report's pictures, as PNG files (matplotlib, no display needed).

Each function takes plain data (lists, arrays, dicts: what evaluate and the training stages
wrote) and a path, and writes one PNG atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from voxelflow.atomic import atomic_path  # noqa: E402

DPI = 100


def _save(figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return path


def confusion_figure(matrix: Sequence[Sequence[int]], classes: list[str], path) -> Path:
    """Counts and row-normalised (recall) confusion matrices side by side."""
    counts = np.asarray(matrix, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    size = 2.2 + 0.6 * len(classes)
    figure, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    for axis, values, title, text in (
        (axes[0], counts, "counts", lambda v: f"{int(v)}"),
        (axes[1], normalised, "normalised by true class", lambda v: f"{v:.2f}"),
    ):
        axis.imshow(values, cmap="Blues", vmin=0, vmax=values.max() or 1)
        for (row, column), value in np.ndenumerate(values):
            dark = value > 0.6 * (values.max() or 1)
            axis.text(
                column,
                row,
                text(value),
                ha="center",
                va="center",
                color="white" if dark else "black",
            )
        axis.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
        axis.set_yticks(range(len(classes)), classes)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        axis.set_title(f"Confusion matrix ({title})")
    return _save(figure, path)


def curves_figure(
    curves: dict[str, list[dict]],
    x: str,
    y: str,
    title: str,
    path,
    diagonal: bool = False,
    labels: dict[str, str] | None = None,
) -> Path:
    """One line per class (ROC: ``x="fpr", y="tpr", diagonal=True``; PR: recall, precision)."""
    figure, axis = plt.subplots(figsize=(5.5, 5))
    for name, points in curves.items():
        label = (labels or {}).get(name, name)
        axis.plot(
            [p[x] for p in points],
            [p[y] for p in points],
            label=label,
            drawstyle="steps-post" if not diagonal else "default",
        )
    if diagonal:
        axis.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    axis.set_xlim(-0.02, 1.02)
    axis.set_ylim(-0.02, 1.02)
    axis.set_xlabel(x)
    axis.set_ylabel(y)
    axis.set_title(title)
    axis.legend(loc="lower right" if diagonal else "lower left", fontsize="small")
    axis.grid(alpha=0.3)
    return _save(figure, path)


def reliability_figure(points: list[dict], ece: float | None, path) -> Path:
    """Accuracy against confidence per bin (the diagonal is perfect calibration); bar
    widths follow the number of volumes in each bin."""
    figure, axis = plt.subplots(figsize=(5.5, 5))
    confidence = np.array([p["confidence"] for p in points], dtype=float)
    accuracy = np.array([p["accuracy"] for p in points], dtype=float)
    volumes = np.array([p["volumes"] for p in points], dtype=float)
    axis.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfect calibration")
    axis.scatter(
        confidence,
        accuracy,
        s=20 + 200 * volumes / max(volumes.max(), 1),
        label="bins (area: volumes)",
        zorder=3,
    )
    axis.plot(confidence, accuracy, alpha=0.5)
    axis.set_xlim(0, 1.02)
    axis.set_ylim(-0.02, 1.02)
    axis.set_xlabel("confidence (top probability)")
    axis.set_ylabel("accuracy")
    title = "Reliability diagram"
    axis.set_title(title + (f" (ECE {ece:.3f})" if ece is not None else ""))
    axis.legend(loc="upper left", fontsize="small")
    axis.grid(alpha=0.3)
    return _save(figure, path)


def training_curves_figure(histories: dict[str, dict[str, list[float]]], path) -> Path:
    """Loss and metric per epoch: one panel per (stage, kind), train and validation."""
    panels = []
    for stage, history in histories.items():
        if not history:
            continue
        kinds = [("loss", [k for k in ("loss", "val_loss") if k in history])]
        metrics = [k for k in history if not k.endswith("loss") and k != "epoch"]
        train = [k for k in metrics if not k.startswith("val_")]
        for key in train:
            kinds.append((key, [k for k in (key, f"val_{key}") if k in history]))
        panels += [(stage, kind, keys) for kind, keys in kinds if keys]
    if not panels:
        panels = [("no training history", "", [])]
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.3 * rows), squeeze=False)
    for axis in axes.flat[len(panels) :]:
        axis.axis("off")
    for axis, (stage, kind, keys) in zip(axes.flat, panels, strict=False):
        history = histories.get(stage, {})
        for key in keys:
            values = history[key]
            axis.plot(range(1, len(values) + 1), values, marker=".", label=key)
        axis.set_title(f"{stage}: {kind}")
        axis.set_xlabel("epoch")
        if keys:
            axis.legend(fontsize="small")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    return _save(figure, path)


def _slices(volume: np.ndarray, center: Sequence[int]) -> list[np.ndarray]:
    """Orthogonal slices through ``center``, each shown with axis 0 horizontal-ish."""
    i, j, k = center
    return [volume[i, :, :], volume[:, j, :], volume[:, :, k]]


def slices_gallery(items: list[dict], path, title: str = "") -> Path:
    """One row per item: its three orthogonal slices (through ``center`` or the middle),
    with an optional ``overlay`` map in [0, 1] (Grad-CAM) drawn over the slices.

    Each item: ``{"volume": array, "title": str, "overlay": array | None,
    "center": (i, j, k) | None}``.
    """
    rows = max(1, len(items))
    figure, axes = plt.subplots(rows, 3, figsize=(7.5, 2.6 * rows), squeeze=False)
    if not items:
        for axis in axes.flat:
            axis.axis("off")
        axes[0, 1].text(0.5, 0.5, "nothing to show", ha="center", va="center")
    for row, item in enumerate(items):
        volume = np.asarray(item["volume"], dtype=float)
        center = item.get("center") or tuple(size // 2 for size in volume.shape)
        low, high = np.percentile(volume, [1, 99.5])
        overlay = item.get("overlay")
        views = _slices(volume, center)
        maps = _slices(np.asarray(overlay), center) if overlay is not None else [None] * 3
        for column, (view, heat) in enumerate(zip(views, maps, strict=True)):
            axis = axes[row, column]
            axis.imshow(view.T, cmap="gray", origin="lower", vmin=low, vmax=high)
            if heat is not None:
                axis.imshow(heat.T, cmap="jet", origin="lower", alpha=0.35, vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
            if column == 0:
                axis.set_ylabel(
                    item["title"], fontsize="small", rotation=0, ha="right", va="center"
                )
        axes[row, 0].set_title(f"axis 0 = {center[0]}", fontsize="x-small")
        axes[row, 1].set_title(f"axis 1 = {center[1]}", fontsize="x-small")
        axes[row, 2].set_title(f"axis 2 = {center[2]}", fontsize="x-small")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path)


def ablation_figure(rows: list[dict], path) -> Path:
    """Each cell of the ablation: the seeds' values and their mean ± standard deviation, for
    balanced accuracy and macro AUC side by side, grouped by regime."""
    labels = [
        f"{row['regime']} · "
        + ("baseline" if row["lever"] == "baseline" else f"{row['lever']}={row['level']}")
        for row in rows
    ]
    figure, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(rows) + 1.5), sharey=True)
    for axis, metric, title in (
        (axes[0], "balanced_accuracy", "test balanced accuracy"),
        (axes[1], "macro_auc_ovr", "test macro AUC"),
    ):
        for index, row in enumerate(rows):
            cell = row.get(metric)
            if not cell:
                continue
            color = "black" if row["lever"] == "baseline" else "tab:blue"
            axis.errorbar(cell["mean"], index, xerr=cell["std"], fmt="o", color=color, capsize=3)
            axis.scatter(cell["values"], [index] * len(cell["values"]), s=10, color="gray")
        axis.set_title(title)
        axis.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(rows)), labels)
    axes[0].invert_yaxis()
    return _save(figure, path)
