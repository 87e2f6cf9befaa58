"""`make bench`: every benchmark of this folder that needs no GPU, in one run, with their
figures written into benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/run_all.py [--only NAME ...] [--quick]

Each benchmark prints Markdown; this script runs them one after the other (nothing else
should run on the machine meanwhile), and replaces the section between the markers
``<!-- make bench -->`` and ``<!-- /make bench -->`` at the top of RESULTS.md with the
machine description, the date, the command of every benchmark and what it printed. The
hand-written analyses below the markers (earlier runs, GPU figures) stay as they are.

Not run here: ``pretraining_experiment.py`` (hours of training; see its docstring) and
``voxelflow ablate`` (the ablation, ``benchmarks/ablation.md``). The augmentation comparison
needs the ``bench`` extras (TorchIO, MONAI, CPU PyTorch); without them only voxelflow's
own engine and the SciPy recipe are timed, and the section says so.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
START, END = "<!-- make bench -->", "<!-- /make bench -->"


def benchmarks(quick: bool) -> dict[str, list[str]]:
    """Name -> the script and its arguments (``quick``: smaller, for a smoke run)."""
    extras = all(importlib.util.find_spec(name) for name in ("torch", "torchio", "monai"))
    pipelines = [] if extras else ["--pipelines", "naive", "voxelflow"]
    return {
        "preprocess": ["preprocess_throughput.py"]
        + (["--volumes", "8", "--memory", "8", "16"] if quick else []),
        "augment": ["bench_augment.py", *pipelines]
        + (["--shapes", "32", "--volumes", "2", "--repeats", "1"] if quick else []),
        "cache-input": ["bench_cache_input.py"]
        + (["--volumes", "16", "--epochs", "2", "--repeats", "1"] if quick else []),
        "models": ["bench_models.py"] + (["--sizes", "32", "--steps", "1"] if quick else []),
        "global-stats-baseline": ["global_stats_baseline.py", "data/preprocessed"],
        "lesion-signal": ["lesion_signal.py", "data/raw", "--spec", "data/preprocessed"],
    }


def machine() -> str:
    """A one-paragraph description of this machine and the library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f"{pages / 2**30:.0f} GiB RAM"
    except (ValueError, OSError, AttributeError):
        memory = "RAM unknown"
    versions = []
    for name in ("numpy", "scipy", "tensorflow", "keras", "nibabel", "torch", "monai"):
        spec = importlib.util.find_spec(name)
        if spec is not None:
            from importlib.metadata import PackageNotFoundError, version

            with contextlib.suppress(PackageNotFoundError):
                versions.append(f"{name} {version(name)}")
    gpu = "no GPU used" if not os.environ.get("CUDA_VISIBLE_DEVICES") else "GPU visible"
    return (
        f"{cpu}, {cores} cores usable, {memory}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}; {', '.join(versions)}; {gpu}."
    )


def run(name: str, command: list[str], root: Path) -> str:
    started = time.perf_counter()
    if name == "global-stats-baseline" and not (root / "data" / "preprocessed").is_dir():
        return f"### {name}\n\nskipped: needs `data/preprocessed` (run `make demo` first)\n"
    process = subprocess.run(
        [sys.executable, str(HERE / command[0]), *command[1:]],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""},
    )
    minutes = (time.perf_counter() - started) / 60
    shown = " ".join(["python", f"benchmarks/{command[0]}", *command[1:]])
    if process.returncode != 0:
        body = f"FAILED (exit {process.returncode}):\n\n```\n{process.stderr[-2000:]}\n```"
    else:
        body = process.stdout.strip()
    return f"### {name}\n\n`{shown}` ({minutes:.1f} min)\n\n{body}\n"


def rewrite(results: Path, section: str) -> None:
    """Puts ``section`` between the markers at the top of ``results`` (atomically)."""
    text = results.read_text() if results.is_file() else "# Benchmark results\n"
    block = f"{START}\n{section.rstrip()}\n{END}"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        title, _, body = text.partition("\n")
        text = f"{title}\n\n{block}\n{body}"
    temporary = results.with_name(f".{results.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, results)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="benchmark names to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    root = HERE.parent
    chosen = benchmarks(args.quick)
    unknown = set(args.only or ()) - set(chosen)
    if unknown:
        parser.error(f"unknown benchmarks {sorted(unknown)}; choose from {list(chosen)}")
    sections = []
    for name, command in chosen.items():
        if args.only and name not in args.only:
            continue
        print(f"running {name} ...", file=sys.stderr, flush=True)
        sections.append(run(name, command, root))
        print(sections[-1])
    header = (
        f"## Latest `make bench` ({time.strftime('%Y-%m-%d')})\n\n"
        f"{machine()}\n\nRegenerated by `make bench` (`benchmarks/run_all.py`"
        f"{' --quick' if args.quick else ''}); the sections after this one are earlier "
        "runs with their analysis.\n\n"
    )
    rewrite(args.results, header + "\n".join(sections))


if __name__ == "__main__":
    main()
