"""Stage `pretrain`: self-supervised restoration pretraining of the encoder.

    python -m stages.pretrain --preprocessed data/preprocessed --out models/pretrained

Trains encoder + decoder to restore volumes from corrupted copies (see voxelflow.corrupt) on
the training split and the unlabelled pool only: validation and test volumes are never read.
Writes ``encoder.keras``, ``history.csv``, ``pretrain.json`` (mode, volumes used, losses,
devices) and ``model_summary.json`` (parameters, MACs, receptive fields of what was trained).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from voxelflow import models
from voxelflow.atomic import atomic_dir, write_json
from voxelflow.corrupt import corrupt
from voxelflow.data import VolumeSource, make_dataset, preprocessed_source, steps_per_epoch
from voxelflow.dataset import read_spec
from voxelflow.devices import training_devices
from voxelflow.model_summary import brief, summarize
from voxelflow.params import Params, load_params
from voxelflow.runtime import setup_logging
from voxelflow.seeding import rng_for
from voxelflow.training import params_hash, set_determinism, write_history

log = logging.getLogger("voxelflow.stages.pretrain")

PRETRAIN_SPLITS = ("train", "unlabelled")
OUTPUTS = ("encoder.keras", "history.csv", "pretrain.json", "model_summary.json")


def pretraining_source(preprocessed_dir: str | Path) -> VolumeSource:
    """Training and unlabelled volumes; refuses anything else (no val/test leakage)."""
    source = preprocessed_source(preprocessed_dir, PRETRAIN_SPLITS, classes=None)
    if not len(source):
        raise ValueError(f"{preprocessed_dir}: no training or unlabelled volumes to pretrain on")
    return source


def restoration_pair(params: Params, seed: int):
    """``make_example`` for the restoration task: (corrupted copy, original)."""

    def example(source: VolumeSource, index: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        volume = source.read(index)
        rng = rng_for(seed, "pretrain", source.ids[index], epoch)
        return corrupt(volume, rng, params.pretrain)[..., None], volume[..., None]

    return example


def run(preprocessed_dir: str | Path, out_dir: str | Path, params: Params) -> dict:
    """Pretrains (or, with ``pretrain.mode: none``, initialises) the encoder into ``out_dir``."""
    set_determinism(params.seed, params.training.deterministic)
    spec = read_spec(preprocessed_dir)
    shape = tuple(spec.target_shape)
    source = pretraining_source(preprocessed_dir)
    summary = {
        "mode": params.pretrain.mode,
        "volumes": len(source),
        "splits": list(PRETRAIN_SPLITS),
        "params_hash": params_hash(params),
        "architecture": params.model.architecture,
        "input_shape": [*shape, 1],
    }
    history: dict[str, list[float]] = {}
    started = time.perf_counter()
    with training_devices(params.training) as placement:
        summary["devices"] = placement.describe()
        encoder = models.encoder_from_params(params.model, (*shape, 1))
        trained = encoder
        if params.pretrain.mode == "self_supervised" and params.pretrain.epochs > 0:
            decoder = models.decoder_from_params(params.model, encoder)
            trained = models.build_autoencoder(encoder, decoder)
            steps = steps_per_epoch(len(source), params.pretrain.batch_size, placement.replicas)
            trained.compile(
                optimizer=_optimizer(params, steps),
                loss="mse",
                metrics=["mae"],
                jit_compile=placement.jit_compile,
            )
            history = _fit(trained, source, shape, params, steps, placement.replicas)
            summary["final_loss"] = float(history["loss"][-1])
            summary["first_loss"] = float(history["loss"][0])
    summary["seconds"] = round(time.perf_counter() - started, 1)
    model_summary = summarize(trained, spec.target_spacing_mm)
    summary["model"] = brief(model_summary)
    with atomic_dir(placement.output_dir(out_dir), OUTPUTS) as staging:
        encoder.save(staging / "encoder.keras")
        write_history(staging / "history.csv", history or {"loss": []})
        write_json(staging / "pretrain.json", summary)
        write_json(staging / "model_summary.json", model_summary)
    log.info("pretrain: %s", summary)
    return summary


def _fit(
    autoencoder: keras.Model, source: VolumeSource, shape, params: Params, steps: int, replicas: int
) -> dict:
    signature = (
        tf.TensorSpec((*shape, 1), tf.float32),
        tf.TensorSpec((*shape, 1), tf.float32),
    )
    dataset = make_dataset(
        source,
        params.pretrain.batch_size,
        restoration_pair(params, params.seed),
        signature,
        epochs=params.pretrain.epochs,
        seed=params.seed,
        purpose="pretrain",
        replicas=replicas,
    )
    fit = autoencoder.fit(
        dataset.repeat(),
        epochs=params.pretrain.epochs,
        steps_per_epoch=steps,
        shuffle=False,
        verbose=2,
    )
    return fit.history


def _optimizer(params: Params, steps_per_epoch: int):
    steps = params.pretrain.epochs * steps_per_epoch
    schedule = keras.optimizers.schedules.CosineDecay(params.pretrain.learning_rate, max(1, steps))
    return keras.optimizers.Adam(schedule)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Pretrain the encoder (self-supervised).")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--preprocessed", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    setup_logging()
    run(args.preprocessed, args.out, load_params(args.params))


if __name__ == "__main__":
    main()
