"""The training-devices helper: precision policies, distribution strategies, XLA.

Strategies over several devices need the devices configured before TensorFlow starts, so
those tests run a script in a fresh interpreter with two logical CPU devices.
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from tests.conftest import REPO
from voxelflow import models
from voxelflow.devices import training_devices
from voxelflow.params import TrainingParams

SHAPE = (16, 16, 16, 1)


def _run(script: str, env: dict | None = None, timeout: int = 300) -> dict:
    """Runs ``script`` in a fresh interpreter; its last stdout line is JSON."""
    environment = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": str(REPO),
        # oneDNN's graph rewrites broke replica 1's convolutions over logical CPU devices
        # (TensorFlow 2.21; see voxelflow.devices)
        "TF_ENABLE_ONEDNN_OPTS": "0",
    }
    environment.update(env or {})
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


TWO_CPUS = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""

TRAIN = """
import json
import keras
import numpy as np
import tensorflow as tf
from voxelflow import models
from voxelflow.devices import training_devices
from voxelflow.params import TrainingParams

rng = np.random.default_rng(0)
x = rng.normal(size=(8, 16, 16, 16, 1)).astype("float32")
y = keras.utils.to_categorical(np.arange(8) % 3, 3)


def train(distribution, normalization="group", **training):
    keras.utils.set_random_seed(1)
    config = TrainingParams(distribution=distribution, **training)
    with training_devices(config) as placement:
        encoder = models.build_encoder((16, 16, 16, 1), "resnet", 4, [1, 1], normalization)
        head = models.build_head(encoder.output_shape[1:], 3, 8, 0.0, "avg")
        model = models.build_classifier(encoder, head)
        jit = placement.jit_compile
        model.compile(keras.optimizers.SGD(0.05), "categorical_crossentropy", jit_compile=jit)
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
        history = model.fit(data, epochs=1, verbose=0, shuffle=False)
    weights = np.concatenate([w.ravel() for w in model.get_weights()])
    return {**placement.describe(), "xla": model.jit_compile}, history.history["loss"][0], weights
"""


def _train_one_step(architecture: str, normalization: str):
    encoder = models.build_encoder(SHAPE, architecture, 4, [1, 1], normalization)
    classifier = models.build_classifier(
        encoder, models.build_head(encoder.output_shape[1:], 3, 8, 0.0, "avg")
    )
    classifier.compile("adam", "categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(2, *SHAPE)).astype("float32")
    return encoder, classifier, classifier.fit(x, np.eye(3)[[0, 1]], epochs=1, verbose=0)


def test_precision_policy_is_set_inside_and_restored_after():
    assert keras.config.dtype_policy().name == "float32"
    with training_devices(TrainingParams(precision="mixed_bfloat16")) as placement:
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
        encoder, classifier, history = _train_one_step("separable", "batch")
    assert keras.config.dtype_policy().name == "float32"
    assert placement.describe()["precision"] == "mixed_bfloat16"
    assert encoder.get_layer("stem_conv").compute_dtype == "bfloat16"
    assert encoder.get_layer("stem_conv").variable_dtype == "float32"
    assert classifier.get_layer("head").get_layer("head_logits").compute_dtype == "float32"
    assert classifier.output.dtype == "float32"
    assert np.isfinite(history.history["loss"][0])


def test_mixed_float16_trains_with_loss_scaling():
    with training_devices(TrainingParams(precision="mixed_float16")):
        encoder, classifier, history = _train_one_step("resnet", "instance")
    assert type(classifier.optimizer).__name__ == "LossScaleOptimizer"
    assert encoder.get_layer("stage1_block1_conv1").compute_dtype == "float16"
    assert np.isfinite(history.history["loss"][0])


def test_one_visible_device_trains_on_one_replica():
    with training_devices(TrainingParams()) as placement:
        pass
    described = placement.describe()
    assert described["distribution"] == "single" and described["replicas"] == 1
    assert described["backend"] == "tensorflow"


def test_bad_tf_config_is_named(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with (
        pytest.raises(ValueError, match="TF_CONFIG is not a valid cluster"),
        training_devices(TrainingParams()),
    ):
        pass


def test_mirrored_strategy_on_two_cpu_devices_matches_one_device():
    result = _run(
        TWO_CPUS
        + TRAIN
        + """
one = train("single")
two = train("auto")
batch_norm = train("auto", "batch")
xla = train("single", jit_compile=True, deterministic=False)
print(json.dumps({
    "single": one[0], "mirrored": two[0], "losses": [one[1], two[1], xla[1]],
    "max_weight_difference": float(np.max(np.abs(one[2] - two[2]))),
    "batch_norm_loss": batch_norm[1], "xla": xla[0]["xla"],
}))
"""
    )
    assert result["single"]["replicas"] == 1
    assert result["mirrored"]["distribution"] == "mirrored"
    assert result["mirrored"]["replicas"] == 2
    assert result["mirrored"]["devices"] == ["/device:CPU:0", "/device:CPU:1"]
    assert result["losses"][0] == pytest.approx(result["losses"][1], rel=1e-5)
    assert result["max_weight_difference"] < 1e-5
    assert np.isfinite(result["batch_norm_loss"])
    # XLA when asked for (ops not deterministic), training to the same loss
    assert result["xla"] is True
    assert result["losses"][2] == pytest.approx(result["losses"][0], rel=1e-3)


def test_tf_config_selects_multi_worker_strategy():
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    config = {"cluster": {"worker": [f"localhost:{port}"]}, "task": {"type": "worker", "index": 0}}
    result = _run(
        TRAIN
        + """
import os
multi = train("auto")
os.environ.pop("TF_CONFIG")
one = train("single")
print(json.dumps({
    "multi": multi[0], "losses": [one[1], multi[1]],
    "max_weight_difference": float(np.max(np.abs(one[2] - multi[2]))),
}))
""",
        env={"TF_CONFIG": json.dumps(config)},
    )
    assert result["multi"]["distribution"] == "multi_worker"
    assert result["multi"]["devices"] == ["1 workers"]
    assert result["losses"][0] == pytest.approx(result["losses"][1], rel=1e-5)
    assert result["max_weight_difference"] < 1e-5


@pytest.mark.parametrize("kind", ["mirrored", "multi_worker"])
def test_training_stages_run_distributed(kind, tiny_data, tiny_params_dict, tmp_path):
    """pretrain + finetune end to end under MirroredStrategy on two CPU devices (batch norm,
    the encoder pretrained in float32 and fine-tuned in mixed bfloat16), and under
    MultiWorkerMirroredStrategy from TF_CONFIG (a one-worker cluster: the chief)."""
    params = json.loads(json.dumps(tiny_params_dict))
    params["training"] = {"distribution": "mirrored" if kind == "mirrored" else "auto"}
    if kind == "mirrored":
        params["model"]["normalization"] = "batch"
    (tmp_path / "params.json").write_text(json.dumps(params))
    (tmp_path / "data.json").write_text(json.dumps({k: str(v) for k, v in tiny_data.items()}))
    env = {}
    if kind == "multi_worker":
        with socket.socket() as probe:
            probe.bind(("localhost", 0))
            port = probe.getsockname()[1]
        cluster = {
            "cluster": {"worker": [f"localhost:{port}"]},
            "task": {"type": "worker", "index": 0},
        }
        env["TF_CONFIG"] = json.dumps(cluster)
    result = _run(
        (TWO_CPUS if kind == "mirrored" else "")
        + f"""
import json
from pathlib import Path
from stages import finetune, pretrain
from voxelflow.params import parse_params

params = parse_params(json.loads(Path({str(tmp_path / "params.json")!r}).read_text()))
paths = json.loads(Path({str(tmp_path / "data.json")!r}).read_text())
data = {{key: Path(value) for key, value in paths.items()}}
out = Path({str(tmp_path)!r})
summary = pretrain.run(data["preprocessed"], out / "pretrained", params)
if {kind == "mirrored"}:
    params.training.precision = "mixed_bfloat16"
bundle = finetune.run(out / "pretrained", data["augmented"], data["preprocessed"],
                      out / "classifier", params)
print(json.dumps({{"pretrain": summary["devices"], "finetune": bundle["devices"],
                  "loss": summary["final_loss"], "val": bundle["val_metrics"]}}))
""",
        env=env,
    )
    assert result["pretrain"]["distribution"] == result["finetune"]["distribution"] == kind
    replicas = 2 if kind == "mirrored" else 1
    assert result["pretrain"]["replicas"] == result["finetune"]["replicas"] == replicas
    assert np.isfinite(result["loss"]) and 0 <= result["val"]["accuracy"] <= 1
    assert (tmp_path / "classifier" / "model.keras").is_file()  # the chief wrote the bundle
    assert result["pretrain"]["precision"] == "float32"
    precision = "mixed_bfloat16" if kind == "mirrored" else "float32"
    assert result["finetune"]["precision"] == precision


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_jax_data_parallel_over_two_host_devices():
    result = _run(
        """
import json
import keras
import numpy as np
from voxelflow import models
from voxelflow.devices import training_devices
from voxelflow.params import TrainingParams

x = np.random.default_rng(0).normal(size=(8, 16, 16, 16, 1)).astype("float32")
y = keras.utils.to_categorical(np.arange(8) % 3, 3)
out = {}
for mode in ("single", "auto"):
    keras.utils.set_random_seed(1)
    with training_devices(TrainingParams(distribution=mode)) as placement:
        encoder = models.build_encoder((16, 16, 16, 1), "resnet", 4, [1, 1], "group")
        head = models.build_head(encoder.output_shape[1:], 3, 8, 0.0, "avg")
        model = models.build_classifier(encoder, head)
        model.compile(keras.optimizers.SGD(0.05), "categorical_crossentropy")
        loss = model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False).history["loss"]
    out[mode] = {**placement.describe(), "loss": loss[0]}
print(json.dumps(out))
""",
        env={"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
    )
    assert result["auto"]["backend"] == "jax"
    assert result["auto"]["distribution"] == "data_parallel" and result["auto"]["replicas"] == 2
    assert result["single"]["replicas"] == 1
    assert result["auto"]["loss"] == pytest.approx(result["single"]["loss"], rel=1e-4)
