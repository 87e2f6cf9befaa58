"""Augmentation throughput: voxelflow's one-pass engine against scipy, TorchIO and MONAI.

    .venv/bin/python benchmarks/bench_augment.py [--shapes 64 128] [--volumes 8] [--repeats 3]
        [--threads 1] [--cores 2] [--pipelines naive torchio ... voxelflow]

Measured in one run, on the same machine, on float32 head-like volumes (a smooth ellipsoid
with noise, z-scored as preprocessed volumes are; built in memory) of each ``--shapes``
size, 1 mm voxels:

- ``naive``: ``scipy.ndimage.rotate`` three times (axes (1,2), (0,2), (0,1), angles in
  +/-12 degrees, linear) then ``scipy.ndimage.shift`` (+/-4 voxels). It does less than the
  others: no scaling, no elastic deformation, no intensity transform;
- ``torchio``: ``tio.Compose`` of RandomAffine (scales 0.92-1.08, 12 degrees, 4 mm),
  RandomElasticDeformation (5 control points, max_displacement 4 mm), RandomGamma
  (log_gamma +/-0.22, i.e. gamma 0.8-1.25), RandomNoise (std 0-0.05), RandomBiasField
  (coefficients 0.2), on a ``tio.ScalarImage``;
- ``torchio-fused``: the same, with the affine and the elastic deformation in TorchIO's own
  RandomAffineElasticDeformation (one SimpleITK resampling instead of two);
- ``monai``: ``monai.transforms.Compose`` of RandAffine (12 degrees, scale +/-0.08,
  4 voxels, bilinear, zeros padding), Rand3DElastic (sigma 5-7, magnitude 100-200),
  RandAdjustContrast (gamma 0.8-1.25), RandGaussianNoise (std 0-0.05), RandBiasField
  (coefficients 0-0.2), all with prob=1, on a channel-first (1, D, H, W) tensor;
- ``monai-fused``: the same, with the affine given to Rand3DElastic (one grid_sample instead
  of two);
- ``voxelflow``: ``sample_transform`` + ``apply_transform`` with the same family (rotation
  12 degrees, scale 0.92-1.08, translation 4 mm, elastic 2 mm on 5 control points, bias
  field 0.2, gamma 0.8-1.25, contrast/brightness +/-0.1, noise std 0-0.05; no flips).

Each pipeline is warmed up (one augmentation per shape, excluded from the timing: numba
compiles voxelflow's kernel on its first call, torch and SimpleITK set up on theirs) and then
augments ``--volumes`` volumes, ``--repeats`` times; the median rate (volumes/s) is reported.
Two tables: all pipelines in one process with ``--threads`` threads (torch, SimpleITK,
BLAS, numba; OMP/MKL/OPENBLAS_NUM_THREADS set before numpy is imported), then on ``--cores``
cores: TorchIO and MONAI in one process with ``--cores`` threads, and every pipeline in a
pool of ``--cores`` worker processes with one thread each (scipy's and voxelflow's kernels
are single-threaded; workers hold their own copies of the volumes and return a scalar, so
no volume crosses a process boundary). ``--cores 0`` skips the second table.

Elastic displacement sizes (1 mm voxels, measured on the fields): voxelflow 2 mm on 5 control
points (the field normalised to a displacement std of 2 voxels per axis), mean |d| 3.1
voxels, max 10; MONAI sigma 6 magnitude 150, mean |d| 1.2; TorchIO
max_displacement 4 mm with its default locked_borders=2 (only the central control points
move), mean |d| 0.6-0.7, max 1.8; 4 mm is far below its folding limit (half the control
grid spacing: 16 mm at 64^3, 32 mm at 128^3). The amount does not change the cost.

Prints Markdown tables; copy them into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import os
import sys


def _threads_from_argv(argv: list[str]) -> int:
    """``--threads`` read before numpy is imported (its BLAS reads the environment once)."""
    if os.environ.get("VOXELFLOW_BENCH_WORKER"):
        return 1
    for index, arg in enumerate(argv):
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
        if arg == "--threads" and index + 1 < len(argv):
            return int(argv[index + 1])
    return 1


THREAD_ENV = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
)
os.environ.update(dict.fromkeys(THREAD_ENV, str(_threads_from_argv(sys.argv[1:]))))

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from multiprocessing import get_context  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ROTATION_DEGREES = 12.0
SCALE_RANGE = (0.92, 1.08)
TRANSLATION = 4.0
NOISE_STD = 0.05
GAMMA_RANGE = (0.8, 1.25)
BIAS = 0.2
ELASTIC_POINTS = 5

# name: (label, what it applies, interpolation passes over the whole volume)
PIPELINES = {
    "naive": (
        "naive scipy.ndimage",
        "rotate about 3 axes, shift (no scaling, elastic or intensity)",
        "4 (3 rotate + shift)",
    ),
    "torchio": (
        "TorchIO Compose",
        "RandomAffine, RandomElasticDeformation, RandomGamma, RandomNoise, RandomBiasField",
        "2 (SimpleITK: affine, then B-spline)",
    ),
    "torchio-fused": (
        "TorchIO RandomAffineElasticDeformation",
        "the same, affine + elastic in one transform",
        "1 (SimpleITK composite)",
    ),
    "monai": (
        "MONAI Compose",
        "RandAffine, Rand3DElastic, RandAdjustContrast, RandGaussianNoise, RandBiasField",
        "2 (grid_sample: affine, then elastic)",
    ),
    "monai-fused": (
        "MONAI Rand3DElastic with affine",
        "the same, affine given to Rand3DElastic",
        "1 (grid_sample)",
    ),
    "voxelflow": (
        "voxelflow",
        "rotation, scale, translation, elastic, bias field, gamma, contrast, noise",
        "1 (numba kernel, affine + elastic)",
    ),
}
THREADED = ("torchio", "torchio-fused", "monai", "monai-fused")  # multi-threaded backends


def head_volumes(size: int, count: int) -> list[np.ndarray]:
    """``count`` head-like float32 volumes of ``size``^3: an ellipsoid with noise, z-scored."""
    shape = (size,) * 3
    grid = np.indices(shape, dtype=np.float32) - (size - 1) / 2
    axes = np.array([55, 60, 50], dtype=np.float32) / 128 * size
    radius = np.sqrt(sum((grid[axis] / axes[axis]) ** 2 for axis in range(3)))
    head = (800 / (1 + np.exp((radius - 1) * 20))).astype(np.float32)
    rng = np.random.default_rng(0)
    volumes = []
    for _ in range(count):
        data = head * rng.uniform(0.8, 1.2) + rng.normal(0, 20, shape).astype(np.float32)
        volumes.append(((data - data.mean()) / data.std()).astype(np.float32))
    return volumes


def build_naive():
    from scipy import ndimage

    def augment(volume: np.ndarray, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        cval = float(volume.min())
        out = volume
        for axes in ((1, 2), (0, 2), (0, 1)):
            angle = rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES)
            out = ndimage.rotate(out, angle, axes=axes, reshape=False, order=1, cval=cval)
        shift = rng.uniform(-TRANSLATION, TRANSLATION, size=3)
        return ndimage.shift(out, shift, order=1, cval=cval)

    return augment


def build_torchio(fused: bool):
    import torch
    import torchio as tio

    affine = {"scales": SCALE_RANGE, "degrees": ROTATION_DEGREES, "translation": TRANSLATION}
    elastic = {"num_control_points": ELASTIC_POINTS, "max_displacement": 4}
    if fused:
        spatial = [tio.RandomAffineElasticDeformation(affine_kwargs=affine, elastic_kwargs=elastic)]
    else:
        spatial = [tio.RandomAffine(**affine), tio.RandomElasticDeformation(**elastic)]
    log_gamma = math.log(GAMMA_RANGE[1])
    transform = tio.Compose(
        [
            *spatial,
            tio.RandomGamma(log_gamma=(-log_gamma, log_gamma)),
            tio.RandomNoise(std=(0, NOISE_STD)),
            tio.RandomBiasField(coefficients=BIAS),
        ]
    )

    def augment(volume: np.ndarray, seed: int) -> np.ndarray:
        torch.manual_seed(seed)
        image = tio.ScalarImage(tensor=torch.from_numpy(volume[None]))
        return transform(image).data[0].numpy()

    return augment


def build_monai(fused: bool):
    import torch
    from monai.transforms import (
        Compose,
        Rand3DElastic,
        RandAdjustContrast,
        RandAffine,
        RandBiasField,
        RandGaussianNoise,
    )

    affine = {
        "rotate_range": (math.radians(ROTATION_DEGREES),) * 3,
        "scale_range": (SCALE_RANGE[1] - 1,) * 3,
        "translate_range": (TRANSLATION,) * 3,
        "padding_mode": "zeros",
        "mode": "bilinear",
    }
    elastic = {"sigma_range": (5, 7), "magnitude_range": (100, 200)}
    if fused:
        spatial = [Rand3DElastic(prob=1, **elastic, **affine)]
    else:
        resampling = {"padding_mode": "zeros", "mode": "bilinear"}
        spatial = [RandAffine(prob=1, **affine), Rand3DElastic(prob=1, **elastic, **resampling)]
    transform = Compose(
        [
            *spatial,
            RandAdjustContrast(prob=1, gamma=GAMMA_RANGE),
            RandGaussianNoise(prob=1, std=NOISE_STD),
            RandBiasField(prob=1, coeff_range=(0.0, BIAS)),
        ]
    )

    def augment(volume: np.ndarray, seed: int) -> np.ndarray:
        transform.set_random_state(seed=seed)
        out = transform(torch.from_numpy(volume[None]))
        return np.asarray(out.as_tensor() if hasattr(out, "as_tensor") else out)[0]

    return augment


def build_voxelflow():
    from voxelflow.augment import apply_transform, sample_transform
    from voxelflow.params import AugmentParams

    params = AugmentParams(
        rotation_degrees=ROTATION_DEGREES,
        scale_range=SCALE_RANGE,
        translation_mm=TRANSLATION,
        flip_probability=0.0,
        elastic_probability=1.0,
        elastic_magnitude_mm=2.0,
        elastic_control_points=ELASTIC_POINTS,
        bias_field_probability=1.0,
        bias_field_strength=BIAS,
        gamma_probability=1.0,
        gamma_range=GAMMA_RANGE,
        contrast_probability=1.0,
        noise_probability=1.0,
        noise_std=NOISE_STD,
    )

    def augment(volume: np.ndarray, seed: int) -> np.ndarray:
        transform = sample_transform(np.random.default_rng(seed), params, (1.0, 1.0, 1.0))
        return apply_transform(volume, transform)

    return augment


BUILDERS = {
    "naive": build_naive,
    "torchio": lambda: build_torchio(fused=False),
    "torchio-fused": lambda: build_torchio(fused=True),
    "monai": lambda: build_monai(fused=False),
    "monai-fused": lambda: build_monai(fused=True),
    "voxelflow": build_voxelflow,
}


def set_threads(count: int) -> None:
    """Limits every thread pool the pipelines use (those importable) to ``count``.

    numba first: starting its threading layer can reset the OpenMP thread count.
    """
    import numba

    numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))
    try:
        import torch

        torch.set_num_threads(count)
    except ImportError:
        pass
    try:
        import SimpleITK as sitk  # noqa: N813

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(count)
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(count)  # BLAS and OpenMP (torch's libgomp) of this process
    except ImportError:
        pass


def build_all(names: list[str]) -> dict:
    """The pipelines that can be built; a line for each that cannot (optional ``bench``)."""
    built = {}
    for name in names:
        try:
            built[name] = BUILDERS[name]()
        except ImportError as error:
            print(f"{name}: skipped, import failed ({error}); pip install -e '.[bench]'")
    return built


def warm_up(augment, volumes: dict[int, list[np.ndarray]]) -> None:
    for size, stack in volumes.items():
        augment(stack[0], seed=10**6 + size)


def rate(run_once, count: int, repeats: int) -> float:
    """Median volumes/s of ``repeats`` runs of ``run_once(repeat)`` (``count`` volumes each)."""
    rates = []
    for repeat in range(repeats):
        start = time.perf_counter()
        run_once(repeat)
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def in_process_rate(augment, stack: list[np.ndarray], repeats: int) -> float:
    def run_once(repeat: int) -> None:
        for index, volume in enumerate(stack):
            augment(volume, seed=repeat * len(stack) + index)

    return rate(run_once, len(stack), repeats)


# Worker processes: each builds the pipelines and volumes once, warms up, then augments.
_WORKER: dict = {}


def _worker_init(names: list[str], shapes: list[int], count: int) -> None:
    warnings.simplefilter("ignore")
    set_threads(1)
    _WORKER["volumes"] = {size: head_volumes(size, count) for size in shapes}
    _WORKER["pipelines"] = {name: BUILDERS[name]() for name in names}
    for augment in _WORKER["pipelines"].values():
        warm_up(augment, _WORKER["volumes"])


def _worker_ready(delay: float) -> int:
    time.sleep(delay)
    return os.getpid()


def _worker_augment(name: str, size: int, index: int, seed: int) -> float:
    out = _WORKER["pipelines"][name](_WORKER["volumes"][size][index], seed)
    return float(out.flat[0])


def start_pool(cores: int, names: list[str], shapes: list[int], count: int):
    """A pool of ``cores`` spawned workers (1 thread each), all started and warmed up."""
    os.environ["VOXELFLOW_BENCH_WORKER"] = "1"  # workers read --threads from argv otherwise
    pool = ProcessPoolExecutor(
        cores,
        mp_context=get_context("spawn"),
        initializer=_worker_init,
        initargs=(names, shapes, count),
    )
    for _ in range(100):  # a worker answers only once warmed up: wait for all to answer
        answers = [pool.submit(_worker_ready, 0.2) for _ in range(cores)]
        if len({answer.result() for answer in answers}) == cores:
            break
    else:
        print(f"warning: fewer than {cores} workers answered together")
    return pool


def pool_rate(pool, name: str, size: int, count: int, repeats: int) -> float:
    def run_once(repeat: int) -> None:
        futures = [
            pool.submit(_worker_augment, name, size, index, repeat * count + index)
            for index in range(count)
        ]
        for future in futures:
            future.result()

    return rate(run_once, count, repeats)


def print_table(title: str, rows: list[tuple[str, dict[int, float]]], reference: str) -> None:
    """Rows of (label, {size: volumes/s}); speed-up of the ``reference`` row over each."""
    shapes = list(rows[0][1])
    best = dict(rows).get(reference)
    print(f"\n{title}\n")
    header = [f"{size}^3 vol/s" for size in shapes]
    if best:
        header += [f"voxelflow speed-up {size}^3" for size in shapes]
    print("| pipeline | " + " | ".join(header) + " |")
    print("|---" * (len(header) + 1) + "|")
    for label, rates in rows:
        cells = [f"{rates[size]:.2f}" for size in shapes]
        if best:
            cells += [f"{best[size] / rates[size]:.1f}x" for size in shapes]
        print(f"| {label} | " + " | ".join(cells) + " |")


def versions() -> str:
    found = []
    for module in ("numpy", "scipy", "numba", "torch", "torchio", "monai", "SimpleITK"):
        try:
            version = getattr(__import__(module), "__version__", None)
            if module == "SimpleITK":
                version = __import__(module).Version_VersionString()
        except ImportError:
            version = "not installed"
        found.append(f"{module} {version}")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    return (
        f"python {platform.python_version()}, "
        + ", ".join(found)
        + f"; {platform.processor() or platform.machine()}, os.cpu_count() {os.cpu_count()}"
        + f", usable {usable}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--volumes", type=int, default=8, help="volumes per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is kept")
    parser.add_argument("--threads", type=int, default=1, help="threads of the first table")
    parser.add_argument("--cores", type=int, default=2, help="second table (0: skip)")
    parser.add_argument("--pipelines", nargs="+", choices=list(PIPELINES), default=list(PIPELINES))
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # TorchIO/MONAI deprecation chatter

    print(f"augmentation throughput, {args.volumes} volumes x {args.repeats} repeats (median)")
    print("warm-up excluded for all pipelines (one augmentation per shape before timing)")
    volumes = {size: head_volumes(size, args.volumes) for size in args.shapes}
    set_threads(args.threads)
    pipelines = build_all(args.pipelines)
    if not pipelines:
        return
    names = list(pipelines)
    print("\n| pipeline | transforms | interpolation passes |")
    print("|---|---|---|")
    for name in names:
        label, transforms, passes = PIPELINES[name]
        print(f"| {label} | {transforms} | {passes} |")

    rows = []
    for name, augment in pipelines.items():
        warm_up(augment, volumes)
        rates = {size: in_process_rate(augment, volumes[size], args.repeats) for size in volumes}
        rows.append((PIPELINES[name][0], rates))
    unit = "thread" if args.threads == 1 else "threads"
    title = f"### {args.threads} {unit}, one process (volumes/s, higher is better)"
    print_table(title, rows, PIPELINES["voxelflow"][0])

    if args.cores > 0:
        rows = []
        set_threads(args.cores)
        for name in [name for name in names if name in THREADED]:
            rates = {
                size: in_process_rate(pipelines[name], volumes[size], args.repeats)
                for size in volumes
            }
            rows.append((f"{PIPELINES[name][0]}, {args.cores} threads", rates))
        set_threads(args.threads)
        pool = start_pool(args.cores, names, args.shapes, args.volumes)
        try:
            for name in names:
                rates = {
                    size: pool_rate(pool, name, size, args.volumes, args.repeats)
                    for size in volumes
                }
                rows.append((f"{PIPELINES[name][0]}, {args.cores} processes", rates))
        finally:
            pool.shutdown()
        reference = f"{PIPELINES['voxelflow'][0]}, {args.cores} processes"
        title = (
            f"### {args.cores} cores: {args.cores} threads in one process, or "
            f"{args.cores} worker processes of 1 thread (volumes/s)"
        )
        print_table(title, rows, reference)
    print(f"\n{versions()}")


if __name__ == "__main__":
    main()
