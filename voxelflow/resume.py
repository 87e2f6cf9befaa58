"""Training that survives being killed: per-epoch checkpoints in a persistent folder.

A stage trains in phases (pretrain: one; finetune: up to two). Every phase fits with
``BackupAndRestore``, which saves the model's weights and the optimiser's state after each
epoch into ``<root>/<run key>/<phase>/``, and a ``CSVLogger`` that appends the epoch's
metrics. Started again after a kill, :meth:`Checkpoints.fit` reads how many epochs are done,
builds the data from that epoch on (the data of epoch ``e`` is a pure function of ``e``:
see :func:`voxelflow.data.make_dataset`), and continues; with deterministic kernels it ends
with the same weights as a run never interrupted.

The run key is a hash of everything that makes two runs the same (params, input data): a
checkpoint of another run is never resumed from, and is deleted. On success the stage calls
:meth:`Checkpoints.clear`. DVC declares the root ``persist: true`` so that it survives
between ``dvc repro`` attempts.

The best epoch by the monitored metric is kept in ``best.keras`` across phases and
restarts (a later phase replaces it only with a better epoch; it is written beside and
renamed into place), and early stopping counts epochs since the best across restarts
(a new phase starts its patience afresh). The epoch's checkpoint is the last thing an epoch
writes: a kill before it redoes the epoch, a kill after it loses nothing.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import zlib
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from voxelflow.atomic import fsync_file, write_text
from voxelflow.models import leaf_layers

log = logging.getLogger("voxelflow.resume")

BEST = "best.keras"


def _number(text: str) -> float:
    """A history cell: a number, or empty / NA (not computed that epoch) as NaN."""
    return float("nan") if text in ("", "NA") else float(text)


class EpochSeeds(keras.callbacks.Callback):
    """Sets every random layer's generator (dropout) to a state derived from (seed, layer,
    epoch) when an epoch begins: the generators' states are not in the saved weights, so a
    resumed epoch would otherwise draw other dropout masks than the run it resumes."""

    def __init__(self, seed: int):
        super().__init__()
        self.seed = seed

    def on_epoch_begin(self, epoch, logs=None):
        for index, layer in enumerate(leaf_layers(self.model)):
            for generator in getattr(layer, "_seed_generators", []):
                value = zlib.crc32(f"{self.seed}|{index}|{layer.name}|{epoch}".encode())
                state = np.array([value & 0x7FFFFFFF, 0])
                generator.state.assign(state.astype(generator.state.dtype))


class EpochLog(keras.callbacks.Callback):
    """Appends each epoch's metrics to a CSV, synced to disk before the epoch's checkpoint is
    written (this callback comes first), so a saved epoch always has its row."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        logs = {key: float(value) for key, value in (logs or {}).items()}
        new = not self.path.is_file()
        with open(self.path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["epoch", *sorted(logs)])
            writer.writerow([epoch, *(repr(logs[key]) for key in sorted(logs))])
            handle.flush()
            os.fsync(handle.fileno())


class ResumedEarlyStopping(keras.callbacks.EarlyStopping):
    """Early stopping that starts from the epochs already waited and the best value so far."""

    def __init__(self, *args, waited: int = 0, best: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._waited, self._best_so_far = waited, best

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.wait = self._waited
        if self._best_so_far is not None:
            self.best = self._best_so_far


class AtomicBestCheckpoint(keras.callbacks.ModelCheckpoint):
    """``ModelCheckpoint`` that writes the best model beside its path and renames it into
    place: a kill while saving leaves the previous best, never a truncated file."""

    def __init__(self, filepath: Path, **kwargs):
        self.final = Path(filepath)
        super().__init__(self.final.with_name(f".partial-{self.final.name}"), **kwargs)

    def on_epoch_end(self, epoch, logs=None):
        partial = Path(self.filepath)
        partial.unlink(missing_ok=True)
        super().on_epoch_end(epoch, logs)
        if partial.is_file():
            os.replace(partial, self.final)


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` whose backup cannot be torn by a kill.

    Keras overwrites ``latest.weights.h5`` and then ``training_metadata.json`` in place: a
    kill inside the first leaves a torn weights file, inside the second an empty metadata
    file that fails every later resume, and between the two new weights under the old epoch
    count (the resumed run would redo an epoch from the wrong weights). Here each epoch's
    weights go to their own file, renamed into place when complete, and the metadata,
    replaced atomically, names the file it belongs to: the backup is the previous epoch's or
    this one's, whole.
    """

    def _save_model(self):
        folder = Path(self.backup_dir)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{self._current_epoch:05d}.weights.h5"
        partial = folder / f"partial-{os.getpid()}.weights.h5"
        self.model.save_weights(str(partial), overwrite=True)
        fsync_file(partial)
        os.replace(partial, folder / name)
        metadata = {"epoch": self._current_epoch, "batch": self._last_batch_seen, "weights": name}
        write_text(self._training_metadata_path, json.dumps(metadata))
        for old in folder.glob("*.weights.h5"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def _load_model(self):
        path = Path(self._training_metadata_path)
        if not path.is_file():
            return
        metadata = json.loads(path.read_text())
        if not self.model.built:
            raise ValueError(f"{self.model.name}: build the model before resuming it")
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        # "weights" is missing from a backup Keras's own BackupAndRestore wrote
        weights = metadata.get("weights", "latest.weights.h5")
        self.model.load_weights(str(Path(self.backup_dir) / weights))
        self.model._initial_epoch = metadata["epoch"]


class Checkpoints:
    """The persistent checkpoints of one run under ``root``."""

    def __init__(self, root: str | Path, key: str):
        self.root = Path(root)
        self.directory = self.root / key[:16]
        if self.root.is_dir():
            for stale in self.root.iterdir():
                if stale != self.directory:
                    log.info("removing checkpoints of another run: %s", stale)
                    shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        self.directory.mkdir(parents=True, exist_ok=True)

    def done(self, phase: str) -> int:
        """Epochs of ``phase`` completed and saved (0 when it has not started)."""
        metadata = self.directory / phase / "training_metadata.json"
        if not metadata.is_file():
            return 0
        return int(json.loads(metadata.read_text())["epoch"])

    def history(self, phase: str) -> dict[str, list[float]]:
        """The per-epoch metrics of ``phase`` so far, one row per epoch (a row written twice,
        by a run killed between its checkpoint and its log line, counts once)."""
        path = self.directory / phase / "history.csv"
        if not path.is_file():
            return {}
        with open(path, newline="") as handle:
            rows = {int(row["epoch"]): row for row in csv.DictReader(handle)}
        rows = {epoch: row for epoch, row in rows.items() if epoch < self.done(phase)}
        keys = [key for key in next(iter(rows.values()), {}) if key != "epoch"]
        history = {key: [_number(rows[epoch][key]) for epoch in sorted(rows)] for key in keys}
        return {key: values for key, values in history.items() if not np.all(np.isnan(values))}

    def fit(
        self,
        model: keras.Model,
        phase: str,
        data: Callable[[int], object],
        epochs: int,
        steps: int,
        monitor: str | None = None,
        mode: str = "min",
        patience: int | None = None,
        previous: dict[str, list[float]] | None = None,
        callbacks: list | None = None,
        seed: int = 0,
        **fit_kwargs,
    ) -> dict[str, list[float]]:
        """Fits ``phase`` for ``epochs`` epochs, resuming after the last completed one.

        Args:
            model: compiled.
            phase: the name of this phase's checkpoint folder.
            data: ``data(start_epoch)``, the training data from that epoch on.
            epochs: epochs of this phase.
            steps: batches per epoch.
            monitor: the metric that picks ``best.keras`` and stops early; None for neither.
            mode: ``"min"`` or ``"max"`` for ``monitor``.
            patience: epochs without improvement before stopping (None: never).
            previous: the history of earlier phases, so the best and the patience carry on.
            callbacks: more callbacks (TensorBoard, schedules).
            seed: of the dropout masks, which :class:`EpochSeeds` sets per epoch.

        Returns:
            This phase's whole history, the epochs of earlier attempts included.
        """
        start = self.done(phase)
        folder = self.directory / phase
        if start >= epochs:
            log.info("%s: all %d epochs done before; nothing to resume", phase, epochs)
            return self.history(phase)
        if start:
            log.info("%s: resuming after epoch %d of %d", phase, start, epochs)
        folder.mkdir(parents=True, exist_ok=True)
        extra: list = [EpochSeeds(seed), EpochLog(folder / "history.csv")]
        if monitor:
            earlier, this = previous or {}, self.history(phase)
            so_far = {key: [*earlier.get(key, []), *this.get(key, [])] for key in {*earlier, *this}}
            scores = np.asarray(so_far.get(monitor, []), dtype=float)
            best = None
            waited = 0
            if np.isfinite(scores).any():
                index = int(np.nanargmin(scores) if mode == "min" else np.nanargmax(scores))
                # the best so far carries over from earlier phases; the patience restarts
                best = float(scores[index])
                waited = min(int(scores.size - 1 - index), len(this.get(monitor, [])))
            extra.append(
                AtomicBestCheckpoint(
                    self.directory / BEST,
                    monitor=monitor,
                    mode=mode,
                    save_best_only=True,
                    initial_value_threshold=best,
                )
            )
            if patience is not None and waited >= patience:
                log.info("%s: stopped early before (%d epochs without improvement)", phase, waited)
                return self.history(phase)
            if patience is not None:
                extra.append(
                    ResumedEarlyStopping(
                        monitor=monitor, mode=mode, patience=patience, waited=waited, best=best
                    )
                )
        # last: an epoch counts as done only once its log line and its best model are saved
        backup = AtomicBackupAndRestore(folder, delete_checkpoint=False)
        model._initial_epoch = None  # Keras keeps the epoch a previous phase resumed at
        model.fit(
            data(start),
            epochs=epochs,
            steps_per_epoch=steps,
            callbacks=[*extra, *(callbacks or []), backup],
            shuffle=False,
            **fit_kwargs,
        )
        return self.history(phase)

    @property
    def best(self) -> Path:
        return self.directory / BEST

    def clear(self) -> None:
        """Deletes the checkpoints (the run finished and its outputs are written); the root
        stays, empty (DVC declares it as an output)."""
        shutil.rmtree(self.directory, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
