"""The shared Keras model module: 3D encoders, a classification head, a restoration decoder.

Every training stage builds its networks here. The encoder is a stem followed by stages of
residual blocks (two 3x3x3 convolutions, a projection shortcut where the stride or width
changes); ``architecture="separable"`` replaces every 3x3x3 convolution with a (2+1)D pair, a
3x3x1 convolution across the first two axes then a 1x1x3 along the third, with the
intermediate width chosen so the pair has no more weights than the full convolution.

Encoder, head and decoder are separate named sub-models. Encoder layers are named
``f"{block}_{part}"`` with blocks in order ``stem``, ``stage1_block1``, ..., so fine-tuning
freezes "the first N blocks" by name (:func:`encoder_blocks`, :func:`freeze_blocks`).
Custom layers use only ``keras.ops`` and are registered for ``safe_mode=True`` loading.
"""

from __future__ import annotations

import keras
from keras import layers, ops

PACKAGE = "voxelflow"


@keras.saving.register_keras_serializable(package=PACKAGE)
class GlobalAvgMaxPooling3D(layers.Layer):
    """Global average and global max pooling, concatenated.

    The average sees diffuse changes (atrophy); the max keeps a small focal finding (a lesion)
    from being averaged away.
    """

    def call(self, inputs):
        return ops.concatenate(
            [ops.mean(inputs, axis=(1, 2, 3)), ops.max(inputs, axis=(1, 2, 3))], axis=-1
        )

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2 * input_shape[-1])


def _pooling(kind: str, name: str) -> layers.Layer:
    if kind == "avg":
        return layers.GlobalAveragePooling3D(name=name)
    if kind == "max":
        return layers.GlobalMaxPooling3D(name=name)
    if kind == "avgmax":
        return GlobalAvgMaxPooling3D(name=name)
    raise ValueError(f"head pooling must be 'avg', 'max' or 'avgmax', got {kind!r}")


def _normalization(kind: str, name: str, channels: int) -> layers.Layer | None:
    if kind == "batch":
        return layers.BatchNormalization(momentum=0.9, name=name)
    if kind == "group":
        return layers.GroupNormalization(groups=min(8, channels), name=name)
    if kind == "none":
        return None
    raise ValueError(f"normalization must be 'batch', 'group' or 'none', got {kind!r}")


def _norm_act(x, name: str, normalization: str, activation: str | None):
    norm = _normalization(normalization, f"{name}_norm", x.shape[-1])
    if norm is not None:
        x = norm(x)
    if activation is not None:
        x = layers.Activation(activation, name=f"{name}_act")(x)
    return x


def separable_width(in_channels: int, out_channels: int, kernel: int = 3) -> int:
    """Intermediate width of a (2+1)D pair with at most the weights of a k^3 convolution.

    The pair has k*k*in*M + M (bias) + k*M*out weights against k^3*in*out for the full
    convolution, so M = floor(k^3*in*out / (k*k*in + k*out + 1)), as in R(2+1)D.
    """
    full = kernel**3 * in_channels * out_channels
    return max(1, full // (kernel**2 * in_channels + kernel * out_channels + 1))


def conv3(
    x, filters: int, strides: int, name: str, architecture: str, normalization: str, activation: str
):
    """A 3x3x3 convolution, or its (2+1)D pair for ``architecture="separable"``."""
    use_bias = normalization == "none"
    if architecture == "resnet":
        return layers.Conv3D(
            filters, 3, strides=strides, padding="same", use_bias=use_bias, name=name
        )(x)
    if architecture != "separable":
        raise ValueError(f"architecture must be 'resnet' or 'separable', got {architecture!r}")
    middle = separable_width(x.shape[-1], filters)
    x = layers.Conv3D(
        middle,
        (3, 3, 1),
        strides=(strides, strides, 1),
        padding="same",
        use_bias=use_bias,
        name=f"{name}_spatial",
    )(x)
    x = _norm_act(x, f"{name}_spatial", normalization, activation)
    return layers.Conv3D(
        filters,
        (1, 1, 3),
        strides=(1, 1, strides),
        padding="same",
        use_bias=use_bias,
        name=f"{name}_axial",
    )(x)


def residual_block(
    x, filters: int, strides: int, name: str, architecture: str, normalization: str, activation: str
):
    """Two 3x3x3 convolutions with an identity or projection shortcut."""
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv3D(filters, 1, strides=strides, use_bias=False, name=f"{name}_proj")(
            x
        )
        shortcut = _norm_act(shortcut, f"{name}_proj", normalization, None)
    x = conv3(x, filters, strides, f"{name}_conv1", architecture, normalization, activation)
    x = _norm_act(x, f"{name}_conv1", normalization, activation)
    x = conv3(x, filters, 1, f"{name}_conv2", architecture, normalization, activation)
    x = _norm_act(x, f"{name}_conv2", normalization, None)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation(activation, name=f"{name}_out")(x)


def block_names(blocks_per_stage: list[int]) -> list[str]:
    """The encoder's blocks in order: ``stem`` then ``stage{s}_block{b}``."""
    names = ["stem"]
    for stage, blocks in enumerate(blocks_per_stage, start=1):
        names += [f"stage{stage}_block{block}" for block in range(1, blocks + 1)]
    return names


def build_encoder(
    input_shape: tuple[int, int, int, int],
    architecture: str = "resnet",
    width: int = 8,
    blocks_per_stage: list[int] | tuple[int, ...] = (1, 1, 1, 1),
    normalization: str = "batch",
    activation: str = "relu",
) -> keras.Model:
    """A 3D residual encoder; each stage after the first halves the resolution, doubles width.

    Args:
        input_shape: (depth, height, width, channels); each spatial size must be divisible
            by 2^(stages - 1).
        architecture: ``"resnet"`` (3x3x3 convolutions) or ``"separable"`` ((2+1)D pairs).
        width: channels of the stem and the first stage.
        blocks_per_stage: residual blocks in each stage.
        normalization: ``"batch"``, ``"group"`` or ``"none"``.
        activation: any Keras activation name.
    """
    if len(input_shape) != 4:
        raise ValueError(f"input_shape must be (depth, height, width, channels), got {input_shape}")
    factor = 2 ** (len(blocks_per_stage) - 1)
    if any(size % factor for size in input_shape[:3]):
        raise ValueError(
            f"input sizes {input_shape[:3]} must be divisible by {factor} "
            f"for {len(blocks_per_stage)} stages"
        )
    inputs = keras.Input(shape=input_shape, name="volume")
    x = layers.Conv3D(width, 3, padding="same", use_bias=normalization == "none", name="stem_conv")(
        inputs
    )
    x = _norm_act(x, "stem", normalization, activation)
    for stage, blocks in enumerate(blocks_per_stage, start=1):
        filters = width * 2 ** (stage - 1)
        for block in range(1, blocks + 1):
            strides = 2 if stage > 1 and block == 1 else 1
            x = residual_block(
                x,
                filters,
                strides,
                f"stage{stage}_block{block}",
                architecture,
                normalization,
                activation,
            )
    return keras.Model(inputs, x, name="encoder")


def build_head(
    feature_shape: tuple[int, ...],
    num_classes: int,
    units: int = 64,
    dropout: float = 0.3,
    pooling: str = "avgmax",
) -> keras.Model:
    """Global pooling, an optional hidden dense layer, dropout and a softmax over the classes."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    features = keras.Input(shape=feature_shape, name="features")
    x = _pooling(pooling, "head_pool")(features)
    x = layers.Dropout(dropout, name="head_dropout1")(x)
    if units:
        x = layers.Dense(units, activation="relu", name="head_dense")(x)
        x = layers.Dropout(dropout, name="head_dropout2")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="head_logits")(x)
    return keras.Model(features, outputs, name="head")


def build_decoder(
    feature_shape: tuple[int, ...],
    stages: int,
    width: int = 8,
    normalization: str = "batch",
    activation: str = "relu",
    out_channels: int = 1,
) -> keras.Model:
    """Mirrors the encoder without skip connections: upsample x2 and convolve, stage by stage,
    back to the input resolution, then a linear 1x1x1 convolution to the image."""
    features = keras.Input(shape=feature_shape, name="features")
    x = features
    for stage in range(stages - 1, 0, -1):
        x = layers.UpSampling3D(2, name=f"dec{stage}_up")(x)
        x = layers.Conv3D(width * 2 ** (stage - 1), 3, padding="same", name=f"dec{stage}_conv")(x)
        x = _norm_act(x, f"dec{stage}", normalization, activation)
    outputs = layers.Conv3D(out_channels, 1, name="dec_out")(x)
    return keras.Model(features, outputs, name="decoder")


def encoder_from_params(model_params, input_shape: tuple[int, int, int, int]) -> keras.Model:
    """The encoder described by the ``model`` section of params."""
    return build_encoder(
        input_shape,
        architecture=model_params.architecture,
        width=model_params.width,
        blocks_per_stage=list(model_params.blocks_per_stage),
        normalization=model_params.normalization,
        activation=model_params.activation,
    )


def build_classifier(encoder: keras.Model, head: keras.Model) -> keras.Model:
    """Volume -> encoder -> head, as one functional model named ``classifier``."""
    inputs = keras.Input(shape=encoder.input_shape[1:], name="volume")
    return keras.Model(inputs, head(encoder(inputs)), name="classifier")


def build_autoencoder(encoder: keras.Model, decoder: keras.Model) -> keras.Model:
    """Volume -> encoder -> decoder, for self-supervised restoration pretraining."""
    inputs = keras.Input(shape=encoder.input_shape[1:], name="volume")
    return keras.Model(inputs, decoder(encoder(inputs)), name="autoencoder")


def _block_of(layer_name: str) -> str | None:
    if layer_name.startswith("stem"):
        return "stem"
    if layer_name.startswith("stage"):
        return "_".join(layer_name.split("_")[:2])
    return None


def encoder_blocks(encoder: keras.Model) -> list[str]:
    """The encoder's block names in order, read from its layer names."""
    names: list[str] = []
    for layer in encoder.layers:
        block = _block_of(layer.name)
        if block and block not in names:
            names.append(block)
    return names


def freeze_blocks(encoder: keras.Model, count: int) -> list[str]:
    """Freezes the first ``count`` encoder blocks (their BatchNorm then runs in inference mode).

    Returns:
        The names of the frozen blocks.
    """
    blocks = encoder_blocks(encoder)
    if not 0 <= count <= len(blocks):
        raise ValueError(f"cannot freeze {count} blocks: the encoder has {len(blocks)} ({blocks})")
    frozen = set(blocks[:count])
    for layer in encoder.layers:
        if _block_of(layer.name) in frozen:
            layer.trainable = False
    return blocks[:count]


def count_parameters(model: keras.Model) -> dict[str, int]:
    trainable = sum(int(ops.size(weight)) for weight in model.trainable_weights)
    frozen = sum(int(ops.size(weight)) for weight in model.non_trainable_weights)
    return {"trainable": trainable, "non_trainable": frozen, "total": trainable + frozen}
