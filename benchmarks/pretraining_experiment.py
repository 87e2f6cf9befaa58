"""Experiment: does self-supervised pretraining beat training from scratch when labels are scarce?

Runs the whole pipeline with ``dvc exp run`` for every (seed, pretrain.mode), keeping only
``--label-fraction`` of the training labels (``ingest.label_fraction``: the other training
subjects join the unlabelled pool, which self-supervised pretraining reads and training from
scratch cannot use), and prints the test balanced accuracy and macro AUC of each run, the
mean and spread per mode, and the paired gain per seed:

    PATH=.venv/bin:$PATH python benchmarks/pretraining_experiment.py --seeds 1 2 3 \
        --json reports/pretraining_experiment.json

Run it in a clean checkout (it changes params.yaml through DVC's experiments, then restores
the workspace). ``--rerun MODE --json FILE`` reruns one arm and keeps the other's rows
from FILE (for a change that touches one arm only). ``--vary all`` (the default) sets
``seed``: a seed changes everything seeded (the synthetic dataset, the splits, which labels
are kept, the initial weights, the augmentation), so the spread between seeds is the whole
run-to-run variation. ``--vary
training`` sets ``training.seed`` instead: the same dataset, splits and kept labels, and
only the training's randomness (initial weights, batch order, corruptions, dropout) varies.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run(seed: int, mode: str, fraction: float, extra: list[str], vary: str = "all") -> dict:
    key = "seed" if vary == "all" else "training.seed"
    name = f"{mode.replace('_', '-')}-{key.replace('.', '-')}{seed}-labels{int(fraction * 100)}"
    command = [
        "dvc",
        "exp",
        "run",
        "--name",
        name,
        "--force",
        "-S",
        f"{key}={seed}",
        "-S",
        f"ingest.label_fraction={fraction}",
        "-S",
        f"pretrain.mode={mode}",
    ]
    for setting in extra:
        command += ["-S", setting]
    # dvc exp run leaves its -S values in params.yaml: start every run from the committed one
    subprocess.run(["git", "checkout", "params.yaml"], check=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    metrics = json.loads(Path("metrics/eval.json").read_text())
    tuned = json.loads(Path("metrics/finetune.json").read_text())
    report = json.loads(Path("data/ingested/ingest_report.json").read_text())
    return {
        "experiment": name,
        "seed": seed,
        "mode": mode,
        "balanced_accuracy": metrics["balanced_accuracy"],
        "macro_auc": metrics["macro_auc_ovr"],
        "intervals": {
            key: metrics.get("confidence_intervals", {}).get(key)
            for key in ("balanced_accuracy", "macro_auc_ovr")
        },
        "accuracy": metrics["accuracy"],
        "test_volumes": metrics["test_volumes"],
        "train_labelled": sum(report["per_split"]["train"].values()),
        "labels_hidden": report["labels_hidden"],
        "best_epoch": tuned["best_epoch"],
        "minutes": round((time.perf_counter() - started) / 60, 1),
        "settings": [f"{key}={seed}", *extra],
    }


def summarize(rows: list[dict], modes: list[str]) -> dict:
    out = {}
    for metric in ("balanced_accuracy", "macro_auc"):
        by_mode = {mode: [row[metric] for row in rows if row["mode"] == mode] for mode in modes}
        seeds = sorted({row["seed"] for row in rows})
        base, other = modes
        gains = [
            next(r[metric] for r in rows if r["seed"] == s and r["mode"] == other)
            - next(r[metric] for r in rows if r["seed"] == s and r["mode"] == base)
            for s in seeds
        ]
        out[metric] = {
            **{
                mode: {
                    "mean": round(statistics.mean(values), 4),
                    "std": round(statistics.stdev(values), 4) if len(values) > 1 else None,
                    "spread": round(max(values) - min(values), 4),
                }
                for mode, values in by_mode.items()
            },
            f"gain_{other}_over_{base}": {
                "per_seed": [round(gain, 4) for gain in gains],
                "mean": round(statistics.mean(gains), 4),
            },
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--label-fraction", type=float, default=0.2)
    parser.add_argument("--modes", nargs=2, default=["none", "self_supervised"])
    parser.add_argument("--set", action="append", default=[], help="more -S key=value")
    parser.add_argument("--vary", choices=["all", "training"], default="all")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--rerun",
        metavar="MODE",
        help="run only this mode and keep the other mode's rows from --json (after a change "
        "that affects one arm only); the file is rewritten with both",
    )
    args = parser.parse_args(argv)
    rows = []
    if args.rerun:
        if args.rerun not in args.modes or not (args.json and args.json.is_file()):
            parser.error("--rerun needs one of --modes and an existing --json to keep rows from")
        kept = json.loads(args.json.read_text())["rows"]
        rows = [row for row in kept if row["mode"] != args.rerun and row["seed"] in args.seeds]
    for seed in args.seeds:
        for mode in args.modes:
            if args.rerun and mode != args.rerun:
                continue
            row = run(seed, mode, args.label_fraction, args.set, args.vary)
            rows.append(row)
            print(json.dumps(row), flush=True)
    rows.sort(key=lambda row: (row["seed"], args.modes.index(row["mode"])))
    subprocess.run(["git", "checkout", "params.yaml"], check=False)
    summary = summarize(rows, args.modes)
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
