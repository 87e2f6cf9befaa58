"""What a model costs and sees: parameters, multiply-accumulates, receptive field.

Written with every bundle (``model_summary.json``). Figures are computed from the layer graph
at the model's configured input shape, not measured:

- parameters: trainable, frozen (every weight of a layer set non-trainable, its batch
  normalisation statistics included) and statistics (the moving means and variances of
  the trainable layers' batch normalisation, updated by the data but not the optimiser);
- multiply-accumulates (MACs) per volume: convolutions and dense layers, the operations that
  cost; normalisation, activations, pooling and additions are left out (about 1% of a 3D
  CNN's arithmetic);
- receptive field: for every model output, the extent in input voxels (per axis) that one
  output voxel depends on, following each path through the graph (the widest path wins at
  an addition or a concatenation). Global pooling makes the field the whole volume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
from keras import layers

from voxelflow.models import block_of, leaf_layers

# Layers that change neither where a voxel is nor what it sees.
POINTWISE = (
    layers.InputLayer,
    layers.Activation,
    layers.ReLU,
    layers.LeakyReLU,
    layers.BatchNormalization,
    layers.GroupNormalization,
    layers.LayerNormalization,
    layers.Dropout,
    layers.SpatialDropout3D,
    layers.Identity,
    layers.Rescaling,
)
MERGES = (layers.Add, layers.Concatenate, layers.Average, layers.Maximum, layers.Multiply)
GLOBAL = (layers.GlobalAveragePooling3D, layers.GlobalMaxPooling3D, layers.Flatten)


@dataclass(frozen=True)
class Field:
    """The receptive field of a tensor: ``size`` input voxels per axis, output voxels ``jump``
    input voxels apart; ``size`` None once global pooling has seen everything, and the field
    is unknown (``known`` False) after a layer this module cannot follow."""

    size: tuple[float, float, float] | None = (1, 1, 1)
    jump: tuple[float, float, float] = (1, 1, 1)
    known: bool = True


def _kernel(layer) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    if isinstance(layer, layers.Conv3D | layers.Conv3DTranspose):
        return tuple(layer.kernel_size), tuple(layer.strides), tuple(layer.dilation_rate)
    return tuple(layer.pool_size), tuple(layer.strides), (1, 1, 1)


def _propagate(layer, fields: list[Field]) -> Field:
    """The field of ``layer``'s output from those of its inputs."""
    if not all(field.known for field in fields):
        return Field(known=False)
    if any(field.size is None for field in fields) or isinstance(layer, GLOBAL):
        return Field(size=None)
    if isinstance(layer, POINTWISE):
        return fields[0]
    if isinstance(layer, MERGES):
        size = tuple(max(field.size[axis] for field in fields) for axis in range(3))
        jump = tuple(max(field.jump[axis] for field in fields) for axis in range(3))
        return Field(size, jump)
    if isinstance(layer, layers.Conv3DTranspose):
        return Field(known=False)
    if isinstance(layer, layers.Conv3D | layers.MaxPooling3D | layers.AveragePooling3D):
        field = fields[0]
        kernel, strides, dilation = _kernel(layer)
        size = tuple(
            field.size[a] + (kernel[a] - 1) * dilation[a] * field.jump[a] for a in range(3)
        )
        return Field(size, tuple(field.jump[a] * strides[a] for a in range(3)))
    if isinstance(layer, layers.UpSampling3D):
        field = fields[0]
        return Field(field.size, tuple(field.jump[a] / layer.size[a] for a in range(3)))
    if layer.__class__.__name__ == "GlobalAvgMaxPooling3D":
        return Field(size=None)
    return Field(known=False)


def _macs(layer, inputs, outputs) -> int:
    """Multiply-accumulates of one call of a convolution or dense layer (0 for others)."""
    if isinstance(layer, layers.Conv3D):
        voxels = math.prod(outputs[0].shape[1:4])
        channels = inputs[0].shape[-1] // layer.groups
        return voxels * math.prod(layer.kernel_size) * channels * layer.filters
    if isinstance(layer, layers.Dense):
        positions = math.prod(inputs[0].shape[1:-1]) if len(inputs[0].shape) > 2 else 1
        return positions * inputs[0].shape[-1] * layer.units
    return 0


@dataclass
class _Trace:
    fields: dict[int, Field]
    macs: dict[str, int]
    sub_inputs: dict[str, list[Field]]


def _trace(model: keras.Model, inputs: list[Field], trace: _Trace, prefix: str = "") -> list[Field]:
    """Walks ``model``'s graph from input fields to output fields, summing MACs per layer."""
    for tensor, field in zip(model.inputs, inputs, strict=True):
        trace.fields[id(tensor)] = field
    for layer in model.layers:
        if isinstance(layer, layers.InputLayer):
            continue
        for node in layer._inbound_nodes:
            arguments = node.arguments.keras_tensors
            if not all(id(tensor) in trace.fields for tensor in arguments):
                continue  # a call of this layer in another model
            fields = [trace.fields[id(tensor)] for tensor in arguments]
            name = f"{prefix}{layer.name}"
            if isinstance(layer, keras.Model):
                trace.sub_inputs.setdefault(layer.name, fields)
                outputs = _trace(layer, fields, trace, prefix=f"{name}/")
            else:
                outputs = [_propagate(layer, fields)] * len(node.outputs)
                trace.macs[name] = trace.macs.get(name, 0) + _macs(layer, arguments, node.outputs)
            for tensor, field in zip(node.outputs, outputs, strict=True):
                trace.fields[id(tensor)] = field
    return [trace.fields.get(id(tensor), Field(known=False)) for tensor in model.outputs]


def parameter_counts(model: keras.Model) -> dict[str, int]:
    """Trainable, frozen and statistics weights (each weight counted once)."""
    counts = {"trainable": 0, "frozen": 0, "statistics": 0}
    seen: set[int] = set()
    for layer in leaf_layers(model):
        for weight in layer.weights:
            if id(weight) in seen:
                continue
            seen.add(id(weight))
            size = math.prod(weight.shape)
            if not weight.trainable and layer.trainable:
                counts["statistics"] += size
            elif layer.trainable:
                counts["trainable"] += size
            else:
                counts["frozen"] += size
    counts["total"] = sum(counts.values())
    return counts


def _field_summary(field: Field, spacing_mm) -> dict:
    if not field.known:
        return {"voxels": None, "note": "not computed: a layer this summary cannot follow"}
    if field.size is None:
        return {"voxels": "global", "note": "global pooling: every input voxel"}
    voxels = [int(round(size)) for size in field.size]
    summary = {"voxels": voxels}
    if spacing_mm is not None:
        summary["mm"] = [round(v * float(s), 2) for v, s in zip(voxels, spacing_mm, strict=True)]
    return summary


def summarize(model: keras.Model, spacing_mm=None, input_fields: list[Field] | None = None) -> dict:
    """Parameters, MACs per volume and receptive fields of ``model`` and its sub-models.

    Args:
        model: a functional model with a fixed input shape.
        spacing_mm: the input's voxel spacing, to give receptive fields in millimetres.
        input_fields: the fields of ``model``'s inputs when it is a sub-model (from its
            parent's trace), so that its fields too are in voxels of the parent's input.

    Returns:
        JSON-ready: ``input_shape``, ``parameters``, ``macs_per_volume``,
        ``gmacs_per_volume``, ``receptive_field`` (one per model output), and the same for
        each nested sub-model under ``sub_models``, its fields in voxels of the outermost
        input too (the encoder's field is the one that says how much context a feature
        voxel has).
    """
    trace = _Trace({}, {}, {})
    outputs = _trace(model, input_fields or [Field() for _ in model.inputs], trace)
    total = sum(trace.macs.values())
    summary = {
        "name": model.name,
        "input_shape": [list(tensor.shape[1:]) for tensor in model.inputs],
        "parameters": parameter_counts(model),
        "macs_per_volume": total,
        "gmacs_per_volume": round(total / 1e9, 4),
        "receptive_field": [_field_summary(field, spacing_mm) for field in outputs],
    }
    subs = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            fields = trace.sub_inputs.get(layer.name)
            sub = summarize(layer, spacing_mm, fields) if layer.inputs and fields else {}
            subs[layer.name] = {key: sub[key] for key in sub if key != "name"}
    if subs:
        summary["sub_models"] = subs
    blocks: dict[str, int] = {}
    for name, macs in trace.macs.items():
        *path, last = name.split("/")
        key = "/".join([*path, block_of(last) or last.split("_")[0]])
        blocks[key] = blocks.get(key, 0) + macs
    summary["macs_by_block"] = blocks
    return summary


def brief(summary: dict) -> dict:
    """The headline figures of :func:`summarize`, for a stage's report or bundle.json: total
    parameters, GMACs per volume, and the encoder's receptive field."""
    subs = summary.get("sub_models", {})
    encoder = subs.get("encoder") or subs.get("encoder_pyramid") or summary
    return {
        "parameters": summary["parameters"],
        "gmacs_per_volume": summary["gmacs_per_volume"],
        "encoder_receptive_field": encoder["receptive_field"][0],
    }
