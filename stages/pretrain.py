"""Stage `pretrain`: pretraining of the encoder.

    python -m stages.pretrain --preprocessed data/preprocessed --out models/pretrained \
        --checkpoints models/checkpoints/pretrain --logs logs/pretrain

``pretrain.mode``:

- ``self_supervised``: encoder + decoder learn to restore random sub-volumes from corrupted
  copies (Models Genesis: non-linear intensity, local shuffling, in-/out-painting; see
  voxelflow.corrupt) of the training split and the unlabelled pool only: validation and
  test volumes are never read;
- ``supervised``: encoder + a classification head trained on another labelled, preprocessed
  dataset (``pretrain.source_dir``), refused if it holds a validation or test volume of ours;
- ``none``: the encoder as initialised, for training from scratch.

``pretrain.weights`` starts the encoder from a saved model's encoder (layer names and shapes
must match). Training resumes after a kill from per-epoch checkpoints (voxelflow.resume).
Writes ``encoder.keras``, ``history.csv`` (DVC plots), ``pretrain.json`` (mode, volumes
used, losses, devices) and ``model_summary.json``; TensorBoard logs go to ``--logs``.
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
from voxelflow.corrupt import corrupt, random_subvolume
from voxelflow.data import (
    VolumeSource,
    classification_dataset,
    make_dataset,
    one_hot,
    preprocessed_source,
    steps_per_epoch,
)
from voxelflow.dataset import class_names, data_digest, read_index, read_spec
from voxelflow.devices import training_devices
from voxelflow.keras_files import make_reproducible
from voxelflow.model_summary import brief, summarize
from voxelflow.params import Params, load_params
from voxelflow.resume import Checkpoints
from voxelflow.runtime import stage_process
from voxelflow.seeding import rng_for
from voxelflow.training import (
    class_weights,
    params_hash,
    run_key,
    set_determinism,
    training_seed,
    write_history,
)

log = logging.getLogger("voxelflow.stages.pretrain")

PRETRAIN_SPLITS = ("train", "unlabelled")
OUTPUTS = ("encoder.keras", "history.csv", "pretrain.json", "model_summary.json")


def pretraining_source(preprocessed_dir: str | Path) -> VolumeSource:
    """Training and unlabelled volumes; refuses anything else (no val/test leakage)."""
    source = preprocessed_source(preprocessed_dir, PRETRAIN_SPLITS, classes=None)
    if not len(source):
        raise ValueError(f"{preprocessed_dir}: no training or unlabelled volumes to pretrain on")
    return source


def supervised_source(
    source_dir: str | Path, preprocessed_dir: str | Path, shape: tuple[int, ...]
) -> tuple[VolumeSource, list[str]]:
    """The labelled volumes of another preprocessed dataset, and its classes.

    Refused when it is our own data, when its volumes have another shape, or when it holds
    a volume (same voxel content) of our validation or test split.
    """
    source_dir = Path(source_dir)
    if not (source_dir / "index.csv").is_file():
        raise ValueError(
            f"pretrain.source_dir {source_dir}: no index.csv; expected a preprocessed folder "
            "(run ingest and `python -m stages.preprocess` on the source dataset)"
        )
    if source_dir.resolve() == Path(preprocessed_dir).resolve():
        raise ValueError(f"pretrain.source_dir {source_dir} is the dataset being trained on")
    source_shape = tuple(read_spec(source_dir).target_shape)
    if source_shape != tuple(shape):
        raise ValueError(
            f"pretrain.source_dir {source_dir}: volumes of {source_shape}, expected {shape} "
            "(preprocess it with the same target_shape)"
        )
    held_out = {row["content"]: row["id"] for row in read_index(preprocessed_dir, ("val", "test"))}
    rows = read_index(source_dir, ("train", "val", "test"))
    leaked = [
        f"{row['id']} = our {held_out[row['content']]}"
        for row in rows
        if row["content"] in held_out
    ]
    if leaked:
        raise ValueError(
            f"pretrain.source_dir {source_dir}: {len(leaked)} volumes are in our validation "
            f"or test split, which pretraining must never see: {', '.join(leaked[:5])}"
        )
    classes = class_names(source_dir)
    source = preprocessed_source(source_dir, ("train", "val", "test"), classes)
    if not len(source):
        raise ValueError(f"pretrain.source_dir {source_dir}: no labelled volumes")
    return source, classes


def restoration_pair(params: Params, seed: int):
    """``make_example`` for the restoration task: (corrupted sub-volume, the sub-volume)."""

    def example(source: VolumeSource, index: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        volume = source.read(index)
        rng = rng_for(seed, "pretrain", source.ids[index], epoch)
        target = random_subvolume(volume, rng, params.pretrain.subvolume_scale)
        return corrupt(target, rng, params.pretrain)[..., None], target[..., None]

    return example


def run(
    preprocessed_dir: str | Path,
    out_dir: str | Path,
    params: Params,
    checkpoints_dir: str | Path | None = None,
    logs_dir: str | Path | None = None,
) -> dict:
    """Pretrains (or, with ``pretrain.mode: none``, initialises) the encoder into ``out_dir``.

    Args:
        preprocessed_dir: the preprocess stage's output.
        out_dir: written atomically.
        params: all params.
        checkpoints_dir: per-epoch checkpoints to resume from (default: beside ``out_dir``).
        logs_dir: TensorBoard logs (none when None).
    """
    tune = params.pretrain
    set_determinism(training_seed(params), params.training.deterministic)
    spec = read_spec(preprocessed_dir)
    shape = tuple(spec.target_shape)
    summary = {
        "mode": tune.mode,
        "params_hash": params_hash(params),
        "architecture": params.model.architecture,
        "input_shape": [*shape, 1],
    }
    if tune.mode == "supervised":
        source, source_classes = supervised_source(tune.source_dir, preprocessed_dir, shape)
        summary.update(source_dir=tune.source_dir, source_classes=source_classes)
        digest = data_digest(tune.source_dir, ("train", "val", "test"))
    else:
        source, digest = (
            pretraining_source(preprocessed_dir),
            data_digest(preprocessed_dir, PRETRAIN_SPLITS),
        )
        summary["splits"] = list(PRETRAIN_SPLITS)
    summary["volumes"] = len(source)
    checkpoints = Checkpoints(
        checkpoints_dir or Path(out_dir).with_name(Path(out_dir).name + ".checkpoints"),
        run_key(params, digest, "pretrain"),
    )
    history: dict[str, list[float]] = {}
    started = time.perf_counter()
    with training_devices(params.training) as placement:
        summary["devices"] = placement.describe()
        encoder = models.encoder_from_params(params.model, (*shape, 1))
        if tune.weights:
            summary["weights"] = models.load_encoder_weights(encoder, tune.weights)
        trained = encoder
        if tune.mode != "none" and tune.epochs > 0:
            steps = steps_per_epoch(len(source), tune.batch_size, placement.replicas)
            callbacks = [keras.callbacks.TensorBoard(Path(logs_dir))] if logs_dir else []
            if tune.mode == "self_supervised":
                trained = models.build_autoencoder(
                    encoder, models.decoder_from_params(params.model, encoder)
                )
                trained.compile(
                    optimizer=_optimizer(params, steps),
                    loss="mse",
                    metrics=["mae"],
                    jit_compile=placement.jit_compile,
                )
                data = _restoration_data(source, shape, params, placement.replicas)
                fit_options = {}
            else:
                head = models.head_from_params(params.model, encoder, len(source_classes))
                trained = models.build_classifier(encoder, head)
                trained.compile(
                    optimizer=_optimizer(params, steps),
                    loss="categorical_crossentropy",
                    metrics=["accuracy"],
                    jit_compile=placement.jit_compile,
                )
                data = _supervised_data(source, shape, params, placement.replicas, source_classes)
                fit_options = {"class_weight": class_weights(source.labels, source_classes)}
            history = checkpoints.fit(
                trained,
                "pretrain",
                data,
                tune.epochs,
                steps,
                callbacks=callbacks,
                seed=training_seed(params),
                verbose=2,
                **fit_options,
            )
            summary["final_loss"] = float(history["loss"][-1])
            summary["first_loss"] = float(history["loss"][0])
    summary["seconds"] = round(time.perf_counter() - started, 1)
    model_summary = summarize(trained, spec.target_spacing_mm)
    summary["model"] = brief(model_summary)
    with atomic_dir(placement.output_dir(out_dir), OUTPUTS) as staging:
        encoder.save(staging / "encoder.keras")
        make_reproducible(staging / "encoder.keras")
        write_history(staging / "history.csv", history or {"loss": []})
        write_json(staging / "pretrain.json", summary)
        write_json(staging / "model_summary.json", model_summary)
    checkpoints.clear()
    log.info("pretrain: %s", summary)
    return summary


def _restoration_data(source: VolumeSource, shape, params: Params, replicas: int):
    signature = (
        tf.TensorSpec((*shape, 1), tf.float32),
        tf.TensorSpec((*shape, 1), tf.float32),
    )

    def data(start_epoch: int):
        return make_dataset(
            source,
            params.pretrain.batch_size,
            restoration_pair(params, training_seed(params)),
            signature,
            epochs=params.pretrain.epochs,
            seed=training_seed(params),
            purpose="pretrain",
            replicas=replicas,
            start_epoch=start_epoch,
        ).repeat()

    return data


def _supervised_data(source: VolumeSource, shape, params: Params, replicas: int, classes):
    def data(start_epoch: int):
        return (
            classification_dataset(
                source,
                params.pretrain.batch_size,
                shape,
                epochs=params.pretrain.epochs,
                seed=training_seed(params),
                purpose="pretrain",
                replicas=replicas,
                start_epoch=start_epoch,
            )
            .map(one_hot(len(classes)))
            .repeat()
        )

    return data


def _optimizer(params: Params, steps_per_epoch: int):
    steps = params.pretrain.epochs * steps_per_epoch
    schedule = keras.optimizers.schedules.CosineDecay(params.pretrain.learning_rate, max(1, steps))
    return keras.optimizers.Adam(schedule)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Pretrain the encoder.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--preprocessed", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--checkpoints", help="per-epoch checkpoints (resume after a kill)")
    parser.add_argument("--logs", help="TensorBoard logs")
    args = parser.parse_args(argv)
    with stage_process("pretrain"):
        run(args.preprocessed, args.out, load_params(args.params), args.checkpoints, args.logs)


if __name__ == "__main__":
    main()
