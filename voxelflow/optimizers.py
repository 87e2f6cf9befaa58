"""Discriminative learning rates: each encoder block trains at its own fraction of the rate.

Fine-tuning's phase 2 unfreezes pretrained blocks; those nearest the input hold the most
general features and should move least. :class:`LayerwiseAdamW` scales the learning rate of
every variable by a multiplier (1 where none is given); :func:`block_rate_multipliers`
gives the head 1 and each encoder block ``decay`` times the rate of the block after it
("layer-wise learning-rate decay", as in ULMFiT and BEiT fine-tuning).
"""

from __future__ import annotations

import keras

from voxelflow.models import PACKAGE, block_of, encoder_blocks, leaf_layers


@keras.saving.register_keras_serializable(package=PACKAGE)
class LayerwiseAdamW(keras.optimizers.AdamW):
    """AdamW whose step for a variable is scaled by ``multipliers[variable.path]``.

    Adam's step is invariant to the gradient's scale, so the rate itself is scaled (not the
    gradient). Decoupled weight decay stays at the base rate.
    """

    def __init__(self, learning_rate=0.001, multipliers: dict[str, float] | None = None, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.multipliers = {str(key): float(value) for key, value in (multipliers or {}).items()}

    def build(self, variables):
        super().build(variables)
        # by index: under TensorFlow update_step sees the backend's variable, not Keras's
        self._scales = [self.multipliers.get(variable.path, 1.0) for variable in variables]

    def update_step(self, gradient, variable, learning_rate):
        scale = self._scales[self._get_variable_index(variable)]
        if scale != 1.0:
            learning_rate = learning_rate * scale
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "multipliers": dict(self.multipliers)}


def block_rate_multipliers(encoder: keras.Model, decay: float) -> dict[str, float]:
    """Rate multipliers of the encoder's trainable variables: ``decay ** d`` for a
    block ``d`` blocks from the head (the last block: ``decay``), 1 for everything else."""
    if decay == 1.0:
        return {}
    blocks = encoder_blocks(encoder)
    distance = {block: len(blocks) - index for index, block in enumerate(blocks)}
    multipliers = {}
    for layer in leaf_layers(encoder):
        block = block_of(layer.name)
        if block in distance:
            for variable in layer.trainable_weights:
                multipliers[variable.path] = decay ** distance[block]
    return multipliers
