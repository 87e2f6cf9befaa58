"""Test-time augmentation and input discovery (prediction end to end: test_training_stages)."""

import keras
import numpy as np

from voxelflow.inference import predict_arrays, tta_variants
from voxelflow.predictor import find_inputs


def _mean_model(classes: int = 3) -> keras.Model:
    """Flip-invariant: global average pooling, then dense."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 8, 1))
    pooled = keras.layers.GlobalAveragePooling3D()(inputs)
    outputs = keras.layers.Dense(classes, activation="softmax")(keras.layers.Dense(4)(pooled))
    return keras.Model(inputs, outputs)


def _position_model(classes: int = 3) -> keras.Model:
    """Not flip-invariant: dense on the flattened volume."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 8, 1))
    outputs = keras.layers.Dense(classes, activation="softmax")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, outputs)


def _volumes(count: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(size=(8, 8, 8)).astype(np.float32) + i for i in range(count)]


def test_tta_with_flips_equals_the_plain_prediction_of_a_flip_invariant_model():
    volumes = _volumes()
    model = _mean_model()
    plain = predict_arrays(model, volumes.__getitem__, len(volumes), batch_size=2)
    flips = tta_variants(flip_axes=[0, 1, 2])
    assert [name for name, _ in flips] == ["identity", "flip0", "flip1", "flip2"]
    tta = predict_arrays(model, volumes.__getitem__, len(volumes), batch_size=2, variants=flips)
    assert plain.shape == (5, 3)
    assert np.allclose(tta, plain, atol=1e-6)
    # a model that sees positions: the flipped passes change the average
    position = _position_model()
    plain = predict_arrays(position, volumes.__getitem__, len(volumes), batch_size=2)
    tta = predict_arrays(position, volumes.__getitem__, len(volumes), 2, variants=flips)
    assert not np.allclose(tta, plain, atol=1e-4)
    assert np.allclose(tta.sum(axis=1), 1.0, atol=1e-5)


def test_tta_rotations_about_each_axis():
    variants = tta_variants(flip_axes=[0], rotation_degrees=[-5, 0, 5])
    assert len(variants) == 1 + 1 + 2 * 3  # identity, one flip, two angles x three axes
    volume = np.zeros((9, 9, 9), np.float32)
    volume[4, 4, :] = 1.0  # a rod along axis 2: rotating about axis 2 leaves it be
    rotated = dict(variants)["rotate2_+5"](volume)
    assert np.allclose(rotated, volume, atol=1e-2)  # interpolation rounding only
    assert not np.allclose(dict(variants)["rotate0_+5"](volume), volume, atol=0.1)


def test_batching_does_not_change_the_prediction():
    volumes = _volumes(7)
    model = _position_model()
    one = predict_arrays(model, volumes.__getitem__, 7, batch_size=1)
    three = predict_arrays(model, volumes.__getitem__, 7, batch_size=3)
    assert np.allclose(one, three, atol=1e-6)
    assert predict_arrays(model, volumes.__getitem__, 0).shape == (0, 3)


def test_find_inputs_files_folders_and_problems(tmp_path):
    (tmp_path / "scans" / "deep").mkdir(parents=True)
    for name in ("scans/b.nii.gz", "scans/deep/a.nii", "notes.txt", "scans/.hidden.nii"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    files, problems = find_inputs(
        [
            tmp_path / "scans",
            tmp_path / "scans" / "b.nii.gz",
            tmp_path / "notes.txt",
            tmp_path / "missing.nii",
            tmp_path / "empty",
        ]
    )
    assert [path.name for path in files] == ["b.nii.gz", "a.nii"]  # sorted, each once
    reasons = {problem["path"].split("/")[-1]: problem["reason"] for problem in problems}
    assert "not a volume file" in reasons["notes.txt"]
    assert reasons["missing.nii"] == "no such file or folder"
    assert "no NIfTI" in reasons["empty"]
