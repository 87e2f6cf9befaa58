"""The shared Keras model module: 3D encoders, a classification head, a restoration decoder.

Every training stage builds its networks here. Three encoders share one layout, a stem then
stages of blocks, each stage after the first halving the resolution and doubling the width:

- ``plain``: blocks of two 3x3x3 convolution -> normalisation -> activation, max pooling at
  the start of each later stage (the classic VGG-style baseline, no shortcuts);
- ``resnet``: residual blocks, two 3x3x3 convolutions with an identity shortcut, or a 1x1x1
  projection where the stride or width changes (``blocks_per_stage`` [1, 1, 1, 1] is the
  ResNet-10 layout, [2, 2, 2, 2] ResNet-18, [3, 4, 6, 3] ResNet-34);
- ``separable``: the residual layout with every 3x3x3 convolution replaced by a (2+1)D pair,
  a 3x3x1 convolution across the first two axes then a 1x1x3 along the third, with the
  intermediate width chosen so the pair has no more weights and no more multiply-accumulates
  than the full convolution (:func:`separable_width`).

Encoder, head and decoder are separate named sub-models. Encoder layers are named
``f"{block}_{part}"`` with blocks in order ``stem``, ``stage1_block1``, ..., so fine-tuning
freezes and unfreezes blocks by name (:func:`encoder_blocks`, :func:`freeze_blocks`).
Custom layers use only ``keras.ops`` and are registered for ``safe_mode=True`` loading, so
the module builds, trains and reloads under the JAX backend as under TensorFlow. Output
layers are float32 under a mixed-precision policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import keras
from keras import layers, ops

from voxelflow.params import resolve_layout

PACKAGE = "voxelflow"
ARCHITECTURES = ("plain", "resnet", "separable")
NORMALIZATIONS = ("batch", "group", "instance", "none")


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


@dataclass(frozen=True)
class Style:
    """How every block of an encoder or decoder is built.

    Attributes:
        architecture: one of :data:`ARCHITECTURES`.
        normalization: ``batch``, ``group`` (up to 8 groups), ``instance`` or ``none``.
        activation: any Keras activation name.
        dropout: spatial (channel) dropout at the end of every encoder block; 0 for none.
    """

    architecture: str = "resnet"
    normalization: str = "batch"
    activation: str = "relu"
    dropout: float = 0.0

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}"
            )
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {', '.join(NORMALIZATIONS)}, "
                f"got {self.normalization!r}"
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def use_bias(self) -> bool:
        """Convolutions followed by a normalisation need no bias (its shift is the bias)."""
        return self.normalization == "none"


def _pooling(kind: str, name: str) -> layers.Layer:
    if kind == "avg":
        return layers.GlobalAveragePooling3D(name=name)
    if kind == "max":
        return layers.GlobalMaxPooling3D(name=name)
    if kind == "avgmax":
        return GlobalAvgMaxPooling3D(name=name)
    raise ValueError(f"head pooling must be 'avg', 'max' or 'avgmax', got {kind!r}")


def _normalization(style: Style, name: str, channels: int) -> layers.Layer | None:
    if style.normalization == "batch":
        return layers.BatchNormalization(momentum=0.9, name=name)
    if style.normalization == "group":
        return layers.GroupNormalization(groups=math.gcd(8, channels), name=name)
    if style.normalization == "instance":
        return layers.GroupNormalization(groups=channels, name=name)
    return None


def _norm_act(x, name: str, style: Style, activation: bool = True):
    norm = _normalization(style, f"{name}_norm", x.shape[-1])
    if norm is not None:
        x = norm(x)
    if activation:
        x = layers.Activation(style.activation, name=f"{name}_act")(x)
    return x


def separable_width(
    in_channels: int,
    out_channels: int,
    kernel: int = 3,
    strides: int = 1,
    per_channel: int = 1,
) -> int:
    """Intermediate width M of a (2+1)D pair that undercuts a k^3 convolution twice over.

    Weights: the pair has k*k*in*M + per_channel*M + k*M*out against k^3*in*out, where
    ``per_channel`` counts the middle's own weights (1: a bias; 2: a normalisation's scale
    and shift), so M <= k^3*in*out / (k^2*in + k*out + per_channel), as in R(2+1)D.

    Multiply-accumulates: with stride s the k x k x 1 convolution strides the first two axes
    and runs at 1/s^2 of the input voxels, the 1 x 1 x k one strides the third and runs at
    1/s^3 like the full convolution, so M <= k^3*in*out / (s*k^2*in + k*out). At s = 1 this
    bound is looser than the first; at s = 2 it is the tighter one.
    """
    full = kernel**3 * in_channels * out_channels
    by_weights = full // (kernel**2 * in_channels + kernel * out_channels + per_channel)
    by_macs = full // (strides * kernel**2 * in_channels + kernel * out_channels)
    return max(1, min(by_weights, by_macs))


def conv3(x, filters: int, strides: int, name: str, style: Style):
    """A 3x3x3 convolution, or its (2+1)D pair for ``architecture="separable"``."""
    if style.architecture != "separable":
        return layers.Conv3D(
            filters, 3, strides=strides, padding="same", use_bias=style.use_bias, name=name
        )(x)
    middle = separable_width(x.shape[-1], filters, 3, strides, 1 if style.use_bias else 2)
    if style.normalization == "group" and middle >= 8:
        middle -= middle % 8  # so group normalisation has its 8 groups
    x = layers.Conv3D(
        middle,
        (3, 3, 1),
        strides=(strides, strides, 1),
        padding="same",
        use_bias=style.use_bias,
        name=f"{name}_spatial",
    )(x)
    x = _norm_act(x, f"{name}_spatial", style)
    return layers.Conv3D(
        filters,
        (1, 1, 3),
        strides=(1, 1, strides),
        padding="same",
        use_bias=style.use_bias,
        name=f"{name}_axial",
    )(x)


def _dropout(x, name: str, style: Style):
    if style.dropout > 0:
        x = layers.SpatialDropout3D(style.dropout, name=f"{name}_dropout")(x)
    return x


def residual_block(x, filters: int, strides: int, name: str, style: Style):
    """Two 3x3x3 convolutions (or (2+1)D pairs) with an identity or projection shortcut."""
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv3D(
            filters, 1, strides=strides, use_bias=style.use_bias, name=f"{name}_proj"
        )(x)
        shortcut = _norm_act(shortcut, f"{name}_proj", style, activation=False)
    x = conv3(x, filters, strides, f"{name}_conv1", style)
    x = _norm_act(x, f"{name}_conv1", style)
    x = conv3(x, filters, 1, f"{name}_conv2", style)
    x = _norm_act(x, f"{name}_conv2", style, activation=False)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    x = layers.Activation(style.activation, name=f"{name}_out")(x)
    return _dropout(x, name, style)


def plain_block(x, filters: int, strides: int, name: str, style: Style):
    """Max pooling when ``strides`` is 2, then two convolution -> norm -> activation."""
    if strides != 1:
        x = layers.MaxPooling3D(strides, name=f"{name}_pool")(x)
    x = conv3(x, filters, 1, f"{name}_conv1", style)
    x = _norm_act(x, f"{name}_conv1", style)
    x = conv3(x, filters, 1, f"{name}_conv2", style)
    x = _norm_act(x, f"{name}_conv2", style)
    return _dropout(x, name, style)


def block_names(blocks_per_stage: list[int] | tuple[int, ...]) -> list[str]:
    """The encoder's blocks in order: ``stem`` then ``stage{s}_block{b}``."""
    names = ["stem"]
    for stage, blocks in enumerate(blocks_per_stage, start=1):
        names += [f"stage{stage}_block{block}" for block in range(1, blocks + 1)]
    return names


def build_encoder(
    input_shape: tuple[int, int, int, int],
    architecture: str = "resnet",
    width: int = 8,
    blocks_per_stage: str | list[int] | tuple[int, ...] = (1, 1, 1, 1),
    normalization: str = "batch",
    activation: str = "relu",
    dropout: float = 0.0,
    stem_kernel: int = 3,
    stem_stride: int = 1,
) -> keras.Model:
    """A 3D encoder: a stem convolution, then stages that halve the resolution, double width.

    Args:
        input_shape: (depth, height, width, channels), any non-cubic shape whose spatial
            sizes are divisible by ``stem_stride * 2^(stages - 1)``.
        architecture: ``"plain"``, ``"resnet"`` or ``"separable"``.
        width: channels of the stem and the first stage.
        blocks_per_stage: blocks in each stage, or a layout name (``"resnet18"``).
        normalization: ``"batch"``, ``"group"``, ``"instance"`` or ``"none"``.
        activation: any Keras activation name.
        dropout: spatial dropout rate at the end of every block.
        stem_kernel: the stem convolution's size (3, or 7 for the ImageNet-style stem).
        stem_stride: 2 halves the resolution in the stem (for inputs of 96^3 and more).

    Under several replicas batch normalisation uses each replica's own batch statistics
    (Keras's default; its synchronised variant failed under MirroredStrategy on TensorFlow
    2.21): use group or instance normalisation where replica-invariant training matters.
    """
    style = Style(architecture, normalization, activation, dropout)
    layout = resolve_layout(blocks_per_stage)
    if len(input_shape) != 4:
        raise ValueError(f"input_shape must be (depth, height, width, channels), got {input_shape}")
    if width < 1 or stem_kernel < 1 or stem_stride not in (1, 2):
        raise ValueError(
            f"width and stem_kernel must be >= 1 and stem_stride 1 or 2, got width={width}, "
            f"stem_kernel={stem_kernel}, stem_stride={stem_stride}"
        )
    factor = stem_stride * 2 ** (len(layout) - 1)
    if any(size % factor for size in input_shape[:3]):
        raise ValueError(
            f"input sizes {tuple(input_shape[:3])} must be divisible by {factor} "
            f"for {len(layout)} stages with stem stride {stem_stride}"
        )
    block = plain_block if architecture == "plain" else residual_block
    inputs = keras.Input(shape=tuple(input_shape), name="volume")
    x = layers.Conv3D(
        width,
        stem_kernel,
        strides=stem_stride,
        padding="same",
        use_bias=style.use_bias,
        name="stem_conv",
    )(inputs)
    x = _norm_act(x, "stem", style)
    for stage, blocks in enumerate(layout, start=1):
        filters = width * 2 ** (stage - 1)
        for index in range(1, blocks + 1):
            strides = 2 if stage > 1 and index == 1 else 1
            x = block(x, filters, strides, f"stage{stage}_block{index}", style)
    return keras.Model(inputs, x, name="encoder")


def build_head(
    feature_shape: tuple[int, ...],
    num_classes: int,
    units: int | list[int] | tuple[int, ...] = 64,
    dropout: float = 0.3,
    pooling: str = "avgmax",
) -> keras.Model:
    """Global pooling, dense layers with dropout, and a float32 softmax over the classes.

    Args:
        feature_shape: the encoder's output shape without the batch axis.
        num_classes: 2 or more.
        units: hidden dense widths, one per layer (an int for one layer, 0 or [] for none).
        dropout: before every dense layer.
        pooling: ``"avg"``, ``"max"`` or ``"avgmax"`` (both, concatenated).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    hidden = [units] if isinstance(units, int) else list(units)
    hidden = [width for width in hidden if width]
    features = keras.Input(shape=tuple(feature_shape), name="features")
    x = _pooling(pooling, "head_pool")(features)
    for index, width in enumerate(hidden, start=1):
        x = layers.Dropout(dropout, name=f"head_dropout{index}")(x)
        x = layers.Dense(width, activation="relu", name=f"head_dense{index}")(x)
    x = layers.Dropout(dropout, name=f"head_dropout{len(hidden) + 1}")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="head_logits")(
        x
    )
    return keras.Model(features, outputs, name="head")


def stage_outputs(encoder: keras.Model) -> list:
    """The encoder's feature maps at every resolution, deepest first: the last tensor of each
    stage, then the stem's (the skip connections of a U-Net-style decoder)."""
    last: dict[str, object] = {}
    for layer in encoder.layers:
        block = block_of(layer.name)
        if block is not None:
            last[block.split("_")[0]] = layer.output
    if "stem" not in last or len(last) < 2:
        raise ValueError(
            f"{encoder.name}: not an encoder of this module (no 'stem' and 'stage*' layers)"
        )
    stages = sorted((name for name in last if name != "stem"), key=lambda s: int(s[5:]))
    return [last[name] for name in reversed(stages)] + [last["stem"]]


def build_decoder(
    encoder: keras.Model,
    skips: bool = False,
    normalization: str = "batch",
    activation: str = "relu",
    out_channels: int = 1,
) -> keras.Model:
    """The restoration decoder that mirrors ``encoder`` back to its input resolution.

    From the deepest features, stage by stage: upsample x2, concatenate the encoder's
    features at that resolution when ``skips``, then convolution -> norm -> activation at the
    mirrored stage's width; the stem's stride is undone last, and a linear 1x1x1 float32
    convolution gives the image. Without skips, every detail has to pass through the
    deepest features, which is what makes restoration teach the encoder; with skips the
    decoder can copy fine detail from shallow layers (a U-Net), which restores better and
    teaches the deep layers less.

    Without skips there is no convolution at a resolution reached without upsampling (the
    stem's, when its stride is 1): the decoder is kept lean so the encoder does the work. On
    the demo data, one run each, a decoder with that extra full-resolution convolution
    left the fine-tuned classifier at 0.66 training accuracy after 25 epochs (test balanced
    accuracy 0.721), without it 0.87 (test balanced accuracy 0.873).

    Its inputs are the encoder's :func:`stage_outputs` (deepest first) with ``skips``, else
    the deepest alone.
    """
    style = Style("plain", normalization, activation)
    targets = stage_outputs(encoder)
    shapes = [tuple(tensor.shape[1:]) for tensor in targets]
    inputs = [
        keras.Input(shape=shape, name=f"features{index}")
        for index, shape in enumerate(shapes if skips else shapes[:1])
    ]
    x = inputs[0]
    for index in range(1, len(shapes)):
        shape = shapes[index]
        factor = tuple(int(a // b) for a, b in zip(shape[:3], x.shape[1:4], strict=True))
        name = f"dec{len(shapes) - index}"
        if factor == (1, 1, 1) and not skips:
            continue  # no convolution where nothing is upsampled or merged: see the docstring
        if factor != (1, 1, 1):
            x = layers.UpSampling3D(factor, name=f"{name}_up")(x)
        if skips:
            x = layers.Concatenate(name=f"{name}_skip")([x, inputs[index]])
        x = layers.Conv3D(
            shape[-1], 3, padding="same", use_bias=style.use_bias, name=f"{name}_conv"
        )(x)
        x = _norm_act(x, name, style)
    input_size = encoder.input_shape[1:4]
    factor = tuple(int(a // b) for a, b in zip(input_size, x.shape[1:4], strict=True))
    if factor != (1, 1, 1):
        x = layers.UpSampling3D(factor, name="dec0_up")(x)
        x = layers.Conv3D(
            shapes[-1][-1], 3, padding="same", use_bias=style.use_bias, name="dec0_conv"
        )(x)
        x = _norm_act(x, "dec0", style)
    outputs = layers.Conv3D(out_channels, 1, dtype="float32", name="dec_out")(x)
    return keras.Model(inputs if skips else inputs[0], outputs, name="decoder")


def encoder_from_params(model_params, input_shape: tuple[int, int, int, int]) -> keras.Model:
    """The encoder described by the ``model`` section of params."""
    return build_encoder(
        input_shape,
        architecture=model_params.architecture,
        width=model_params.width,
        blocks_per_stage=model_params.blocks_per_stage,
        normalization=model_params.normalization,
        activation=model_params.activation,
        dropout=model_params.encoder_dropout,
        stem_kernel=model_params.stem_kernel,
        stem_stride=model_params.stem_stride,
    )


def head_from_params(model_params, encoder: keras.Model, num_classes: int) -> keras.Model:
    """The classification head described by the ``model`` section of params."""
    return build_head(
        encoder.output_shape[1:],
        num_classes,
        model_params.head_units,
        model_params.dropout,
        model_params.head_pooling,
    )


def decoder_from_params(model_params, encoder: keras.Model) -> keras.Model:
    """The restoration decoder described by the ``model`` section of params."""
    return build_decoder(
        encoder,
        skips=model_params.decoder_skips,
        normalization=model_params.normalization,
        activation=model_params.activation,
    )


def build_classifier(encoder: keras.Model, head: keras.Model) -> keras.Model:
    """Volume -> encoder -> head, as one functional model named ``classifier``."""
    inputs = keras.Input(shape=encoder.input_shape[1:], name="volume")
    return keras.Model(inputs, head(encoder(inputs)), name="classifier")


def build_autoencoder(encoder: keras.Model, decoder: keras.Model) -> keras.Model:
    """Volume -> encoder -> decoder, for self-supervised restoration pretraining.

    A decoder with skip connections reads every resolution through ``encoder_pyramid``, a
    view of the encoder's own layers (same weights): training it trains ``encoder``.
    """
    inputs = keras.Input(shape=encoder.input_shape[1:], name="volume")
    if len(decoder.inputs) == 1:
        return keras.Model(inputs, decoder(encoder(inputs)), name="autoencoder")
    pyramid = keras.Model(encoder.inputs, stage_outputs(encoder), name="encoder_pyramid")
    return keras.Model(inputs, decoder(pyramid(inputs)), name="autoencoder")


def block_of(layer_name: str) -> str | None:
    """The encoder block a layer belongs to (``stem``, ``stage2_block1``), None outside."""
    if layer_name.startswith("stem"):
        return "stem"
    if layer_name.startswith("stage"):
        return "_".join(layer_name.split("_")[:2])
    return None


def encoder_blocks(encoder: keras.Model) -> list[str]:
    """The encoder's block names in order, read from its layer names."""
    names: list[str] = []
    for layer in encoder.layers:
        block = block_of(layer.name)
        if block and block not in names:
            names.append(block)
    return names


def freeze_blocks(encoder: keras.Model, blocks: int | list[str]) -> list[str]:
    """Freezes exactly the given encoder blocks and unfreezes the rest.

    Frozen BatchNormalization layers run in inference mode (their statistics are kept).

    Args:
        encoder: built by :func:`build_encoder` (or loaded from one).
        blocks: the first ``blocks`` blocks, or block names such as ``["stem",
            "stage1_block1"]``; 0 or [] unfreezes everything.

    Returns:
        The names of the frozen blocks, in encoder order.
    """
    names = encoder_blocks(encoder)
    if isinstance(blocks, int):
        if not 0 <= blocks <= len(names):
            raise ValueError(
                f"cannot freeze {blocks} blocks: the encoder has {len(names)} ({names})"
            )
        frozen = set(names[:blocks])
    else:
        unknown = [name for name in blocks if name not in names]
        if unknown:
            raise ValueError(f"unknown encoder blocks {unknown}; the encoder has {names}")
        frozen = set(blocks)
    encoder.trainable = True
    for layer in encoder.layers:
        layer.trainable = block_of(layer.name) not in frozen
    return [name for name in names if name in frozen]


FLOAT32_OUTPUTS = ("head_logits", "dec_out")


def set_precision(model: keras.Model, policy: str) -> keras.Model:
    """Makes a built or loaded model compute under ``policy`` (output layers stay float32).

    A loaded model keeps the dtype policy it was saved with; weights are float32 under every
    policy here, so only the computation changes: a float32-pretrained encoder fine-tunes in
    mixed precision, and a mixed-precision bundle predicts in float32 on a CPU.
    """
    for layer in leaf_layers(model):
        if layer.name not in FLOAT32_OUTPUTS:
            layer.dtype_policy = policy
    return model


def leaf_layers(model: keras.Model):
    """Every layer of ``model`` that is not itself a model, sub-models walked in order."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from leaf_layers(layer)
        else:
            yield layer


def _find_encoder(model: keras.Model) -> keras.Model | None:
    if model.name == "encoder":
        return model
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found = _find_encoder(layer)
            if found is not None:
                return found
    return None


def load_encoder_weights(encoder: keras.Model, path: str | Path) -> dict:
    """Copies the weights of the encoder saved in ``path`` into ``encoder``, layer by layer.

    Args:
        encoder: built from params.
        path: a ``.keras`` model that is an encoder of this module or holds one named
            ``encoder`` (a pretrained encoder, a classifier bundle's model.keras).

    Raises:
        ValueError: the file is missing or not a ``.keras`` model, holds no encoder, or its
            layers do not match by name and weight shapes (every mismatch is listed).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"pretrain.weights {path}: not found")
    if path.suffix != ".keras":
        raise ValueError(f"pretrain.weights {path}: expected a .keras model file")
    try:
        saved = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # noqa: BLE001 - any load failure is the file's fault
        raise ValueError(f"pretrain.weights {path}: cannot load: {error}") from None
    source = _find_encoder(saved)
    if source is None:
        raise ValueError(f"pretrain.weights {path}: holds no model named 'encoder'")
    theirs = {layer.name: layer for layer in source.layers if layer.weights}
    ours = {layer.name: layer for layer in encoder.layers if layer.weights}
    problems = [f"{name}: not in the file" for name in ours if name not in theirs]
    problems += [f"{name}: in the file, not in this encoder" for name in theirs if name not in ours]
    for name in set(ours) & set(theirs):
        mine = [tuple(weight.shape) for weight in ours[name].weights]
        other = [tuple(weight.shape) for weight in theirs[name].weights]
        if mine != other:
            problems.append(f"{name}: shapes {other} in the file, {mine} here")
    if problems:
        shown = "; ".join(sorted(problems)[:8])
        more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
        raise ValueError(
            f"pretrain.weights {path}: does not fit the encoder of params.model: {shown}{more}"
        )
    for name, layer in ours.items():
        layer.set_weights(theirs[name].get_weights())
    return {"path": str(path), "layers": len(ours)}
