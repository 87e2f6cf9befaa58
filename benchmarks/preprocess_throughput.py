"""Preprocess throughput and memory: 128^3 volumes through ``stages.preprocess.run``.

    .venv/bin/python benchmarks/preprocess_throughput.py [--volumes 100] [--memory 100 400]

Measured in one run, side by side:

1. throughput (volumes/s) on ``--volumes`` volumes of 128^3 (1 mm, int16 with a scale
   slope, orientations and voxel sizes varying as in real exports) to a 64^3 RAS grid at
   2 mm with foreground centring and z-scoring, with 1 and with 2 worker processes;
   and, for reference, the usual hand-written recipe on 1 worker (nibabel
   ``as_closest_canonical``, then ``scipy.ndimage.zoom``, then a crop/pad around the
   centre of the field of view). That recipe does less: no anti-aliasing before
   downsampling, the rotation of an oblique affine dropped (``as_closest_canonical`` only
   permutes and flips axes), no foreground centring;
2. peak memory (resident set size of the stage's process and of its largest worker) for
   each count given to ``--memory``, each in a fresh process with 2 workers: it must stay
   flat (within 10%) as the number of volumes grows, since no stage holds every volume.

Prints a Markdown table; copy it into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPE = (128, 128, 128)
ORIENTATIONS = ("RAS", "LPS", "LAS", "PSR", "ASL")


def write_volumes(folder: Path, count: int) -> list[dict]:
    """``count`` head-like 128^3 volumes (int16 with a slope, .nii); their manifest rows."""
    from voxelflow.nifti import orientation_affine, save_volume

    folder.mkdir(parents=True, exist_ok=True)
    grid = np.indices(SHAPE, dtype=np.float32) - 63.5
    radius = np.sqrt((grid[0] / 55) ** 2 + (grid[1] / 60) ** 2 + (grid[2] / 50) ** 2)
    head = (800 / (1 + np.exp((radius - 1) * 20))).astype(np.float32)
    rng = np.random.default_rng(0)
    rows = []
    for index in range(count):
        data = head * rng.uniform(0.8, 1.2) + rng.normal(0, 20, SHAPE).astype(np.float32)
        codes = ORIENTATIONS[index % len(ORIENTATIONS)]
        spacing = (1.0, 1.0, float(rng.choice([1.0, 1.2])))
        affine = orientation_affine(codes, spacing, SHAPE, rng.normal(0, 5, 3))
        name = f"v{index:04d}.nii"
        save_volume(folder / name, data, affine, "int16")
        split = "train" if index % 5 else "test"
        rows.append(
            {"id": f"v{index:04d}", "subject": f"v{index:04d}", "path": name, "label": "a",
             "split": split, "volume_index": "", "repaired": 0}
        )
    return rows


def write_manifest(folder: Path, rows: list[dict]) -> Path:
    """A manifest (with the ingest report preprocess reads beside it) for ``rows``."""
    from voxelflow.atomic import write_csv, write_json

    folder.mkdir(parents=True, exist_ok=True)
    write_csv(folder / "manifest.csv", rows, list(rows[0]))
    write_json(folder / "ingest_report.json", {"classes": ["a"]})
    return folder / "manifest.csv"


def params(workers: int):
    from voxelflow.params import parse_params

    return parse_params(
        {
            "compute": {"workers": workers},
            "preprocess": {"target_spacing_mm": [2.0, 2.0, 2.0], "target_shape": [64, 64, 64]},
        }
    )


def naive_one(path: str) -> np.ndarray:
    """The usual recipe: canonical orientation, zoom to 2 mm, centre crop/pad, z-score."""
    import nibabel as nib
    from scipy import ndimage

    image = nib.as_closest_canonical(nib.load(path))
    data = image.get_fdata(dtype=np.float32)
    zooms = np.array(image.header.get_zooms()[:3]) / 2.0
    data = ndimage.zoom(data, zooms, order=1)
    out = np.full((64, 64, 64), data.min(), np.float32)
    src = [slice(max(0, (s - 64) // 2), max(0, (s - 64) // 2) + min(s, 64)) for s in data.shape]
    dst = [slice(max(0, (64 - s) // 2), max(0, (64 - s) // 2) + min(s, 64)) for s in data.shape]
    out[tuple(dst)] = data[tuple(src)]
    return (out - out.mean()) / (out.std() or 1.0)


def throughput(manifest: Path, data: Path, workers: int, scratch: Path) -> float:
    from stages import preprocess

    out = scratch / f"out-{workers}"
    start = time.perf_counter()
    summary = preprocess.run(manifest, data, out, params(workers))
    elapsed = time.perf_counter() - start
    return summary["preprocessed"] / elapsed


def naive_throughput(manifest: Path, data: Path) -> float:
    from voxelflow.dataset import read_rows

    rows = read_rows(manifest)
    start = time.perf_counter()
    for row in rows:
        naive_one(str(data / row["path"]))
    return len(rows) / (time.perf_counter() - start)


def memory_child(manifest: str, data: str, out: str) -> None:
    """Runs in a fresh process: preprocess with 2 workers, prints peak RSS (MiB) as JSON."""
    from stages import preprocess

    preprocess.run(Path(manifest), Path(data), Path(out), params(2))
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"stage_mib": own, "worker_mib": workers}))


def peak_memory(manifest: Path, data: Path, scratch: Path) -> dict:
    out = scratch / f"mem-out-{manifest.parent.name}"
    result = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(manifest), str(data), str(out)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=100)
    parser.add_argument("--memory", type=int, nargs="*", default=[100, 400])
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child)
        return
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="vf-bench-") as scratch:
        scratch = Path(scratch)
        data = scratch / "volumes"
        rows = write_volumes(data, max([args.volumes, *args.memory]))
        manifest = write_manifest(scratch / f"set-{args.volumes}", rows[: args.volumes])
        rates = {workers: throughput(manifest, data, workers, scratch) for workers in (1, 2)}
        naive = naive_throughput(manifest, data)
        print(f"\n| {args.volumes} volumes of 128^3 -> 64^3 @ 2 mm | volumes/s |")
        print("|---|---|")
        print(f"| voxelflow preprocess, 1 worker | {rates[1]:.2f} |")
        print(f"| voxelflow preprocess, 2 workers | {rates[2]:.2f} |")
        print(f"| naive recipe (canonical + zoom + crop), 1 worker | {naive:.2f} |")
        memory = {}
        for count in args.memory:  # the first `count` of the same volumes
            subset = write_manifest(scratch / f"set-{count}", rows[:count])
            memory[count] = peak_memory(subset, data, scratch)
        print("\n| volumes (2 workers) | peak RSS stage (MiB) | peak RSS largest worker (MiB) |")
        print("|---|---|---|")
        for count, figures in memory.items():
            print(f"| {count} | {figures['stage_mib']:.0f} | {figures['worker_mib']:.0f} |")
        if len(memory) > 1:
            low, high = min(memory), max(memory)
            for key in ("stage_mib", "worker_mib"):
                growth = memory[high][key] / memory[low][key] - 1
                print(f"{key}: {high} vs {low} volumes: {growth:+.1%}")


if __name__ == "__main__":
    main()
