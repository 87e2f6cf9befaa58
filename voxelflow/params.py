"""The params.yaml schema: the only code in voxelflow that parses params.yaml.

Every stage reads its section through :func:`load_params`. Unknown keys are errors
(``extra="forbid"``) so a typo never falls back to a silent default, and every wrong value
is reported with its key path and the value received.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PositiveFloat = Annotated[float, Field(gt=0)]
Probability = Annotated[float, Field(ge=0, le=1)]
Triple = tuple[int, int, int]
FloatTriple = tuple[PositiveFloat, PositiveFloat, PositiveFloat]
# named encoder layouts (blocks per stage), as in the ResNet papers
LAYOUTS = {"resnet10": (1, 1, 1, 1), "resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


def resolve_layout(blocks_per_stage: str | list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """Blocks per stage from a list or a layout name in :data:`LAYOUTS`."""
    if isinstance(blocks_per_stage, str):
        if blocks_per_stage not in LAYOUTS:
            raise ValueError(
                f"unknown layout {blocks_per_stage!r}; expected one of {', '.join(LAYOUTS)} "
                "or a list of blocks per stage"
            )
        return LAYOUTS[blocks_per_stage]
    layout = tuple(int(blocks) for blocks in blocks_per_stage)
    if not layout or any(blocks < 1 for blocks in layout):
        raise ValueError(f"blocks_per_stage needs at least one stage of >= 1 block, got {layout}")
    return layout


class Section(BaseModel):
    """Base of every params section: strict keys, validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def _ordered_range(value: tuple[float, float], name: str = "range") -> tuple[float, float]:
    low, high = value
    if low > high:
        raise ValueError(f"{name} must be [low, high] with low <= high, got [{low}, {high}]")
    return value


class SynthParams(Section):
    """The embedded default dataset: brain-like phantoms with three classes."""

    classes: list[str] = ["normal", "lesion", "atrophy"]
    subjects_per_class: int = Field(60, ge=2, le=10_000)
    rescan_fraction: Probability = 0.2
    unlabelled: int = Field(40, ge=0, le=100_000)
    field_of_view_mm: PositiveFloat = 64.0
    spacing_mm: tuple[PositiveFloat, PositiveFloat] = (0.8, 1.5)
    noise_std: Annotated[float, Field(ge=0, le=1)] = 0.04
    bias_field_strength: Annotated[float, Field(ge=0, le=0.9)] = 0.15
    lesion_radius_mm: tuple[PositiveFloat, PositiveFloat] = (3.0, 4.5)
    lesion_contrast: tuple[PositiveFloat, PositiveFloat] = (0.6, 0.9)
    atrophy_ventricle_scale: tuple[PositiveFloat, PositiveFloat] = (1.5, 1.9)
    lesion_edema: tuple[Probability, Probability] = (0.15, 0.3)
    scalp_intensity: tuple[PositiveFloat, PositiveFloat] = (1.0, 1.3)
    vessels: tuple[Annotated[int, Field(ge=0, le=50)], Annotated[int, Field(ge=0, le=50)]] = (2, 4)
    focus_intensity: tuple[PositiveFloat, PositiveFloat] = (1.1, 1.6)
    choroid_plexus: bool = True

    @field_validator("classes")
    @classmethod
    def _known_classes(cls, value: list[str]) -> list[str]:
        allowed = {"normal", "lesion", "atrophy"}
        unknown = [name for name in value if name not in allowed]
        if unknown or len(set(value)) != len(value) or len(value) < 2:
            raise ValueError(
                f"classes must be 2 or 3 distinct names from {sorted(allowed)}, got {value}"
            )
        return value

    @field_validator(
        "spacing_mm",
        "lesion_radius_mm",
        "lesion_contrast",
        "atrophy_ventricle_scale",
        "lesion_edema",
        "scalp_intensity",
        "vessels",
        "focus_intensity",
    )
    @classmethod
    def _ranges(cls, value: tuple[float, float]) -> tuple[float, float]:
        return _ordered_range(value)


class SplitFractions(Section):
    train: Probability = 0.7
    val: Probability = 0.15
    test: Probability = 0.15

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {total:.4f}")
        if min(self.train, self.val, self.test) <= 0:
            raise ValueError("every split fraction must be > 0")
        return self


class IngestParams(Section):
    """Validation of the raw folder and the labels table, and the split."""

    splits: SplitFractions = SplitFractions()
    unlabelled_dir: str = "unlabelled"
    classes: list[str] | None = None
    max_voxels: int = Field(64_000_000, gt=0)
    min_size: int = Field(4, ge=1)
    volume_index: int | None = Field(None, ge=0)
    non_finite: Literal["reject", "repair"] = "reject"
    # keep the labels of this fraction of the training subjects (at least one per class);
    # the others join the unlabelled pool (label-scarce experiments)
    label_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0


class DataParams(Section):
    """Where the raw volumes and their labels.csv are (dvc.yaml reads it as ${data.raw_dir})."""

    raw_dir: str = "data/raw"

    @field_validator("raw_dir")
    @classmethod
    def _relative(cls, value: str) -> str:
        if not value.strip() or value.startswith(("/", "~")) or ".." in Path(value).parts:
            raise ValueError(
                f"raw_dir must be a folder inside the repository (DVC tracks it), got {value!r}"
            )
        return value


class ComputeParams(Section):
    """Where per-volume work runs. Not a DVC dependency: outputs are identical either way."""

    workers: int = Field(0, ge=0)
    dask_address: str | None = None


class PreprocessParams(Section):
    """Canonical orientation, target spacing, intensity normalisation, target shape.

    ``auto`` values are filled from the data fingerprint that ingest computes on the
    training split (nnU-Net style); preprocess.json records the values used.
    """

    target_spacing_mm: FloatTriple | Literal["auto"] = (2.0, 2.0, 2.0)
    target_shape: Triple | Literal["auto"] = (32, 32, 32)
    max_auto_shape: int = Field(128, ge=8)
    crop_foreground: bool = True
    normalization: Literal["zscore", "window", "minmax"] = "zscore"
    clip_percentiles: tuple[float, float] = (0.5, 99.9)
    window: tuple[float, float] | Literal["auto"] = "auto"
    interpolation_order: Literal[0, 1, 3] = 1

    @field_validator("target_shape")
    @classmethod
    def _shape(cls, value):
        if value != "auto" and any(size < 8 or size % 8 for size in value):
            raise ValueError(f"target_shape sizes must be multiples of 8 and >= 8, got {value}")
        return value

    @field_validator("window")
    @classmethod
    def _window(cls, value):
        if value != "auto" and not value[0] < value[1]:
            raise ValueError(f"window must be [low, high] with low < high, got {list(value)}")
        return value

    @field_validator("clip_percentiles")
    @classmethod
    def _percentiles(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 <= low < high <= 100:
            raise ValueError(f"clip_percentiles must satisfy 0 <= low < high <= 100, got {value}")
        return value


class AugmentParams(Section):
    """Random 3D augmentation (augment-cache stage, and on-the-fly training): each transform
    has a probability and a range; see voxelflow.augment."""

    copies: int = Field(4, ge=1, le=1000)
    rotation_degrees: Annotated[float, Field(ge=0, le=180)] = 12.0
    rotation_probability: Probability = 1.0
    scale_range: tuple[PositiveFloat, PositiveFloat] = (0.92, 1.08)
    anisotropy: Annotated[float, Field(ge=0, lt=1)] = 0.0
    scale_probability: Probability = 1.0
    flip_axes: list[Literal[0, 1, 2]] = [0]
    flip_probability: Probability = 0.5
    translation_mm: Annotated[float, Field(ge=0)] = 4.0
    translation_probability: Probability = 1.0
    elastic_magnitude_mm: Annotated[float, Field(ge=0, le=20)] = 1.0
    elastic_control_points: int = Field(5, ge=4, le=32)
    elastic_probability: Probability = 0.0
    bias_field_strength: Annotated[float, Field(ge=0, le=2)] = 0.2
    bias_field_probability: Probability = 0.0
    gamma_range: tuple[PositiveFloat, PositiveFloat] = (0.8, 1.25)
    gamma_probability: Probability = 0.8
    intensity_scale: Annotated[float, Field(ge=0, lt=1)] = 0.1
    intensity_shift: Annotated[float, Field(ge=0)] = 0.1
    contrast_probability: Probability = 0.8
    blur_sigma_mm: tuple[float, float] = (0.5, 1.5)
    blur_probability: Probability = 0.0
    low_resolution_factor: tuple[float, float] = (1.5, 3.0)
    low_resolution_probability: Probability = 0.0
    noise_std: Annotated[float, Field(ge=0, le=5)] = 0.05
    noise_kind: Literal["gaussian", "rician"] = "gaussian"
    noise_probability: Probability = 0.8
    interpolation_order: Literal[0, 1, 3] = 1
    shard_size: int = Field(256, ge=1)

    @field_validator("scale_range", "gamma_range", "blur_sigma_mm", "low_resolution_factor")
    @classmethod
    def _ranges(cls, value: tuple[float, float]) -> tuple[float, float]:
        return _ordered_range(value)

    @field_validator("blur_sigma_mm", "low_resolution_factor")
    @classmethod
    def _minimum(cls, value: tuple[float, float], info) -> tuple[float, float]:
        minimum = {"blur_sigma_mm": 0.0, "low_resolution_factor": 1.0}[info.field_name]
        if value[0] < minimum:
            raise ValueError(f"{info.field_name} must be >= {minimum:g}, got {list(value)}")
        return value


class ModelParams(Section):
    """The shared 3D CNN (voxelflow.models). Its input shape is preprocess.target_shape."""

    architecture: Literal["plain", "resnet", "separable"] = "resnet"
    width: int = Field(8, ge=1, le=512)
    # blocks per stage, or a layout name: resnet10 = [1, 1, 1, 1], resnet18 = [2, 2, 2, 2],
    # resnet34 = [3, 4, 6, 3]
    blocks_per_stage: list[Annotated[int, Field(ge=1, le=16)]] = [1, 1]
    normalization: Literal["batch", "group", "instance", "none"] = "none"
    activation: Literal["relu", "gelu", "swish", "leaky_relu"] = "relu"
    encoder_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    stem_kernel: Literal[3, 5, 7] = 3
    stem_stride: Literal[1, 2] = 1
    head_pooling: Literal["avg", "max", "avgmax"] = "max"
    head_units: Annotated[int, Field(ge=0)] | list[Annotated[int, Field(ge=1)]] = 32
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.3
    decoder_skips: bool = False

    @field_validator("blocks_per_stage", mode="before")
    @classmethod
    def _layout(cls, value):
        return list(resolve_layout(value)) if isinstance(value, str) else value

    @field_validator("blocks_per_stage")
    @classmethod
    def _stages(cls, value: list[int]) -> list[int]:
        if not 1 <= len(value) <= 5:
            raise ValueError(f"blocks_per_stage needs 1 to 5 stages, got {len(value)}")
        return value


class TrainingParams(Section):
    """How the training stages use the hardware (voxelflow.devices)."""

    # float32 | mixed_float16 (GPUs with tensor cores) | mixed_bfloat16 (recent GPUs, TPUs)
    precision: Literal["float32", "mixed_float16", "mixed_bfloat16"] = "float32"
    # auto: MultiWorkerMirroredStrategy under TF_CONFIG, MirroredStrategy over several
    # visible devices, else one device | single | mirrored
    distribution: Literal["auto", "single", "mirrored"] = "auto"
    # XLA: auto lets Keras decide (off while ops are deterministic), or true / false
    jit_compile: bool | Literal["auto"] = "auto"
    deterministic: bool = True
    # initial weights, batch order, pretraining corruptions, dropout, online augmentation;
    # None: the top-level seed. Another value retrains on the very same data and splits.
    seed: int | None = Field(None, ge=0, lt=2**32)

    @model_validator(mode="after")
    def _xla_needs_nondeterministic_ops(self) -> TrainingParams:
        if self.jit_compile is True and self.deterministic:
            raise ValueError(
                "jit_compile: true needs deterministic: false (Keras turns XLA off while "
                "TensorFlow's ops are deterministic)"
            )
        return self


class PretrainParams(Section):
    """Pretraining of the encoder: self-supervised restoration (Models Genesis) on the
    training and unlabelled volumes, supervised on another labelled dataset, or none."""

    mode: Literal["self_supervised", "supervised", "none"] = "self_supervised"
    epochs: int = Field(8, ge=0)
    batch_size: int = Field(8, ge=1)
    learning_rate: PositiveFloat = 1e-3
    # self-supervised: a random sub-volume of this fraction of each axis, resized to the
    # input shape, is what gets corrupted and restored; [1, 1] for the whole volume
    subvolume_scale: tuple[
        Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]
    ] = (
        0.6,
        1.0,
    )
    intensity_probability: Probability = 0.9
    shuffle_probability: Probability = 0.5
    inpainting_probability: Probability = 0.25
    outpainting_probability: Probability = 0.25
    noise_std: Annotated[float, Field(ge=0)] = 0.1
    # supervised: a preprocessed folder of another labelled dataset (manifest.csv + arrays
    # + preprocess.json, same target shape), e.g. written by `python -m stages.preprocess`
    source_dir: str | None = None
    # start from these encoder weights (a .keras model holding an `encoder`, or an encoder)
    weights: str | None = None

    @field_validator("subvolume_scale")
    @classmethod
    def _scale(cls, value):
        return _ordered_range(value, "subvolume_scale")

    @model_validator(mode="after")
    def _consistent(self) -> PretrainParams:
        if self.inpainting_probability + self.outpainting_probability > 1:
            raise ValueError(
                "inpainting_probability + outpainting_probability must be <= 1 (at most one "
                f"of the two per copy), got {self.inpainting_probability} + "
                f"{self.outpainting_probability}"
            )
        if self.mode == "supervised" and not self.source_dir:
            raise ValueError("mode: supervised needs source_dir, a preprocessed labelled folder")
        return self


class FinetuneParams(Section):
    """Fine-tuning of the pretrained encoder with a new classification head."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(16, ge=1)
    learning_rate: PositiveFloat = 1e-3
    # the first N encoder blocks, or block names such as [stem, stage1_block1]
    frozen_blocks: Annotated[int, Field(ge=0)] | list[str] = 1
    # cache: the augment-cache copies (+ originals); online: fresh copies every epoch;
    # none: the original volumes only, repeated to as many samples per epoch as the cache
    augmentation: Literal["cache", "online", "none"] = "cache"
    include_originals: bool = True
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.05
    patience: int = Field(10, ge=1)
    # an epoch is at least this many steps, made of whole passes over the training samples
    # (0: one pass): with few labels, the epochs that patience and the schedule count are
    # then as long as with many
    min_steps_per_epoch: int = Field(0, ge=0)
    # the validation metric that picks the bundled epoch and stops early; val_auc: macro
    # one-vs-rest ROC AUC
    monitor: Literal["val_loss", "val_accuracy", "val_auc"] = "val_loss"
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    # imbalanced labels: class_weight (loss weights) | sampler (class-balanced epochs,
    # drawn with replacement) | none
    balance: Literal["class_weight", "sampler", "none"] = "class_weight"
    schedule: Literal["cosine", "plateau"] = "cosine"  # plateau: halve on no improvement
    plateau_patience: int = Field(3, ge=1)
    # phase 2: unfreeze the last N frozen blocks and train phase2_epochs more at a lower
    # rate; each block further from the head gets layer_decay times the rate of the next
    phase2_epochs: int = Field(0, ge=0)
    unfreeze_blocks: int = Field(0, ge=0)
    phase2_learning_rate: PositiveFloat = 1e-4
    layer_decay: Annotated[float, Field(gt=0, le=1)] = 1.0

    @model_validator(mode="after")
    def _phase2(self) -> FinetuneParams:
        if bool(self.phase2_epochs) != bool(self.unfreeze_blocks):
            raise ValueError(
                "phase2_epochs and unfreeze_blocks go together (both 0: no phase 2), got "
                f"phase2_epochs={self.phase2_epochs}, unfreeze_blocks={self.unfreeze_blocks}"
            )
        return self


class EvaluateParams(Section):
    """The test-set evaluation, its intervals, test-time augmentation and the report."""

    batch_size: int = Field(16, ge=1)
    bootstrap_resamples: int = Field(1000, ge=0, le=100_000)  # 0: no intervals
    confidence: float = Field(0.95, gt=0, lt=1)
    calibration_bins: int = Field(15, ge=2, le=100)
    tta: bool = False  # also predict averaged over flips and small rotations
    tta_flip_axes: list[Annotated[int, Field(ge=0, le=2)]] = [0]
    tta_rotation_degrees: list[Annotated[float, Field(ge=-45, le=45)]] = [-5.0, 5.0]
    gallery_errors: int = Field(6, ge=0, le=100)  # most confident errors shown in the report
    saliency_per_class: int = Field(2, ge=0, le=20)  # Grad-CAM maps per class in the report


class RetrainParams(Section):
    """The retraining flow: when a new model replaces the champion (flows/retrain.py)."""

    metric: Literal[
        "balanced_accuracy", "accuracy", "macro_auc_ovr", "cohen_kappa", "log_loss", "brier", "ece"
    ] = "balanced_accuracy"
    # the challenger must beat the champion by at least this much (losses: by this much less)
    min_margin: float = Field(0.0, ge=-1, le=1)
    push: Literal["auto", "always", "never"] = "auto"  # dvc push of a promoted model
    git_commit: bool = False  # commit dvc.lock and the registry when a model is promoted
    git_tag: bool = False  # and tag the commit model-<version>


class Params(Section):
    """The whole params.yaml."""

    seed: int = Field(42, ge=0, lt=2**32)
    data: DataParams = DataParams()
    compute: ComputeParams = ComputeParams()
    synth: SynthParams = SynthParams()
    ingest: IngestParams = IngestParams()
    preprocess: PreprocessParams = PreprocessParams()
    augment: AugmentParams = AugmentParams()
    model: ModelParams = ModelParams()
    training: TrainingParams = TrainingParams()
    pretrain: PretrainParams = PretrainParams()
    finetune: FinetuneParams = FinetuneParams()
    evaluate: EvaluateParams = EvaluateParams()
    retrain: RetrainParams = RetrainParams()

    @model_validator(mode="after")
    def _frozen_within_encoder(self) -> Params:
        layout = self.model.blocks_per_stage
        names = ["stem"] + [
            f"stage{stage}_block{block}"
            for stage, blocks in enumerate(layout, start=1)
            for block in range(1, blocks + 1)
        ]
        frozen = self.finetune.frozen_blocks
        if isinstance(frozen, int) and frozen > len(names):
            raise ValueError(
                f"finetune.frozen_blocks={frozen} exceeds the encoder's {len(names)} blocks "
                "(stem + model.blocks_per_stage)"
            )
        count = frozen if isinstance(frozen, int) else len(frozen)
        if self.finetune.unfreeze_blocks > count:
            raise ValueError(
                f"finetune.unfreeze_blocks={self.finetune.unfreeze_blocks} exceeds the "
                f"{count} frozen blocks (finetune.frozen_blocks)"
            )
        if isinstance(frozen, list) and set(frozen) - set(names):
            raise ValueError(
                f"finetune.frozen_blocks names unknown blocks {sorted(set(frozen) - set(names))}; "
                f"the encoder's blocks are {names}"
            )
        return self

    @model_validator(mode="after")
    def _shape_fits_encoder(self) -> Params:
        shape = self.preprocess.target_shape
        factor = self.model.stem_stride * 2 ** (len(self.model.blocks_per_stage) - 1)
        if shape != "auto" and any(size % factor for size in shape):
            raise ValueError(
                f"preprocess.target_shape {list(shape)} must be divisible by {factor} for "
                f"model.blocks_per_stage {self.model.blocks_per_stage} (each stage after the "
                f"first halves it) with model.stem_stride {self.model.stem_stride}"
            )
        return self


def _format_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "<root>"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (not in the schema; check the spelling)"
        lines.append(f"  {path}: {message} (received {item.get('input')!r})")
    return "\n".join(lines)


def parse_params(data: dict | None, source: str = "params") -> Params:
    """Validates a params mapping, raising ``ValueError`` with every bad key path and value."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(
            f"{source}: expected a mapping at the top level, got {type(data).__name__}"
        )
    try:
        return Params.model_validate(data)
    except ValidationError as error:
        raise ValueError(f"{source}: invalid params:\n{_format_errors(error)}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Reads and validates params.yaml.

    Args:
        path: the YAML file.

    Returns:
        The validated :class:`Params`.

    Raises:
        ValueError: the file is not valid YAML or a key or value breaks the schema.
        FileNotFoundError: the file does not exist.
    """
    path = Path(path)
    return parse_params_text(path.read_text(), str(path))


def parse_params_text(text: str, source: str = "params") -> Params:
    """Validates params.yaml's text (e.g. a committed version, from ``git show``)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"{source}: not valid YAML: {error}") from None
    return parse_params(data, source)


def params_dict(params: Params) -> dict:
    """The params as plain JSON-ready data (tuples become lists)."""
    return params.model_dump(mode="json")
