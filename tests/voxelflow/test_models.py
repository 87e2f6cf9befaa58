import keras
import numpy as np
import pytest

from voxelflow import models
from voxelflow.model_summary import summarize

SHAPE = (16, 16, 16, 1)
NON_CUBIC = (24, 32, 16, 1)
ARCHITECTURES = ["plain", "resnet", "separable"]


def _classifier(architecture="resnet", normalization="batch", pooling="avgmax", shape=SHAPE):
    encoder = models.build_encoder(shape, architecture, 4, [1, 1], normalization)
    head = models.build_head(encoder.output_shape[1:], 3, 8, 0.1, pooling)
    return encoder, models.build_classifier(encoder, head)


def _batch(shape=SHAPE, size=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(size, *shape)).astype("float32")
    y = keras.utils.to_categorical(np.arange(size) % 3, 3)
    return x, y


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize(
    ("shape", "blocks", "stem_stride", "expected"),
    [
        (SHAPE, [1, 2, 1], 1, (4, 4, 4, 16)),
        (NON_CUBIC, [1, 1, 1], 1, (6, 8, 4, 16)),
        (NON_CUBIC, [1, 1], 2, (6, 8, 4, 8)),
    ],
)
def test_encoder_output_shapes(architecture, shape, blocks, stem_stride, expected):
    encoder = models.build_encoder(shape, architecture, 4, blocks, stem_stride=stem_stride)
    assert encoder.output_shape == (None, *expected)
    assert all(layer.name for layer in encoder.layers)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_classifier_and_autoencoder_shapes_on_non_cubic_input(architecture):
    encoder, classifier = _classifier(architecture, shape=NON_CUBIC)
    assert classifier.output_shape == (None, 3)
    for skips in (False, True):
        decoder = models.build_decoder(encoder, skips=skips)
        assert models.build_autoencoder(encoder, decoder).output_shape == (None, *NON_CUBIC)


def test_block_names_are_the_same_for_every_architecture():
    expected = ["stem", "stage1_block1", "stage2_block1", "stage2_block2", "stage3_block1"]
    for architecture in ARCHITECTURES:
        encoder = models.build_encoder(SHAPE, architecture, 4, [1, 2, 1])
        assert models.encoder_blocks(encoder) == expected
    assert models.block_names([1, 2, 1]) == expected


def test_layouts_by_name():
    encoder = models.build_encoder((16, 16, 16, 1), "resnet", 2, "resnet18")
    assert len(models.encoder_blocks(encoder)) == 1 + 8
    assert encoder.output_shape == (None, 2, 2, 2, 16)
    with pytest.raises(ValueError, match="unknown layout 'resnet50'"):
        models.build_encoder(SHAPE, "resnet", 2, "resnet50")


# Hand-computed for width 2, blocks [1, 1], no normalisation (so every convolution has a
# bias), 8^3 input of one channel; the head: average pooling, no hidden layer, 3 classes.
# stem: 3x3x3, 1 -> 2 channels: 27*1*2 + 2 = 56 weights, 8^3 * 27*1*2 = 27648 MACs.
HAND = {
    # stage1: 2 x (3^3, 2 -> 2): 2 x (108 + 2); stage2 (at 4^3 after max pooling):
    # 3^3, 2 -> 4 (216 + 4) and 3^3, 4 -> 4 (432 + 4)
    "plain": {
        "parameters": 56 + 2 * 110 + 220 + 436,
        "macs": 27648 + 2 * 512 * 108 + 64 * 216 + 64 * 432,
        "field": 16,  # 3, +2, +2 (7), pool 2x2 (8, jump 2), +4, +4
    },
    # as plain, with a strided first convolution in stage2 and a 1x1x1 projection
    # shortcut 2 -> 4 (8 + 4 weights, 4^3 * 8 MACs)
    "resnet": {
        "parameters": 56 + 2 * 110 + 12 + 220 + 436,
        "macs": 27648 + 2 * 512 * 108 + 64 * 8 + 64 * 216 + 64 * 432,
        "field": 13,  # 3, +2, +2 (7), stride 2 (+2 = 9, jump 2), +4
    },
    # (2+1)D pairs, 3x3x1 (in -> M) then 1x1x3 (M -> out), M from separable_width:
    # stage1 2 -> 2: M = 4: (18*4 + 4) + (12*2 + 2) = 102 weights, 8^3 * (72 + 24) MACs;
    # stage2 conv1 2 -> 4, stride 2: M = 4: (72 + 4) + (48 + 4) = 128 weights,
    #   4*4*8 voxels * 72 + 4^3 * 48 MACs; conv2 4 -> 4: M = 8: (288 + 8) + (96 + 4) = 396,
    #   4^3 * (288 + 96) MACs
    "separable": {
        "parameters": 56 + 2 * 102 + 12 + 128 + 396,
        "macs": 27648 + 2 * 512 * 96 + 64 * 8 + (128 * 72 + 64 * 48) + 64 * 384,
        "field": 13,
    },
}


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_parameters_macs_and_receptive_field_match_hand_counts(architecture):
    encoder = models.build_encoder((8, 8, 8, 1), architecture, 2, [1, 1], "none")
    head = models.build_head(encoder.output_shape[1:], 3, 0, 0.0, "avg")
    summary = summarize(models.build_classifier(encoder, head), spacing_mm=(1.0, 1.0, 2.0))
    expected = HAND[architecture]
    head_weights = 4 * 3 + 3
    assert summary["sub_models"]["encoder"]["parameters"]["total"] == expected["parameters"]
    assert summary["parameters"]["total"] == expected["parameters"] + head_weights
    assert sum(int(np.prod(w.shape)) for w in encoder.weights) == expected["parameters"]
    assert summary["sub_models"]["encoder"]["macs_per_volume"] == expected["macs"]
    assert summary["macs_per_volume"] == expected["macs"] + 4 * 3
    field = summary["sub_models"]["encoder"]["receptive_field"][0]
    assert field["voxels"] == [expected["field"]] * 3
    assert field["mm"] == [expected["field"], expected["field"], 2.0 * expected["field"]]
    assert summary["receptive_field"][0]["voxels"] == "global"


def test_summary_splits_trainable_frozen_and_statistics():
    encoder, classifier = _classifier("resnet", "batch")
    models.freeze_blocks(encoder, 1)
    counts = summarize(classifier)["parameters"]
    # the frozen stem: 27*4 weights (no bias before batch norm), its norm's 4 gamma + 4 beta
    # and 4 + 4 moving statistics
    assert counts["frozen"] == 27 * 4 + 8 + 8
    batch_norms = [layer for layer in encoder.layers if "norm" in layer.name]
    trainable_norm_channels = sum(layer.gamma.shape[0] for layer in batch_norms if layer.trainable)
    assert counts["statistics"] == 2 * trainable_norm_channels
    assert counts["total"] == sum(int(np.prod(w.shape)) for w in classifier.weights)


@pytest.mark.parametrize("shape", [SHAPE, NON_CUBIC])
def test_separable_blocks_have_fewer_parameters_and_macs(shape):
    summaries = {}
    for architecture in ("resnet", "separable"):
        encoder = models.build_encoder(shape, architecture, 8, [1, 1, 1], "batch")
        summaries[architecture] = summarize(encoder)
    full, separable = summaries["resnet"], summaries["separable"]
    for block in ("stage1_block1", "stage2_block1", "stage3_block1"):
        assert separable["macs_by_block"][block] < full["macs_by_block"][block]
    assert separable["parameters"]["total"] < full["parameters"]["total"]
    assert separable["macs_per_volume"] < full["macs_per_volume"]
    assert separable["receptive_field"] == full["receptive_field"]


def test_separable_uses_2plus1d_pairs():
    separable = models.build_encoder(SHAPE, "separable", 8, [1, 1], "none")
    spatial = separable.get_layer("stage2_block1_conv1_spatial")
    axial = separable.get_layer("stage2_block1_conv1_axial")
    assert tuple(spatial.kernel_size) == (3, 3, 1) and tuple(spatial.strides) == (2, 2, 1)
    assert tuple(axial.kernel_size) == (1, 1, 3) and tuple(axial.strides) == (1, 1, 2)


@pytest.mark.parametrize(("channels_in", "channels_out", "strides"), [(16, 16, 1), (8, 16, 2)])
def test_separable_width_undercuts_the_full_convolution(channels_in, channels_out, strides):
    width = models.separable_width(channels_in, channels_out, 3, strides)
    full = 27 * channels_in * channels_out
    assert 9 * channels_in * width + width + 3 * width * channels_out <= full
    # MACs per output voxel of the full convolution: the spatial half runs at s x the voxels
    assert strides * 9 * channels_in * width + 3 * width * channels_out <= full
    assert width >= channels_out  # not starved: at least the output width here


def test_plain_encoder_has_no_shortcuts_and_pools():
    plain = models.build_encoder(SHAPE, "plain", 4, [1, 1])
    names = [layer.name for layer in plain.layers]
    assert not any(name.endswith(("_add", "_proj")) for name in names)
    assert isinstance(plain.get_layer("stage2_block1_pool"), keras.layers.MaxPooling3D)


@pytest.mark.parametrize("normalization", ["batch", "group", "instance"])
def test_normalization_layers(normalization):
    encoder = models.build_encoder(SHAPE, "resnet", 12, [1, 1], normalization)
    norm = encoder.get_layer("stage2_block1_conv1_norm")
    if normalization == "batch":
        assert isinstance(norm, keras.layers.BatchNormalization)
        return
    assert isinstance(norm, keras.layers.GroupNormalization)
    assert norm.groups == {"group": 8, "instance": 24}[normalization]
    assert encoder.get_layer("stem_norm").groups == {"group": 4, "instance": 12}[normalization]


def test_group_norm_keeps_its_groups_in_separable_pairs():
    encoder = models.build_encoder(SHAPE, "separable", 16, [1, 1], "group")
    for layer in encoder.layers:
        if layer.name.endswith("_spatial_norm"):
            assert layer.groups == 8, (layer.name, layer.groups)


def test_dropout_layers_and_multi_layer_head():
    encoder = models.build_encoder(SHAPE, "plain", 4, [1, 1], dropout=0.2)
    assert encoder.get_layer("stage2_block1_dropout").rate == 0.2
    head = models.build_head(encoder.output_shape[1:], 4, [16, 8], 0.3, "avg")
    assert [layer.units for layer in head.layers if isinstance(layer, keras.layers.Dense)] == [
        16,
        8,
        4,
    ]


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="'vgg'"):
        models.build_encoder(SHAPE, "vgg")
    with pytest.raises(ValueError, match="'layer'"):
        models.build_encoder(SHAPE, "resnet", normalization="layer")
    with pytest.raises(ValueError, match="divisible by 4"):
        models.build_encoder((18, 16, 16, 1), "resnet", 4, [1, 1, 1])
    with pytest.raises(ValueError, match="divisible by 8 .* stem stride 2"):
        models.build_encoder((16, 16, 20, 1), "resnet", 4, [1, 1, 1], stem_stride=2)
    with pytest.raises(ValueError, match="num_classes"):
        models.build_head((4, 4, 4, 8), 1)


def test_freeze_and_unfreeze_blocks_by_count_and_name():
    encoder, _ = _classifier()
    assert models.freeze_blocks(encoder, 2) == ["stem", "stage1_block1"]
    assert not encoder.get_layer("stem_conv").trainable
    assert not encoder.get_layer("stage1_block1_conv1").trainable
    assert encoder.get_layer("stage2_block1_conv1").trainable
    assert models.freeze_blocks(encoder, ["stage2_block1"]) == ["stage2_block1"]
    assert encoder.get_layer("stem_conv").trainable
    assert not encoder.get_layer("stage2_block1_proj").trainable
    assert models.freeze_blocks(encoder, 0) == []
    assert all(layer.trainable for layer in encoder.layers)
    with pytest.raises(ValueError, match="cannot freeze 9 blocks"):
        models.freeze_blocks(encoder, 9)
    with pytest.raises(ValueError, match="unknown encoder blocks \\['stage7_block1'\\]"):
        models.freeze_blocks(encoder, ["stage7_block1"])


def test_frozen_weights_do_not_change_when_training():
    encoder, classifier = _classifier()
    models.freeze_blocks(encoder, 1)
    before = encoder.get_layer("stem_conv").get_weights()[0].copy()
    trainable_before = encoder.get_layer("stage2_block1_conv1").get_weights()[0].copy()
    classifier.compile("adam", "categorical_crossentropy")
    x, y = _batch()
    classifier.fit(x, y, epochs=1, verbose=0)
    assert np.array_equal(before, encoder.get_layer("stem_conv").get_weights()[0])
    assert not np.array_equal(
        trainable_before, encoder.get_layer("stage2_block1_conv1").get_weights()[0]
    )


@pytest.mark.parametrize(
    ("architecture", "normalization"),
    [("plain", "batch"), ("resnet", "instance"), ("separable", "group"), ("resnet", "none")],
)
def test_one_training_step_reduces_the_loss_on_a_fixed_batch(architecture, normalization):
    keras.utils.set_random_seed(3)
    encoder = models.build_encoder(SHAPE, architecture, 4, [1, 1], normalization)
    classifier = models.build_classifier(
        encoder, models.build_head(encoder.output_shape[1:], 3, 8, 0.0, "avgmax")
    )
    classifier.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    x, y = _batch(size=6)

    def loss() -> float:  # in training mode: batch norm normalises with this batch's statistics
        predicted = classifier(x, training=True)
        return float(keras.ops.mean(keras.losses.categorical_crossentropy(y, predicted)))

    before = loss()
    classifier.train_on_batch(x, y)
    assert loss() < before


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_save_load_round_trip_safe_mode(tmp_path, architecture):
    encoder = models.build_encoder(NON_CUBIC, architecture, 4, [1, 1], "instance", dropout=0.1)
    head = models.build_head(encoder.output_shape[1:], 3, [8, 4], 0.1, "avgmax")
    classifier = models.build_classifier(encoder, head)
    x, _ = _batch(NON_CUBIC, size=2, seed=1)
    expected = classifier.predict(x, verbose=0)
    path = tmp_path / "model.keras"
    classifier.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert np.array_equal(loaded.predict(x, verbose=0), expected)
    assert loaded.get_layer("encoder").get_layer("stem_conv") is not None
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in loaded.layers)


def test_custom_pooling_concatenates_avg_and_max():
    layer = models.GlobalAvgMaxPooling3D()
    x = np.arange(16, dtype="float32").reshape(1, 2, 2, 2, 2)
    out = keras.ops.convert_to_numpy(layer(x))
    assert np.allclose(out, [[7.0, 8.0, 14.0, 15.0]])
    assert layer.compute_output_shape((None, 2, 2, 2, 2)) == (None, 4)
    assert models.GlobalAvgMaxPooling3D.from_config(layer.get_config()).name == layer.name


@pytest.mark.parametrize("stem_stride", [1, 2])
def test_decoder_with_skips_reads_every_resolution_and_trains_the_encoder(stem_stride):
    encoder = models.build_encoder(SHAPE, "resnet", 4, [1, 1, 1], "none", stem_stride=stem_stride)
    decoder = models.build_decoder(encoder, skips=True, normalization="none")
    autoencoder = models.build_autoencoder(encoder, decoder)
    assert autoencoder.output_shape == (None, *SHAPE)
    assert len(decoder.inputs) == 4  # stage3, stage2, stage1, stem
    assert autoencoder.get_layer("encoder_pyramid").get_layer("stem_conv") is encoder.get_layer(
        "stem_conv"
    )
    before = encoder.get_layer("stage3_block1_conv2").get_weights()[0].copy()
    autoencoder.compile("adam", "mse")
    x, _ = _batch()
    autoencoder.fit(x, x, epochs=1, verbose=0)
    assert not np.array_equal(before, encoder.get_layer("stage3_block1_conv2").get_weights()[0])
    names = [layer.name for layer in decoder.layers]
    assert "dec1_skip" in names and ("dec0_up" in names) == (stem_stride == 2)


@pytest.mark.parametrize(("skips", "field"), [(False, 15), (True, 17)])
def test_autoencoder_receptive_fields_are_in_input_voxels(skips, field):
    # resnet [1, 1] at 16^3: the encoder sees 13 voxels (jump 2); the decoder upsamples
    # (jump 1) and convolves: 13 + 2 = 15; with skips it also convolves after merging the
    # stem's features: 15 + 2 = 17
    encoder = models.build_encoder(SHAPE, "resnet", 4, [1, 1], "none")
    autoencoder = models.build_autoencoder(encoder, models.build_decoder(encoder, skips=skips))
    summary = summarize(autoencoder, spacing_mm=(2.0, 2.0, 2.0))
    assert summary["receptive_field"][0] == {"voxels": [field] * 3, "mm": [2.0 * field] * 3}
    subs = summary["sub_models"]
    assert subs["decoder"]["receptive_field"][0]["voxels"] == [field] * 3
    encoder_summary = subs["encoder_pyramid" if skips else "encoder"]
    assert encoder_summary["receptive_field"][0]["voxels"] == [13] * 3


def test_set_precision_recasts_a_loaded_model_but_not_its_outputs(tmp_path):
    _, classifier = _classifier("separable", "batch")
    classifier.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    models.set_precision(loaded, "mixed_bfloat16")
    encoder = loaded.get_layer("encoder")
    assert encoder.get_layer("stage1_block1_conv1_spatial").compute_dtype == "bfloat16"
    assert loaded.get_layer("head").get_layer("head_logits").compute_dtype == "float32"
    x, _ = _batch(size=2)
    assert keras.ops.convert_to_numpy(loaded(x)).dtype == np.float32
    models.set_precision(loaded, "float32")
    assert np.allclose(loaded.predict(x, verbose=0), classifier.predict(x, verbose=0), atol=1e-6)


def test_decoder_without_skips_reads_only_the_deepest_features():
    encoder = models.build_encoder(SHAPE, "separable", 4, [1, 1, 1])
    decoder = models.build_decoder(encoder, skips=False)
    assert len(decoder.inputs) == 1
    assert tuple(decoder.inputs[0].shape[1:]) == encoder.output_shape[1:]
    assert not any("skip" in layer.name for layer in decoder.layers)
    assert decoder.get_layer("dec_out").dtype_policy.name == "float32"


JAX_SCRIPT = """
import json, sys
import keras
import numpy as np
from voxelflow import models

assert keras.backend.backend() == "jax"
x = np.random.default_rng(0).normal(size=(4, 24, 32, 16, 1)).astype("float32")
y = keras.utils.to_categorical(np.arange(4) % 3, 3)
report = {}
for architecture in ("plain", "resnet", "separable"):
    keras.utils.set_random_seed(0)
    encoder = models.build_encoder((24, 32, 16, 1), architecture, 4, [1, 1], "instance")
    head = models.build_head(encoder.output_shape[1:], 3, 8, 0.0, "avgmax")
    model = models.build_classifier(encoder, head)
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    loss = lambda: float(keras.ops.mean(keras.losses.categorical_crossentropy(y, model(x))))
    before = loss()
    model.train_on_batch(x, y)
    after = loss()
    path = f"{sys.argv[1]}/{architecture}_jax.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    same = bool(np.array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0)))
    decoder = models.build_decoder(encoder, skips=True)
    restored = models.build_autoencoder(encoder, decoder)(x)
    report[architecture] = {"before": before, "after": after, "round_trip": same,
                            "autoencoder": list(restored.shape)}
tf_model = keras.saving.load_model(f"{sys.argv[1]}/tensorflow.keras", safe_mode=True)
np.save(f"{sys.argv[1]}/jax_predictions.npy", tf_model.predict(x, verbose=0))
print(json.dumps(report))
"""


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("jax") is None, reason="jax is not installed"
)
def test_builds_trains_and_round_trips_under_the_jax_backend(tmp_path):
    """Custom layers use keras.ops only: the module works on JAX, and a model saved under
    TensorFlow loads there and predicts the same."""
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    encoder = models.build_encoder(NON_CUBIC, "separable", 4, [1, 1], "batch")
    classifier = models.build_classifier(
        encoder, models.build_head(encoder.output_shape[1:], 3, 8, 0.2, "avgmax")
    )
    classifier.save(tmp_path / "tensorflow.keras")
    x = np.random.default_rng(0).normal(size=(4, *NON_CUBIC)).astype("float32")
    result = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for architecture in ARCHITECTURES:
        assert report[architecture]["after"] < report[architecture]["before"]
        assert report[architecture]["round_trip"]
        assert report[architecture]["autoencoder"] == [4, *NON_CUBIC]
    jax_predictions = np.load(tmp_path / "jax_predictions.npy")
    assert np.allclose(jax_predictions, classifier.predict(x, verbose=0), atol=1e-5)
