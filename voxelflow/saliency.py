"""Grad-CAM for the classifier: which parts of a volume drive a class's score.

Selvaraju et al. (2017): the encoder's last feature maps, each weighted by the mean gradient
of the class score over its voxels, summed, rectified, and resampled to the input grid.
The score is the log-probability of the class (the head ends in a softmax; its gradient
is the logit's minus the probability-weighted mean logit, i.e. evidence for this class
against the others). Gradients need the backend's autodiff: TensorFlow (tested) and JAX
(written, not yet tested).
"""

from __future__ import annotations

import keras
import numpy as np
from scipy import ndimage


def classifier_parts(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """The ``encoder`` and ``head`` sub-models of a classifier built by voxelflow.models."""
    try:
        return model.get_layer("encoder"), model.get_layer("head")
    except ValueError:
        raise ValueError(
            f"model {model.name!r} has no 'encoder' and 'head' sub-models; Grad-CAM needs a "
            "classifier built by voxelflow.models.build_classifier"
        ) from None


def _gradients(head: keras.Model, features: np.ndarray, class_index: int) -> np.ndarray:
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tensor = tf.convert_to_tensor(features)
        with tf.GradientTape() as tape:
            tape.watch(tensor)
            score = tf.math.log(head(tensor, training=False)[:, class_index] + 1e-12)
        return tape.gradient(score, tensor).numpy()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def score(values):
            return jnp.sum(jnp.log(head(values, training=False)[:, class_index] + 1e-12))

        return np.asarray(jax.grad(score)(jnp.asarray(features)))
    raise ValueError(f"Grad-CAM supports the tensorflow and jax backends, not {backend!r}")


def grad_cam(model: keras.Model, volume: np.ndarray, class_index: int) -> np.ndarray:
    """The Grad-CAM map of ``class_index`` for one preprocessed (D, H, W) volume: the same
    shape, in [0, 1] (all zeros when nothing speaks for the class)."""
    encoder, head = classifier_parts(model)
    batch = np.asarray(volume, dtype=np.float32)[None, ..., None]
    features = np.asarray(encoder(batch, training=False), dtype=np.float32)
    gradients = _gradients(head, features, class_index)
    weights = gradients.mean(axis=(1, 2, 3), keepdims=True)
    cam = np.maximum((features * weights).sum(axis=-1)[0], 0.0)
    if cam.shape != volume.shape:
        factors = np.asarray(volume.shape, dtype=float) / np.asarray(cam.shape)
        cam = np.maximum(ndimage.zoom(cam, factors, order=1, grid_mode=True, mode="nearest"), 0)
    peak = float(cam.max())
    return (cam / peak).astype(np.float32) if peak > 0 else np.zeros(volume.shape, np.float32)
