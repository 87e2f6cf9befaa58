"""Stage `finetune`: a classifier from the pretrained encoder, its first blocks frozen.

    python -m stages.finetune --pretrained models/pretrained --augmented data/augmented \
        --preprocessed data/preprocessed --out models/classifier \
        --checkpoints models/checkpoints/finetune --logs logs/finetune \
        --summary metrics/finetune.json

Phase 1 trains the head and the unfrozen blocks (the first ``finetune.frozen_blocks`` stay
frozen, their batch normalisation in inference mode); phase 2 (``phase2_epochs``) unfreezes
the last ``unfreeze_blocks`` frozen blocks and trains on from phase 1's best epoch at
``phase2_learning_rate``, each block further from the head at ``layer_decay`` times the rate
of the one after it. Trains on the augmented cache (plus the original training volumes when
``finetune.include_originals``) or on fresh copies per epoch, with class weights or a
class-balanced sampler; the epoch bundled is the best by ``finetune.monitor`` on the
validation split, and training stops when it has not improved for ``patience`` epochs.
Resumes after a kill from per-epoch checkpoints (voxelflow.resume).

Writes the model bundle: ``model.keras``, ``bundle.json`` (classes, preprocessing spec,
params, params hash, frozen blocks, parameters/MACs/receptive field, devices, validation
metrics), ``model_summary.json`` and ``history.csv``; the summary (epochs run, best epoch,
best validation metric, wall time) to ``--summary`` (a DVC metric); TensorBoard logs to
``--logs``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

import keras
import numpy as np

from voxelflow import models
from voxelflow.atomic import atomic_dir, file_sha256, write_json
from voxelflow.bundle import bundle_checksums
from voxelflow.data import (
    balanced_weights,
    cache_source,
    classification_dataset,
    one_hot,
    preprocessed_source,
    steps_per_epoch,
)
from voxelflow.dataset import class_names, data_digest, read_spec
from voxelflow.devices import training_devices
from voxelflow.keras_files import make_reproducible
from voxelflow.model_summary import brief, summarize
from voxelflow.online import epoch_source, online_dataset
from voxelflow.optimizers import LayerwiseAdamW, block_rate_multipliers
from voxelflow.params import Params, load_params, params_dict
from voxelflow.resume import Checkpoints
from voxelflow.runtime import stage_process
from voxelflow.training import (
    class_weights,
    params_hash,
    run_key,
    set_determinism,
    training_seed,
    write_history,
)

log = logging.getLogger("voxelflow.stages.finetune")

OUTPUTS = ("model.keras", "bundle.json", "history.csv", "model_summary.json")


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
    checkpoints_dir: str | Path | None = None,
    logs_dir: str | Path | None = None,
    summary_path: str | Path | None = None,
) -> dict:
    """Fine-tunes and writes the model bundle into ``out_dir`` (atomically)."""
    set_determinism(training_seed(params), params.training.deterministic)
    tune = params.finetune
    spec = read_spec(preprocessed_dir)
    classes = class_names(preprocessed_dir)
    shape = tuple(spec.target_shape)
    originals = preprocessed_source(preprocessed_dir, ("train",), classes)
    if tune.augmentation in ("online", "none"):
        # as many steps per epoch as the cache's: online redraws its copies every epoch, none
        # reads the originals unaugmented (the ablation's "off")
        train = epoch_source(originals, params.augment.copies, tune.include_originals)
        digest = data_digest(preprocessed_dir, ("train", "val"))
    else:
        train = cache_source(augmented_dir, classes)
        if tune.include_originals:
            train = train.extend(originals)
        digest = data_digest(preprocessed_dir, ("train", "val")) + _cache_digest(augmented_dir)
    val = preprocessed_source(preprocessed_dir, ("val",), classes)
    if not len(val):
        raise ValueError(
            f"{preprocessed_dir}: the validation split is empty; cannot select a model"
        )
    encoder_file = Path(pretrained_dir) / "encoder.keras"
    if encoder_file.is_file():
        digest += file_sha256(encoder_file)
    checkpoints = Checkpoints(
        checkpoints_dir or Path(out_dir).with_name(Path(out_dir).name + ".checkpoints"),
        run_key(params, digest, "finetune"),
    )
    weights = class_weights(train.labels, classes)  # also refuses a class with no volume
    started = time.perf_counter()
    mode = "max" if tune.monitor in ("val_accuracy", "val_auc") else "min"
    with training_devices(params.training) as placement:
        # computes in the training precision, whatever precision it was pretrained in
        encoder = models.set_precision(
            load_encoder(pretrained_dir, (*shape, 1)), keras.config.dtype_policy().name
        )
        frozen = models.freeze_blocks(encoder, _blocks_to_freeze(params))
        model = models.build_classifier(
            encoder, models.head_from_params(params.model, encoder, len(classes))
        )
        steps = steps_per_epoch(len(train), tune.batch_size, placement.replicas)
        passes = max(1, -(-tune.min_steps_per_epoch // steps))  # whole passes, rounded up
        steps *= passes
        fit = {
            "validation_data": classification_dataset(
                val, tune.batch_size, shape, shuffle=False, replicas=placement.replicas
            ).map(one_hot(len(classes))),
            "validation_steps": steps_per_epoch(len(val), tune.batch_size, placement.replicas),
            "verbose": 2,
        }
        if tune.balance == "class_weight":
            fit["class_weight"] = weights
        total = tune.epochs + tune.phase2_epochs
        data = _training_data(
            train,
            len(originals),
            shape,
            len(classes),
            spec,
            params,
            placement.replicas,
            total,
            passes,
        )
        _compile(
            model,
            keras.optimizers.AdamW,
            tune.learning_rate,
            steps * tune.epochs,
            params,
            len(classes),
            placement.jit_compile,
        )
        common = {
            "monitor": tune.monitor,
            "mode": mode,
            "patience": tune.patience,
            "seed": training_seed(params),
        }
        history = checkpoints.fit(
            model,
            "phase1",
            data,
            tune.epochs,
            steps,
            callbacks=_callbacks(params, logs_dir, 1),
            **common,
            **fit,
        )
        phases = [{"phase": 1, "frozen_blocks": frozen, "epochs_run": _epochs(history)}]
        if tune.phase2_epochs:
            if checkpoints.best.is_file():  # phase 2 starts from phase 1's best epoch
                model.set_weights(keras.saving.load_model(checkpoints.best).get_weights())
            still_frozen = models.freeze_blocks(
                encoder, frozen[: len(frozen) - tune.unfreeze_blocks]
            )
            multipliers = block_rate_multipliers(encoder, tune.layer_decay)
            _compile(
                model,
                (
                    (lambda rate, **kw: LayerwiseAdamW(rate, multipliers=multipliers, **kw))
                    if multipliers
                    else keras.optimizers.AdamW
                ),
                tune.phase2_learning_rate,
                steps * tune.phase2_epochs,
                params,
                len(classes),
                placement.jit_compile,
            )
            second = checkpoints.fit(
                model,
                "phase2",
                lambda start: data(tune.epochs + start),
                tune.phase2_epochs,
                steps,
                previous=history,
                callbacks=_callbacks(params, logs_dir, 2),
                **common,
                **fit,
            )
            phases.append(
                {"phase": 2, "frozen_blocks": still_frozen, "epochs_run": _epochs(second)}
            )
            history = {key: history.get(key, []) + second.get(key, []) for key in history}
        if not checkpoints.best.is_file():
            raise ValueError(
                f"finetune: no epoch gave a finite {tune.monitor}; nothing to bundle "
                f"(history: {history.get(tune.monitor)})"
            )
        with atomic_dir(placement.output_dir(out_dir), OUTPUTS) as staging:
            shutil.copyfile(checkpoints.best, staging / "model.keras")
            make_reproducible(staging / "model.keras")
            best = keras.saving.load_model(staging / "model.keras", safe_mode=True)
            model_summary = summarize(best, spec.target_spacing_mm)
            scores = np.asarray(history[tune.monitor])
            best_epoch = int(np.argmin(scores) if mode == "min" else np.argmax(scores))
            bundle = {
                "classes": classes,
                "preprocess": spec.to_dict(),
                "params": params_dict(params),
                "params_hash": params_hash(params),
                "architecture": params.model.architecture,
                "frozen_blocks": frozen,
                "phases": phases,
                "model": brief(model_summary),
                "devices": placement.describe(),
                "train_samples": len(train),
                "steps_per_epoch": steps,
                "val_volumes": len(val),
                "best_epoch": best_epoch + 1,
                "epochs_run": len(scores),
                "val_metrics": {
                    key[4:]: float(values[best_epoch])
                    for key, values in history.items()
                    if key.startswith("val_")
                },
                "seconds": round(time.perf_counter() - started, 1),
            }
            write_history(staging / "history.csv", history)
            write_json(staging / "model_summary.json", model_summary)
            bundle["files"] = bundle_checksums(staging)
            write_json(staging / "bundle.json", bundle)
    if summary_path and placement.is_chief:
        write_json(
            summary_path,
            {
                "epochs_run": bundle["epochs_run"],
                "best_epoch": bundle["best_epoch"],
                f"best_{tune.monitor}": float(scores[best_epoch]),
                "seconds": bundle["seconds"],
                "phases": len(phases),
            },
        )
    checkpoints.clear()
    log.info("finetune: best epoch %d, %s", bundle["best_epoch"], bundle["val_metrics"])
    return bundle


def _epochs(history: dict) -> int:
    return len(next(iter(history.values()), []))


def _cache_digest(augmented_dir: str | Path) -> str:
    path = Path(augmented_dir) / "provenance.jsonl"
    return file_sha256(path) if path.is_file() else ""


def _compile(model, optimizer, rate: float, steps: int, params: Params, classes: int, jit):
    tune = params.finetune
    if tune.schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(rate, max(1, steps))
    model.compile(
        optimizer=optimizer(rate, weight_decay=tune.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=tune.label_smoothing),
        metrics=["accuracy", keras.metrics.AUC(name="auc", multi_label=True, num_labels=classes)],
        jit_compile=jit,
    )


def _blocks_to_freeze(params: Params) -> int | list[str]:
    """``finetune.frozen_blocks``, except from scratch (``pretrain.mode: none`` without
    ``pretrain.weights``): nothing was pretrained, so freezing would only pin random weights,
    and every block trains."""
    frozen = params.finetune.frozen_blocks
    if params.pretrain.mode == "none" and not params.pretrain.weights:
        if frozen:
            log.info(
                "pretrain.mode is none: finetune.frozen_blocks=%s not applied (nothing "
                "pretrained to keep); every block trains",
                frozen,
            )
        return 0
    return frozen


def _callbacks(params: Params, logs_dir, phase: int) -> list:
    tune = params.finetune
    callbacks = []
    if tune.schedule == "plateau":
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=tune.monitor,
                mode="min" if tune.monitor == "val_loss" else "max",
                factor=0.5,
                patience=tune.plateau_patience,
            )
        )
    if logs_dir:
        callbacks.append(keras.callbacks.TensorBoard(Path(logs_dir) / f"phase{phase}"))
    return callbacks


def _training_data(
    train,
    originals: int,
    shape,
    num_classes: int,
    spec,
    params: Params,
    replicas: int,
    epochs: int,
    passes: int = 1,
):
    """``data(start_epoch)``: the training batches from that epoch on, one-hot, repeated.
    ``originals``: the distinct train volumes (online: ``train`` lists them once per copy).
    A training epoch is ``passes`` passes over ``train`` (each its own order and, online,
    its own copies), so a resumed epoch gets the batches it would have had."""
    tune = params.finetune
    epochs *= passes
    options = {"replicas": replicas}
    if tune.balance == "sampler":
        options["weights"] = balanced_weights(train.labels)

    copies = params.augment.copies

    def data(start_epoch: int):
        start_epoch *= passes
        if tune.augmentation == "online":
            dataset = online_dataset(
                train,
                tune.batch_size,
                shape,
                params.augment,
                training_seed(params),
                spec.target_spacing_mm,
                epochs,
                start_epoch=start_epoch,
                originals=originals,
                copies=copies,
                **options,
            )
        else:
            dataset = classification_dataset(
                train,
                tune.batch_size,
                shape,
                epochs=epochs,
                seed=training_seed(params),
                purpose="finetune",
                start_epoch=start_epoch,
                **options,
            )
        return dataset.map(one_hot(num_classes)).repeat()

    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fine-tune the classifier and write the bundle.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--augmented", required=True)
    parser.add_argument("--preprocessed", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--checkpoints", help="per-epoch checkpoints (resume after a kill)")
    parser.add_argument("--logs", help="TensorBoard logs")
    parser.add_argument("--summary", help="the fine-tune summary (a DVC metric)")
    args = parser.parse_args(argv)
    with stage_process("finetune"):
        run(
            args.pretrained,
            args.augmented,
            args.preprocessed,
            args.out,
            load_params(args.params),
            args.checkpoints,
            args.logs,
            args.summary,
        )


if __name__ == "__main__":
    main()
