"""Stage `finetune`: a classifier from the pretrained encoder, its first blocks frozen.

    python -m stages.finetune --pretrained models/pretrained --augmented data/augmented \
        --preprocessed data/preprocessed --out models/classifier

Trains on the augmented cache (plus the original training volumes when
``finetune.include_originals``), selects the epoch by the validation split, and writes the
model bundle: ``model.keras``, ``bundle.json`` (classes, preprocessing spec, params, params
hash, frozen blocks, parameters/MACs/receptive field, devices, validation metrics),
``model_summary.json`` (the full model summary) and ``history.csv``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import keras
import numpy as np

from voxelflow import models
from voxelflow.atomic import atomic_dir, write_json
from voxelflow.data import (
    cache_source,
    classification_dataset,
    preprocessed_source,
    steps_per_epoch,
)
from voxelflow.dataset import class_names, read_spec
from voxelflow.devices import training_devices
from voxelflow.model_summary import brief, summarize
from voxelflow.online import online_dataset
from voxelflow.params import Params, load_params, params_dict
from voxelflow.runtime import setup_logging
from voxelflow.training import params_hash, set_determinism, write_history

log = logging.getLogger("voxelflow.stages.finetune")

OUTPUTS = ("model.keras", "bundle.json", "history.csv", "checkpoint.keras", "model_summary.json")


def class_weights(labels: list[int], classes: list[str]) -> dict[int, float]:
    """Weights inversely proportional to class frequency (mean weight 1 over the samples)."""
    counts = np.bincount(np.asarray(labels), minlength=len(classes)).astype(float)
    if np.any(counts == 0):
        missing = [classes[index] for index, count in enumerate(counts) if count == 0]
        raise ValueError(f"classes {missing} have no training volume")
    return {index: float(len(labels) / (len(classes) * n)) for index, n in enumerate(counts)}


def load_encoder(pretrained_dir: str | Path, input_shape: tuple[int, ...]) -> keras.Model:
    """The pretrained encoder; ``ValueError`` if it was built for another input shape."""
    path = Path(pretrained_dir) / "encoder.keras"
    if not path.is_file():
        raise ValueError(f"{path}: pretrained encoder not found; run the pretrain stage first")
    encoder = keras.saving.load_model(path, safe_mode=True)
    if tuple(encoder.input_shape[1:]) != tuple(input_shape):
        raise ValueError(
            f"{path}: encoder input shape {encoder.input_shape[1:]} does not match the "
            f"preprocessed volumes {input_shape}; rerun pretrain"
        )
    return encoder


def run(
    pretrained_dir: str | Path,
    augmented_dir: str | Path,
    preprocessed_dir: str | Path,
    out_dir: str | Path,
    params: Params,
) -> dict:
    """Fine-tunes and writes the model bundle into ``out_dir`` (atomically)."""
    set_determinism(params.seed, params.training.deterministic)
    tune = params.finetune
    spec = read_spec(preprocessed_dir)
    classes = class_names(preprocessed_dir)
    shape = tuple(spec.target_shape)
    if tune.augmentation == "online":
        train = preprocessed_source(preprocessed_dir, ("train",), classes)
    else:
        train = cache_source(augmented_dir, classes)
        if tune.include_originals:
            train = train.extend(preprocessed_source(preprocessed_dir, ("train",), classes))
    val = preprocessed_source(preprocessed_dir, ("val",), classes)
    if not len(val):
        raise ValueError(
            f"{preprocessed_dir}: the validation split is empty; cannot select a model"
        )

    with training_devices(params.training) as placement:
        # computes in the training precision, whatever precision it was pretrained in
        encoder = models.set_precision(
            load_encoder(pretrained_dir, (*shape, 1)), keras.config.dtype_policy().name
        )
        frozen = models.freeze_blocks(encoder, tune.frozen_blocks)
        model = models.build_classifier(
            encoder, models.head_from_params(params.model, encoder, len(classes))
        )
        steps = steps_per_epoch(len(train), tune.batch_size, placement.replicas)
        schedule = keras.optimizers.schedules.CosineDecay(tune.learning_rate, steps * tune.epochs)
        model.compile(
            optimizer=keras.optimizers.AdamW(schedule, weight_decay=tune.weight_decay),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=tune.label_smoothing),
            metrics=["accuracy"],
            jit_compile=placement.jit_compile,
        )
        train_data, val_data = _datasets(
            train, val, shape, len(classes), spec, params, placement.replicas
        )
        with atomic_dir(placement.output_dir(out_dir), OUTPUTS) as staging:
            steps = (steps, steps_per_epoch(len(val), tune.batch_size, placement.replicas))
            bundle = _fit(model, train_data, val_data, steps, train, classes, staging, params)
            best = keras.saving.load_model(staging / "model.keras", safe_mode=True)
            model_summary = summarize(best, spec.target_spacing_mm)
            bundle.update(
                {
                    "classes": classes,
                    "preprocess": spec.to_dict(),
                    "params": params_dict(params),
                    "params_hash": params_hash(params),
                    "architecture": params.model.architecture,
                    "frozen_blocks": frozen,
                    "model": brief(model_summary),
                    "devices": placement.describe(),
                    "train_samples": len(train),
                    "val_volumes": len(val),
                }
            )
            write_json(staging / "bundle.json", bundle)
            write_json(staging / "model_summary.json", model_summary)
    log.info("finetune: best epoch %d, %s", bundle["best_epoch"], bundle["val_metrics"])
    return bundle


def _datasets(train, val, shape, num_classes: int, spec, params: Params, replicas: int):
    """The training data (augmented cache or online) and the validation data, one-hot."""
    tune = params.finetune
    if tune.augmentation == "online":
        train_data = online_dataset(
            train,
            tune.batch_size,
            shape,
            params.augment,
            params.seed,
            spec.target_spacing_mm,
            tune.epochs,
            replicas=replicas,
        )
    else:
        train_data = classification_dataset(
            train,
            tune.batch_size,
            shape,
            epochs=tune.epochs,
            seed=params.seed,
            purpose="finetune",
            replicas=replicas,
        )
    val_data = classification_dataset(val, tune.batch_size, shape, shuffle=False, replicas=replicas)
    return train_data.map(_one_hot(num_classes)), val_data.map(_one_hot(num_classes))


def _fit(
    model, train_data, val_data, steps: tuple[int, int], train, classes, staging: Path, params
) -> dict:
    """Fits with checkpointing and early stopping; saves the best epoch's model.keras and
    history.csv into ``staging`` and returns the bundle's training figures."""
    tune = params.finetune
    steps, validation_steps = steps
    started = time.perf_counter()
    checkpoint = staging / "checkpoint.keras"
    mode = "min" if tune.monitor == "val_loss" else "max"
    callbacks = [
        keras.callbacks.ModelCheckpoint(
            checkpoint, monitor=tune.monitor, mode=mode, save_best_only=True
        ),
        keras.callbacks.EarlyStopping(
            monitor=tune.monitor, mode=mode, patience=tune.patience, restore_best_weights=True
        ),
    ]
    fit = model.fit(
        train_data.repeat(),
        epochs=tune.epochs,
        steps_per_epoch=steps,
        validation_data=val_data,
        validation_steps=validation_steps,
        shuffle=False,
        class_weight=class_weights(train.labels, classes),
        callbacks=callbacks,
        verbose=2,
    )
    checkpoint.replace(staging / "model.keras")
    write_history(staging / "history.csv", fit.history)
    scores = np.asarray(fit.history[tune.monitor])
    best_epoch = int(np.argmin(scores) if mode == "min" else np.argmax(scores))
    return {
        "best_epoch": best_epoch + 1,
        "epochs_run": len(scores),
        "val_metrics": {
            key[4:]: float(values[best_epoch])
            for key, values in fit.history.items()
            if key.startswith("val_")
        },
        "seconds": round(time.perf_counter() - started, 1),
    }


def _one_hot(num_classes: int):
    import tensorflow as tf

    def convert(volume, label):
        return volume, tf.one_hot(label, num_classes)

    return convert


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fine-tune the classifier and write the bundle.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--augmented", required=True)
    parser.add_argument("--preprocessed", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    setup_logging()
    run(args.pretrained, args.augmented, args.preprocessed, args.out, load_params(args.params))


if __name__ == "__main__":
    main()
