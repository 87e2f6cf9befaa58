"""Benchmark: the model module's architectures, side by side.

For each architecture (plain, resnet, separable) and input size, prints and returns the
parameters, multiply-accumulates per volume (voxelflow.model_summary) and measured training
and inference throughput in volumes/s, under every precision asked for:

    python benchmarks/bench_models.py                         # this CPU, TensorFlow, float32
    KERAS_BACKEND=jax python benchmarks/bench_models.py --precisions float32 mixed_bfloat16 \
        --batch 8 --steps 10 --json results.json              # a GPU

The model: one configuration for all three (default the ResNet-10 layout [1, 1, 1, 1],
width 16, a 7^3 stem of stride 2, batch normalisation, 2 classes), so the comparison is of
the blocks alone. Throughput: the median step time over ``--steps`` steps of one fixed random
batch after ``--warmup`` steps (compilation), for ``train_on_batch`` and ``predict_on_batch``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from voxelflow import models  # noqa: E402
from voxelflow.model_summary import summarize  # noqa: E402


def build(architecture: str, size: int, args) -> keras.Model:
    encoder = models.build_encoder(
        (size, size, size, 1),
        architecture,
        args.width,
        args.layout,
        args.normalization,
        stem_kernel=args.stem_kernel,
        stem_stride=args.stem_stride,
    )
    head = models.build_head(encoder.output_shape[1:], 2, 0, 0.0, "avg")
    return models.build_classifier(encoder, head)


def median_seconds(step, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(architecture: str, size: int, precision: str, args) -> dict:
    keras.config.set_dtype_policy(precision)
    try:
        keras.utils.set_random_seed(0)
        model = build(architecture, size, args)
        summary = summarize(model)
        jit = "auto" if keras.backend.backend() == "jax" else args.tf_jit
        model.compile(keras.optimizers.Adam(1e-4), "categorical_crossentropy", jit_compile=jit)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(args.batch, size, size, size, 1)).astype("float32")
        y = keras.utils.to_categorical(np.arange(args.batch) % 2, 2)
        train = median_seconds(lambda: model.train_on_batch(x, y), args.warmup, args.steps)
        infer = median_seconds(lambda: model.predict_on_batch(x), args.warmup, args.steps)
    finally:
        keras.config.set_dtype_policy("float32")
    return {
        "architecture": architecture,
        "size": size,
        "precision": precision,
        "parameters": summary["parameters"]["total"],
        "gmacs_per_volume": summary["gmacs_per_volume"],
        "train_volumes_per_s": round(args.batch / train, 3),
        "inference_volumes_per_s": round(args.batch / infer, 3),
    }


def device_name() -> str:
    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        return f"{device.platform}: {getattr(device, 'device_kind', device)}"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return f"GPU x{len(gpus)}" if gpus else f"CPU ({os.cpu_count()} cores)"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument(
        "--architectures",
        nargs="+",
        default=list(models.ARCHITECTURES),
        choices=models.ARCHITECTURES,
    )
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=["float32"],
        choices=["float32", "mixed_float16", "mixed_bfloat16"],
    )
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--layout", default="resnet10")
    parser.add_argument("--normalization", default="batch")
    parser.add_argument("--stem-kernel", type=int, default=7)
    parser.add_argument("--stem-stride", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--tf-jit",
        type=lambda v: v.lower() == "true",
        default=False,
        help="XLA on TensorFlow (the training stages' default is off: deterministic ops)",
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)

    print(
        f"backend {keras.backend.backend()} (Keras {keras.__version__}) on {device_name()}, "
        f"{platform.machine()}; layout {args.layout}, width {args.width}, "
        f"stem {args.stem_kernel}^3/{args.stem_stride}, {args.normalization} norm, "
        f"batch {args.batch}, median of {args.steps} steps after {args.warmup}"
    )
    header = f"{'architecture':<11} {'size':>5} {'precision':<15} {'params':>9} {'GMACs':>8}"
    print(header + f" {'train vol/s':>12} {'infer vol/s':>12}")
    rows = []
    for size in args.sizes:
        for precision in args.precisions:
            for architecture in args.architectures:
                row = measure(architecture, size, precision, args)
                rows.append(row)
                print(
                    f"{architecture:<11} {size:>4}³ {precision:<15} {row['parameters']:>9,} "
                    f"{row['gmacs_per_volume']:>8.2f} {row['train_volumes_per_s']:>12.2f} "
                    f"{row['inference_volumes_per_s']:>12.2f}",
                    flush=True,
                )
                if args.json:
                    args.json.write_text(json.dumps({"device": device_name(), "rows": rows}))
    return rows


if __name__ == "__main__":
    main()
