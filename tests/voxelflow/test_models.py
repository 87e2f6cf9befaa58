import keras
import numpy as np
import pytest

from voxelflow import models

SHAPE = (16, 16, 16, 1)


def _classifier(architecture="resnet", normalization="batch", pooling="avgmax"):
    encoder = models.build_encoder(SHAPE, architecture, 4, [1, 1], normalization)
    head = models.build_head(encoder.output_shape[1:], 3, 8, 0.1, pooling)
    return encoder, models.build_classifier(encoder, head)


@pytest.mark.parametrize("architecture", ["resnet", "separable"])
def test_encoder_shapes_and_block_names(architecture):
    encoder = models.build_encoder(SHAPE, architecture, 4, [1, 2, 1])
    assert encoder.output_shape == (None, 4, 4, 4, 16)
    assert models.encoder_blocks(encoder) == [
        "stem",
        "stage1_block1",
        "stage2_block1",
        "stage2_block2",
        "stage3_block1",
    ]
    assert all(layer.name for layer in encoder.layers)


def test_separable_uses_2plus1d_pairs_with_fewer_weights():
    resnet = models.build_encoder(SHAPE, "resnet", 8, [1, 1], "none")
    separable = models.build_encoder(SHAPE, "separable", 8, [1, 1], "none")
    names = [layer.name for layer in separable.layers]
    assert "stage1_block1_conv1_spatial" in names and "stage1_block1_conv1_axial" in names
    spatial = separable.get_layer("stage1_block1_conv1_spatial")
    assert tuple(spatial.kernel_size) == (3, 3, 1)
    assert tuple(separable.get_layer("stage1_block1_conv1_axial").kernel_size) == (1, 1, 3)
    assert models.count_parameters(separable)["total"] <= models.count_parameters(resnet)["total"]


def test_separable_width_matches_full_convolution():
    width = models.separable_width(16, 16)
    assert 9 * 16 * width + 3 * width * 16 <= 27 * 16 * 16


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="'vgg'"):
        models.build_encoder(SHAPE, "vgg")
    with pytest.raises(ValueError, match="divisible by 4"):
        models.build_encoder((18, 16, 16, 1), "resnet", 4, [1, 1, 1])
    with pytest.raises(ValueError, match="num_classes"):
        models.build_head((4, 4, 4, 8), 1)


def test_freeze_first_blocks():
    encoder, classifier = _classifier()
    frozen = models.freeze_blocks(encoder, 2)
    assert frozen == ["stem", "stage1_block1"]
    assert not encoder.get_layer("stem_conv").trainable
    assert not encoder.get_layer("stage1_block1_conv1").trainable
    assert encoder.get_layer("stage2_block1_conv1").trainable
    with pytest.raises(ValueError, match="cannot freeze 9 blocks"):
        models.freeze_blocks(encoder, 9)


def test_frozen_weights_do_not_change_when_training():
    encoder, classifier = _classifier()
    models.freeze_blocks(encoder, 1)
    before = encoder.get_layer("stem_conv").get_weights()[0].copy()
    trainable_before = encoder.get_layer("stage2_block1_conv1").get_weights()[0].copy()
    classifier.compile("adam", "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(4, *SHAPE)).astype("float32")
    classifier.fit(x, np.array([0, 1, 2, 0]), epochs=1, verbose=0)
    assert np.array_equal(before, encoder.get_layer("stem_conv").get_weights()[0])
    assert not np.array_equal(
        trainable_before, encoder.get_layer("stage2_block1_conv1").get_weights()[0]
    )


@pytest.mark.parametrize("architecture", ["resnet", "separable"])
def test_save_load_round_trip_safe_mode(tmp_path, architecture):
    _, classifier = _classifier(architecture)
    x = np.random.default_rng(1).normal(size=(2, *SHAPE)).astype("float32")
    expected = classifier.predict(x, verbose=0)
    path = tmp_path / "model.keras"
    classifier.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert np.allclose(loaded.predict(x, verbose=0), expected, atol=1e-5)
    assert loaded.get_layer("encoder").get_layer("stem_conv") is not None


def test_custom_pooling_concatenates_avg_and_max():
    layer = models.GlobalAvgMaxPooling3D()
    x = np.arange(16, dtype="float32").reshape(1, 2, 2, 2, 2)
    out = keras.ops.convert_to_numpy(layer(x))
    assert np.allclose(out, [[7.0, 8.0, 14.0, 15.0]])
    assert layer.compute_output_shape((None, 2, 2, 2, 2)) == (None, 4)


def test_autoencoder_restores_input_shape():
    encoder = models.build_encoder(SHAPE, "resnet", 4, [1, 1, 1])
    decoder = models.build_decoder(encoder.output_shape[1:], 3, 4)
    autoencoder = models.build_autoencoder(encoder, decoder)
    assert autoencoder.output_shape == (None, *SHAPE)
