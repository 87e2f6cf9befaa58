import keras
import numpy as np

from voxelflow import models
from voxelflow.optimizers import LayerwiseAdamW, block_rate_multipliers


def _step(multipliers: dict[str, float]) -> dict[str, np.ndarray]:
    """One step on two dense layers with the same gradient; each layer's change."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(1, name="top")(keras.layers.Dense(4, name="bottom")(inputs))
    model = keras.Model(inputs, outputs)
    before = {w.path: w.numpy().copy() for w in model.weights}
    model.compile(LayerwiseAdamW(0.01, multipliers=multipliers, weight_decay=0.0), "mse")
    model.train_on_batch(np.ones((2, 4), "float32"), np.zeros((2, 1), "float32"))
    return {w.path: w.numpy() - before[w.path] for w in model.weights}


def test_each_variable_steps_at_its_fraction_of_the_rate():
    plain = _step({})
    scaled = _step({"bottom/kernel": 0.5, "top/kernel": 0.0})
    assert np.allclose(scaled["bottom/kernel"], 0.5 * plain["bottom/kernel"], rtol=1e-4)
    assert np.all(scaled["top/kernel"] == 0)
    assert np.allclose(scaled["top/bias"], plain["top/bias"])


def test_config_round_trip():
    optimizer = LayerwiseAdamW(0.01, multipliers={"a/kernel": 0.25})
    restored = LayerwiseAdamW.from_config(optimizer.get_config())
    assert restored.multipliers == {"a/kernel": 0.25}


def test_block_rate_multipliers_decay_away_from_the_head():
    encoder = models.build_encoder((16, 16, 16, 1), "resnet", 4, [1, 1], "none")
    multipliers = block_rate_multipliers(encoder, 0.5)
    assert multipliers["stage2_block1_conv1/kernel"] == 0.5
    assert multipliers["stage1_block1_conv2/bias"] == 0.25
    assert multipliers["stem_conv/kernel"] == 0.125
    assert block_rate_multipliers(encoder, 1.0) == {}
