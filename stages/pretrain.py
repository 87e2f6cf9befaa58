"""Stage `pretrain`: self-supervised restoration pretraining of the encoder.

    python -m stages.pretrain --preprocessed data/preprocessed --out models/pretrained

Trains encoder + decoder to restore volumes from corrupted copies (see voxelflow.corrupt) on
the training split and the unlabelled pool only: validation and test volumes are never read.
Writes ``encoder.keras``, ``history.csv`` and ``pretrain.json`` (mode, volumes used, losses).
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
from voxelflow.data import VolumeSource, make_dataset, preprocessed_source
from voxelflow.dataset import read_spec
from voxelflow.params import Params, load_params
from voxelflow.runtime import setup_logging
from voxelflow.seeding import rng_for
from voxelflow.training import params_hash, set_determinism, write_history

log = logging.getLogger("voxelflow.stages.pretrain")

PRETRAIN_SPLITS = ("train", "unlabelled")
OUTPUTS = ("encoder.keras", "history.csv", "pretrain.json")


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
    set_determinism(params.seed)
    spec = read_spec(preprocessed_dir)
    shape = tuple(spec.target_shape)
    encoder = models.encoder_from_params(params.model, (*shape, 1))
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
    if params.pretrain.mode == "self_supervised" and params.pretrain.epochs > 0:
        decoder = models.build_decoder(
            encoder.output_shape[1:],
            stages=len(params.model.blocks_per_stage),
            width=params.model.width,
            normalization=params.model.normalization,
            activation=params.model.activation,
        )
        autoencoder = models.build_autoencoder(encoder, decoder)
        autoencoder.compile(optimizer=_optimizer(params, len(source)), loss="mse", metrics=["mae"])
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
        )
        steps = int(np.ceil(len(source) / params.pretrain.batch_size))
        fit = autoencoder.fit(
            dataset.repeat(),
            epochs=params.pretrain.epochs,
            steps_per_epoch=steps,
            shuffle=False,
            verbose=2,
        )
        history = fit.history
        summary["final_loss"] = float(history["loss"][-1])
        summary["first_loss"] = float(history["loss"][0])
    summary["seconds"] = round(time.perf_counter() - started, 1)
    with atomic_dir(out_dir, OUTPUTS) as staging:
        encoder.save(staging / "encoder.keras")
        write_history(staging / "history.csv", history or {"loss": []})
        write_json(staging / "pretrain.json", summary)
    log.info("pretrain: %s", summary)
    return summary


def _optimizer(params: Params, volumes: int):
    steps = params.pretrain.epochs * int(np.ceil(volumes / params.pretrain.batch_size))
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
