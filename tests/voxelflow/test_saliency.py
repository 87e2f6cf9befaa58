import keras
import numpy as np
import pytest

from voxelflow import models
from voxelflow.saliency import grad_cam


def _spot_detector() -> keras.Model:
    """encoder: a 1x1x1 convolution that copies the volume; head: global max pooling, then
    a class that grows with the brightest voxel."""
    inputs = keras.Input((8, 8, 8, 1))
    copy = keras.layers.Conv3D(1, 1, kernel_initializer="ones", bias_initializer="zeros")
    encoder = keras.Model(inputs, copy(inputs), name="encoder")
    features = keras.Input((8, 8, 8, 1))
    pooled = keras.layers.GlobalMaxPooling3D()(features)
    dense = keras.layers.Dense(2, activation="softmax")
    head = keras.Model(features, dense(pooled), name="head")
    dense.set_weights([np.array([[-1.0, 1.0]], "float32"), np.zeros(2, "float32")])
    return models.build_classifier(encoder, head)


def test_grad_cam_points_at_the_voxel_that_decides():
    volume = np.full((8, 8, 8), 0.1, np.float32)
    volume[2, 5, 6] = 2.0
    cam = grad_cam(_spot_detector(), volume, class_index=1)
    assert cam.shape == volume.shape and cam.max() == 1.0
    assert np.unravel_index(cam.argmax(), cam.shape) == (2, 5, 6)
    # one channel: the map is the feature map (the volume) scaled by its mean gradient
    assert np.allclose(cam, volume / 2.0, atol=1e-6)
    # class 0 falls as the spot brightens: nothing speaks for it
    assert not grad_cam(_spot_detector(), volume, class_index=0).any()


def test_grad_cam_of_a_voxelflow_classifier_is_resampled_to_the_input():
    encoder = models.build_encoder((16, 16, 16, 1), "resnet", 4, [1, 1], "none")
    model = models.build_classifier(encoder, models.build_head(encoder.output_shape[1:], 3, 8))
    volume = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    cam = grad_cam(model, volume, 2)
    assert cam.shape == (16, 16, 16) and cam.min() >= 0 and cam.max() <= 1


def test_grad_cam_needs_a_voxelflow_classifier():
    inputs = keras.Input((4, 4, 4, 1))
    plain = keras.Model(inputs, keras.layers.Flatten()(inputs))
    with pytest.raises(ValueError, match="encoder"):
        grad_cam(plain, np.zeros((4, 4, 4), np.float32), 0)
