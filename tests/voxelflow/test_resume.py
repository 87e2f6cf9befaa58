"""Training killed with SIGKILL and started again ends where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import voxelflow.optimizers  # noqa: F401  (phase-2 models are saved with LayerwiseAdamW)
from tests.conftest import REPO
from voxelflow.resume import Checkpoints

SCRIPT = """
import json, os, signal, sys
from pathlib import Path
import keras

kill = os.environ.get("KILL_AFTER")  # "<phase>:<epochs>": SIGKILL once that epoch is saved
if kill:
    phase, epochs = kill.split(":")
    original = keras.callbacks.BackupAndRestore.on_epoch_end

    def on_epoch_end(self, epoch, logs=None):
        original(self, epoch, logs)
        if Path(self.backup_dir).name == phase and epoch + 1 == int(epochs):
            os.kill(os.getpid(), signal.SIGKILL)

    keras.callbacks.BackupAndRestore.on_epoch_end = on_epoch_end

from stages import finetune, pretrain
from voxelflow.params import parse_params

paths = json.loads(sys.argv[1])
params = parse_params(json.loads(Path(paths["params"]).read_text()))
if paths.get("stage") == "pretrain":
    pretrain.run(paths["preprocessed"], paths["out"], params, paths["checkpoints"])
else:
    finetune.run(paths["pretrained"], paths["augmented"], paths["preprocessed"], paths["out"],
                 params, paths["checkpoints"], None, paths["summary"])
"""


def _stage(paths: dict, kill: str | None = None) -> int:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
    if kill:
        env["KILL_AFTER"] = kill
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), json.dumps(paths)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )
    if kill is None:
        assert result.returncode == 0, result.stderr[-3000:]
    return result.returncode


@pytest.fixture(scope="module")
def pretrained(tiny_data, tiny_params, tmp_path_factory):
    from stages import pretrain

    out = tmp_path_factory.mktemp("resume") / "pretrained"
    pretrain.run(tiny_data["preprocessed"], out, tiny_params)
    return out


def _paths(root, tiny_data, pretrained, params: dict) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.json").write_text(json.dumps(params))
    return {
        "params": str(root / "params.json"),
        "pretrained": str(pretrained),
        "augmented": str(tiny_data["augmented"]),
        "preprocessed": str(tiny_data["preprocessed"]),
        "out": str(root / "classifier"),
        "checkpoints": str(root / "checkpoints"),
        "summary": str(root / "finetune.json"),
    }


@pytest.mark.parametrize("kill", ["phase1:2", "phase2:1"])
def test_a_killed_finetune_resumes_to_the_same_weights(
    kill, tiny_data, tiny_params_dict, pretrained, tmp_path
):
    params = json.loads(json.dumps(tiny_params_dict))
    params["finetune"].update(
        epochs=3,
        patience=10,
        frozen_blocks=2,
        phase2_epochs=2,
        unfreeze_blocks=1,
        layer_decay=0.5,
        monitor="val_auc",
    )
    params["model"]["dropout"] = 0.3  # dropout masks must replay too
    whole = _paths(tmp_path / "whole", tiny_data, pretrained, params)
    _stage(whole)

    killed = _paths(tmp_path / "killed", tiny_data, pretrained, params)
    assert _stage(killed, kill) == -signal.SIGKILL
    phase, epochs = kill.split(":")
    assert not (tmp_path / "killed" / "classifier").exists()  # nothing half-written
    metadata = list((tmp_path / "killed" / "checkpoints").glob(f"*/{phase}/*metadata.json"))
    assert json.loads(metadata[0].read_text())["epoch"] == int(epochs)
    _stage(killed)

    resumed = keras.saving.load_model(tmp_path / "killed" / "classifier" / "model.keras")
    uninterrupted = keras.saving.load_model(tmp_path / "whole" / "classifier" / "model.keras")
    pairs = list(zip(resumed.weights, uninterrupted.weights, strict=True))
    assert [w.path for w, o in pairs if not np.array_equal(w.numpy(), o.numpy())] == []
    history = (tmp_path / "killed" / "classifier" / "history.csv").read_text()
    assert history == (tmp_path / "whole" / "classifier" / "history.csv").read_text()
    assert len(history.splitlines()) == 1 + 5  # both phases, every epoch once
    summary = json.loads((tmp_path / "killed" / "finetune.json").read_text())
    assert summary["epochs_run"] == 5 and summary["phases"] == 2
    assert "best_val_auc" in summary
    assert not any((tmp_path / "killed" / "checkpoints").iterdir())  # cleared on success


def test_checkpoints_of_another_run_are_removed(tmp_path):
    Checkpoints(tmp_path, "a" * 64)
    (tmp_path / ("a" * 16) / "phase1").mkdir()
    Checkpoints(tmp_path, "b" * 64)
    assert [path.name for path in tmp_path.iterdir()] == ["b" * 16]


def test_a_killed_pretraining_resumes_to_the_same_encoder(tiny_data, tiny_params_dict, tmp_path):
    params = json.loads(json.dumps(tiny_params_dict))
    params["pretrain"].update(epochs=3, mode="self_supervised")
    runs = {}
    for name, kill in (("whole", None), ("killed", "pretrain:2")):
        paths = _paths(tmp_path / name, tiny_data, None, params)
        paths.update(stage="pretrain", out=str(tmp_path / name / "pretrained"))
        if kill:
            assert _stage(paths, kill) == -signal.SIGKILL
            assert not (tmp_path / name / "pretrained").exists()  # nothing half-written
            saved = list((tmp_path / name / "checkpoints").glob("*/pretrain/*metadata.json"))
            assert json.loads(saved[0].read_text())["epoch"] == 2
        _stage(paths)
        runs[name] = tmp_path / name / "pretrained"

    resumed = keras.saving.load_model(runs["killed"] / "encoder.keras")
    uninterrupted = keras.saving.load_model(runs["whole"] / "encoder.keras")
    pairs = list(zip(resumed.weights, uninterrupted.weights, strict=True))
    assert [w.path for w, o in pairs if not np.array_equal(w.numpy(), o.numpy())] == []
    history = (runs["killed"] / "history.csv").read_text()
    assert history == (runs["whole"] / "history.csv").read_text()
    assert len(history.splitlines()) == 1 + 3  # every epoch once


def _tiny_fit(checkpoints: Checkpoints, phase: str, epochs: int, previous: dict) -> dict:
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = np.ones((4, 2), "float32"), np.zeros((4, 1), "float32")
    return checkpoints.fit(
        model,
        phase,
        lambda start: tf.data.Dataset.from_tensors((x, y)).repeat(),
        epochs,
        1,
        monitor="val_loss",
        patience=1,
        previous=previous,
        validation_data=(x, y),
        verbose=0,
    )


def test_a_later_phase_keeps_the_best_of_earlier_phases_but_restarts_the_patience(tmp_path):
    checkpoints = Checkpoints(tmp_path, "c" * 64)
    # an earlier phase reached val_loss 0 three epochs ago: no epoch here is better, so
    # best.keras is not written, yet the phase still trains (patience counts from its start)
    history = _tiny_fit(checkpoints, "phase2", 5, {"val_loss": [0.0, 5.0, 5.0, 5.0]})
    assert len(history["val_loss"]) == 2  # Keras's EarlyStopping never stops after epoch 1
    assert not checkpoints.best.exists()
    assert not list(tmp_path.rglob(".partial-*"))
    # without that earlier best, the first epoch is the best so far
    fresh = Checkpoints(tmp_path / "fresh", "d" * 64)
    _tiny_fit(fresh, "phase2", 1, {})
    assert fresh.best.is_file()


def test_a_backup_torn_by_a_kill_is_never_resumed_from(tmp_path):
    import tensorflow as tf

    from voxelflow.resume import AtomicBackupAndRestore

    def fit(epochs: int) -> keras.Model:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile("adam", "mse")
        data = tf.data.Dataset.from_tensors((np.ones((4, 2), "f"), np.zeros((4, 1), "f")))
        backup = AtomicBackupAndRestore(tmp_path, delete_checkpoint=False)
        model.fit(data.repeat(), epochs=epochs, steps_per_epoch=1, callbacks=[backup], verbose=0)
        return model

    after_two = [np.asarray(weight) for weight in fit(2).weights]
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "epoch-00002.weights.h5",
        "training_metadata.json",
    ]
    # killed while writing epoch 3's weights: a torn partial file, the metadata untouched
    (tmp_path / "partial-999.weights.h5").write_bytes(b"\x89HDF\r\n torn")
    resumed = fit(2)  # nothing left to do: epoch 2's weights, whole
    for mine, saved in zip(resumed.weights, after_two, strict=True):
        assert np.array_equal(np.asarray(mine), saved)
    fit(3)
    metadata = json.loads((tmp_path / "training_metadata.json").read_text())
    assert metadata == {"epoch": 3, "batch": 0, "weights": "epoch-00003.weights.h5"}
    assert not (tmp_path / "epoch-00002.weights.h5").exists()
