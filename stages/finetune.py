"""Stage `finetune`: a classifier from the pretrained encoder, its first blocks frozen.

    python -m stages.finetune --pretrained models/pretrained --augmented data/augmented \
        --preprocessed data/preprocessed --out models/classifier

Trains on the augmented cache (plus the original training volumes when
``finetune.include_originals``), selects the epoch by the validation split, and writes the
model bundle: ``model.keras``, ``bundle.json`` (classes, preprocessing spec, params, params
hash, frozen blocks, parameter counts, validation metrics) and ``history.csv``.
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
from voxelflow.data import cache_source, classification_dataset, preprocessed_source
from voxelflow.dataset import class_names, read_spec
from voxelflow.online import online_dataset
from voxelflow.params import Params, load_params, params_dict
from voxelflow.runtime import setup_logging
from voxelflow.training import params_hash, set_determinism, write_history

log = logging.getLogger("voxelflow.stages.finetune")

OUTPUTS = ("model.keras", "bundle.json", "history.csv", "checkpoint.keras")


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
    set_determinism(params.seed)
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

    encoder = load_encoder(pretrained_dir, (*shape, 1))
    frozen = models.freeze_blocks(encoder, tune.frozen_blocks)
    head = models.build_head(
        encoder.output_shape[1:],
        len(classes),
        params.model.head_units,
        params.model.dropout,
        params.model.head_pooling,
    )
    model = models.build_classifier(encoder, head)
    steps = int(np.ceil(len(train) / tune.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(tune.learning_rate, steps * tune.epochs)
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=tune.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=tune.label_smoothing),
        metrics=["accuracy"],
    )
    if tune.augmentation == "online":
        train_data = online_dataset(
            train,
            tune.batch_size,
            shape,
            params.augment,
            params.seed,
            spec.target_spacing_mm,
            tune.epochs,
        )
    else:
        train_data = classification_dataset(
            train, tune.batch_size, shape, epochs=tune.epochs, seed=params.seed, purpose="finetune"
        )
    train_data = train_data.map(_one_hot(len(classes)))
    val_data = classification_dataset(val, tune.batch_size, shape, shuffle=False).map(
        _one_hot(len(classes))
    )
    started = time.perf_counter()
    with atomic_dir(out_dir, OUTPUTS) as staging:
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
            shuffle=False,
            class_weight=class_weights(train.labels, classes),
            callbacks=callbacks,
            verbose=2,
        )
        best = keras.saving.load_model(checkpoint, safe_mode=True)
        checkpoint.unlink()
        scores = np.asarray(fit.history[tune.monitor])
        best_epoch = int(np.argmin(scores) if mode == "min" else np.argmax(scores))
        bundle = {
            "classes": classes,
            "preprocess": spec.to_dict(),
            "params": params_dict(params),
            "params_hash": params_hash(params),
            "architecture": params.model.architecture,
            "frozen_blocks": frozen,
            "parameters": models.count_parameters(best),
            "train_samples": len(train),
            "val_volumes": len(val),
            "best_epoch": best_epoch + 1,
            "epochs_run": len(scores),
            "val_metrics": {
                key[4:]: float(values[best_epoch])
                for key, values in fit.history.items()
                if key.startswith("val_")
            },
            "seconds": round(time.perf_counter() - started, 1),
        }
        best.save(staging / "model.keras")
        write_history(staging / "history.csv", fit.history)
        write_json(staging / "bundle.json", bundle)
    log.info("finetune: best epoch %d, %s", bundle["best_epoch"], bundle["val_metrics"])
    return bundle


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
