"""The hardware a training stage runs on: precision policy, distribution, XLA.

One helper, :func:`training_devices`, used by every training stage around building,
compiling and fitting its models::

    with training_devices(params.training) as placement:
        model = ...build...
        model.compile(..., jit_compile=placement.jit_compile)
        model.fit(...)

- precision: the Keras dtype policy (``mixed_float16`` / ``mixed_bfloat16`` compute in half
  precision and keep float32 weights; the model module's output layers stay float32, and
  Keras wraps the optimiser in loss scaling under ``mixed_float16``);
- distribution, TensorFlow backend: ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG``
  describes a cluster, ``MirroredStrategy`` when more than one GPU (or more than one logical
  CPU device) is visible, else the default one-device strategy; JAX backend: Keras
  ``DataParallel`` over the visible devices when there are several. The batch size in params
  is the global batch, split over the replicas;
- XLA: ``jit_compile`` for ``Model.compile`` (``"auto"`` lets Keras decide; it stays off
  while TensorFlow's ops are deterministic).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import keras

from voxelflow.params import TrainingParams

log = logging.getLogger("voxelflow.devices")


@dataclass
class Placement:
    """Where and how a model trains; ``strategy`` is the backend's distribution object."""

    kind: str
    replicas: int
    devices: list[str]
    precision: str
    jit_compile: bool | str
    strategy: object | None = field(default=None, repr=False)

    def describe(self) -> dict:
        """JSON-ready, for the stage's report."""
        return {
            "backend": keras.backend.backend(),
            "distribution": self.kind,
            "replicas": self.replicas,
            "devices": self.devices,
            "precision": self.precision,
            "jit_compile": self.jit_compile,
        }


def _tensorflow_strategy(mode: str):
    import tensorflow as tf

    if mode == "single":
        strategy = tf.distribute.get_strategy()
        return "single", strategy, [tf.config.list_logical_devices()[0].name]
    if os.environ.get("TF_CONFIG"):
        try:
            cluster = json.loads(os.environ["TF_CONFIG"])["cluster"]
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"TF_CONFIG is not a valid cluster description: {error}") from None
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        workers = sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))
        log.info("multi-worker training over %d workers", workers)
        return "multi_worker", strategy, [f"{workers} workers"]
    gpus = tf.config.list_logical_devices("GPU")
    names = [device.name for device in gpus or tf.config.list_logical_devices("CPU")]
    if mode == "mirrored" or len(names) > 1:
        # NCCL all-reduce on GPUs; on CPU devices, reduction on one device (no collective ops,
        # whose order can differ between CPU replicas). Mirroring over logical CPU devices is
        # for tests and emulation: TensorFlow 2.21's oneDNN graph rewrites fed a fused
        # convolution the wrong input there, so run it with TF_ENABLE_ONEDNN_OPTS=0.
        reduce = None if gpus else tf.distribute.ReductionToOneDevice()
        if not gpus and os.environ.get("TF_ENABLE_ONEDNN_OPTS") != "0":
            log.warning("mirroring over CPU devices with oneDNN on: set TF_ENABLE_ONEDNN_OPTS=0")
        return "mirrored", tf.distribute.MirroredStrategy(names, cross_device_ops=reduce), names
    return "single", tf.distribute.get_strategy(), names


def _jax_distribution(mode: str):
    import jax

    devices = jax.devices()
    names = [str(device) for device in devices]
    if mode == "single" or (mode == "auto" and len(devices) == 1):
        return "single", None, names[:1]
    return "data_parallel", keras.distribution.DataParallel(devices=devices), names


@contextlib.contextmanager
def training_devices(training: TrainingParams) -> Iterator[Placement]:
    """Sets the precision policy and enters the distribution scope; both undone on exit.

    Build, compile and fit models inside the ``with`` block.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        kind, strategy, devices = _tensorflow_strategy(training.distribution)
    elif backend == "jax":
        kind, strategy, devices = _jax_distribution(training.distribution)
    else:
        if training.distribution == "mirrored":
            raise ValueError(
                f"training.distribution: mirrored needs TensorFlow or JAX, not {backend}"
            )
        kind, strategy, devices = "single", None, ["default"]
    replicas = getattr(strategy, "num_replicas_in_sync", None) or (
        len(devices) if kind == "data_parallel" else 1
    )
    placement = Placement(
        kind, replicas, devices, training.precision, training.jit_compile, strategy
    )
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(training.precision)
    log.info("training on %s", placement.describe())
    try:
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            yield placement
    finally:
        keras.config.set_dtype_policy(previous)
