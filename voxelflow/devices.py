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
- multi-worker: every worker runs the same stage; only the chief writes the outputs
  (:meth:`Placement.output_dir`). Tested here with a one-worker cluster, not across
  machines;
- XLA: ``jit_compile`` for ``Model.compile`` (``"auto"`` lets Keras decide; it stays off
  while TensorFlow's ops are deterministic).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

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

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the outputs: always, except on the workers of a
        multi-worker cluster other than the chief (or worker 0 where there is no chief)."""
        resolver = getattr(self.strategy, "cluster_resolver", None)
        if self.kind != "multi_worker" or resolver is None:
            return True
        cluster = resolver.cluster_spec().as_dict()
        if "chief" in cluster:
            return resolver.task_type == "chief"
        return resolver.task_type == "worker" and resolver.task_id == 0

    def output_dir(self, out_dir: str | Path) -> Path:
        """``out_dir`` on the chief; a throwaway folder on the other workers, which must save
        too (saving a distributed model is a collective operation) but not over the chief."""
        if self.is_chief:
            return Path(out_dir)
        return Path(tempfile.mkdtemp(prefix=f"voxelflow-worker-{Path(out_dir).name}-"))

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

    if mode != "single" and os.environ.get("TF_CONFIG"):
        # first: the strategy must exist before TensorFlow's runtime starts
        text = os.environ["TF_CONFIG"]
        try:
            cluster = json.loads(text)["cluster"]
            assert isinstance(cluster, dict)
        except (ValueError, KeyError, TypeError, AssertionError):
            raise ValueError(
                f"TF_CONFIG is not a valid cluster description: {text!r}; expected JSON like "
                '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
                '"task": {"type": "worker", "index": 0}}'
            ) from None
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        workers = sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))
        log.info("multi-worker training over %d workers", workers)
        return "multi_worker", strategy, [f"{workers} workers"]
    gpus = tf.config.list_logical_devices("GPU")
    names = [device.name for device in gpus or tf.config.list_logical_devices("CPU")]
    if mode == "single":
        return "single", tf.distribute.get_strategy(), names[:1]
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
