"""Is training from the augmented cache input-bound? Step time of the same model fed from
the cache (memory-mapped float16 shards through voxelflow's tf.data pipeline) against the
same samples as in-memory tensors, side by side in one run.

    .venv/bin/python benchmarks/bench_cache_input.py [--size 32] [--volumes 64] [--copies 4]

Builds preprocessed volumes and the cache in a temporary folder with the real stages
(``stages.augment_cache.run``), then trains the params.yaml model (``model`` section,
classification head) for ``--epochs`` epochs on each input and reports the mean step
time of every epoch after the first (the first includes graph building), the median of
``--repeats`` interleaved repeats. Also reported for
information: on-the-fly augmentation (``finetune.augmentation: online``), which does the
augmentation work inside the input pipeline. Prints Markdown; copy it into RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from stages import augment_cache  # noqa: E402
from voxelflow import models  # noqa: E402
from voxelflow.atomic import save_npy, write_csv, write_json  # noqa: E402
from voxelflow.data import cache_source, classification_dataset  # noqa: E402
from voxelflow.online import online_dataset  # noqa: E402
from voxelflow.params import load_params  # noqa: E402
from voxelflow.preprocess import PreprocessSpec  # noqa: E402

CLASSES = ["a", "b"]


class StepTimer(keras.callbacks.Callback):
    """Wall time of every training step, per epoch."""

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.times = getattr(self, "times", {})
        self.times[epoch] = []

    def on_train_batch_begin(self, batch, logs=None):
        self.started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times[self.epoch].append(time.perf_counter() - self.started)


def write_preprocessed(folder: Path, volumes: int, size: int) -> None:
    """``volumes`` smooth random z-scored volumes of ``size``^3 in the preprocess layout."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    rows = []
    for index in range(volumes):
        volume = ndimage.gaussian_filter(rng.normal(size=(size,) * 3), 1.5).astype(np.float32)
        volume = (volume - volume.mean()) / volume.std()
        save_npy(folder / "arrays" / f"v{index:04d}.npy", volume)
        rows.append(
            {
                "id": f"v{index:04d}",
                "label": CLASSES[index % 2],
                "split": "train",
                "array": f"arrays/v{index:04d}.npy",
            }
        )
    write_csv(folder / "index.csv", rows, list(rows[0]))
    spec = PreprocessSpec((2.0,) * 3, (size,) * 3, (0.5, 99.9), 1)
    write_json(folder / "preprocess.json", {**spec.to_dict(), "classes": CLASSES})


def time_training(dataset, steps: int, epochs: int, shape, params) -> float:
    """Mean step time (s) over the epochs after the first (a mean, so that occasional input
    stalls count)."""
    keras.utils.set_random_seed(0)
    encoder = models.encoder_from_params(params.model, (*shape, 1))
    model = models.build_classifier(
        encoder, models.head_from_params(params.model, encoder, len(CLASSES))
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    timer = StepTimer()
    model.fit(dataset.repeat(), epochs=epochs, steps_per_epoch=steps, verbose=0, callbacks=[timer])
    later = [t for epoch, times in timer.times.items() if epoch > 0 for t in times]
    return float(np.mean(later))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--volumes", type=int, default=64)
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    params.augment.copies = args.copies
    shape = (args.size,) * 3
    with tempfile.TemporaryDirectory(prefix="vf-cache-bench-") as scratch:
        scratch = Path(scratch)
        write_preprocessed(scratch / "pre", args.volumes, args.size)
        started = time.perf_counter()
        summary = augment_cache.run(scratch / "pre", scratch / "cache", params, workers=2)
        built = time.perf_counter() - started
        source = cache_source(scratch / "cache", CLASSES)
        steps = len(source) // args.batch
        cached = classification_dataset(
            source, args.batch, shape, epochs=args.epochs, seed=0, purpose="bench"
        )
        images = np.stack([source.read(i)[..., None] for i in range(len(source))])
        labels = np.asarray(source.labels, dtype=np.int32)
        memory = (
            tf.data.Dataset.from_tensor_slices((images, labels))
            .shuffle(len(labels), seed=0)
            .batch(args.batch)
            .prefetch(tf.data.AUTOTUNE)
        )
        from voxelflow.data import preprocessed_source

        originals = preprocessed_source(scratch / "pre", ("train",), CLASSES)
        online = online_dataset(
            originals, args.batch, shape, params.augment, 0, (2.0, 2.0, 2.0), args.epochs * 8
        )
        inputs = {
            "in-memory tensors": memory,
            "augment cache (mmap float16 shards)": cached,
            "online augmentation": online,
        }
        runs: dict[str, list[float]] = {name: [] for name in inputs}
        for _ in range(args.repeats):  # interleaved, so load from elsewhere hits all alike
            for name, dataset in inputs.items():
                runs[name].append(time_training(dataset, steps, args.epochs, shape, params))
        results = {name: float(np.median(times)) for name, times in runs.items()}
    base = results["in-memory tensors"]
    print(
        f"\ncache: {summary['copies']} copies of {args.volumes} volumes of {args.size}^3, "
        f"{summary['disk_mib']} MiB on disk, built in {built:.1f} s (2 workers)"
    )
    print(
        f"model: params.yaml model section, batch {args.batch}, {steps} steps/epoch, "
        f"mean step time of epochs 2-{args.epochs}; {os.cpu_count()} CPU cores, "
        f"TensorFlow {tf.__version__}"
    )
    print(f"median over {args.repeats} interleaved repeats (each repeat's figure in brackets)")
    print("\n| input | step time (ms) | vs in-memory | repeats (ms) |")
    print("|---|---|---|---|")
    for name, seconds in results.items():
        each = ", ".join(f"{value * 1000:.0f}" for value in runs[name])
        print(f"| {name} | {seconds * 1000:.1f} | {seconds / base - 1:+.1%} | {each} |")


if __name__ == "__main__":
    main()
