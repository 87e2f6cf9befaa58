import json
import re
import zipfile

import keras
import numpy as np

from voxelflow import models
from voxelflow.keras_files import make_reproducible


def _saved(path, seed=3):
    keras.utils.set_random_seed(seed)
    encoder = models.build_encoder((16, 16, 16, 1), "resnet", 4, [1, 1], "batch")
    head = models.build_head(encoder.output_shape[1:], 3, 8, 0.3, "avgmax")
    model = models.build_classifier(encoder, head)
    model.save(path)
    return model


def _as_if_saved_elsewhere(source, target):
    """The file another process would write later: other object ids, another save time."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as copy:
        for info in archive.infolist():
            data = archive.read(info).decode("latin-1")
            if info.filename == "config.json":
                data = re.sub(
                    r'"shared_object_id": (\d+)',
                    lambda match: f'"shared_object_id": {int(match.group(1)) + 4242}',
                    data,
                )
            if info.filename == "metadata.json":
                data = data.replace(json.loads(data)["date_saved"], "2031-01-01@00:00:00")
            copy.writestr(
                zipfile.ZipInfo(info.filename, date_time=(2031, 1, 1, 0, 0, 0)),
                data.encode("latin-1"),
            )


def test_the_same_model_saved_twice_gives_the_same_bytes(tmp_path):
    first, second = tmp_path / "a.keras", tmp_path / "b.keras"
    model = _saved(first)
    _as_if_saved_elsewhere(first, second)
    assert first.read_bytes() != second.read_bytes()
    make_reproducible(first)
    make_reproducible(second)
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as archive:
        assert "date_saved" not in json.loads(archive.read("metadata.json"))
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        ids = re.findall(r'"shared_object_id": (\d+)', archive.read("config.json").decode())
    assert ids and {int(value) for value in ids} == set(range(1, len(set(ids)) + 1))
    loaded = keras.saving.load_model(first, safe_mode=True)
    batch = np.random.default_rng(0).normal(size=(2, 16, 16, 16, 1)).astype("float32")
    assert np.array_equal(loaded.predict(batch, verbose=0), model.predict(batch, verbose=0))
    for mine, theirs in zip(loaded.weights, model.weights, strict=True):
        assert np.array_equal(np.asarray(mine), np.asarray(theirs))
