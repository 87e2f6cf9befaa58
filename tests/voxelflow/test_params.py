from pathlib import Path

import pytest

from voxelflow.params import Params, load_params, parse_params

REPO = Path(__file__).resolve().parents[2]


def test_repository_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert params.preprocess.target_shape == (32, 32, 32)
    assert params.ingest.classes == ["normal", "lesion", "atrophy"]


def test_defaults_fill_missing_sections():
    params = parse_params({"seed": 3})
    assert params.seed == 3
    assert params.model.architecture == "resnet"


def test_unknown_key_names_its_path():
    with pytest.raises(ValueError, match=r"finetune\.epochz: unknown key"):
        parse_params({"finetune": {"epochz": 3}})


def test_wrong_value_names_path_and_value():
    with pytest.raises(ValueError) as error:
        parse_params({"model": {"architecture": "vgg"}})
    assert "model.architecture" in str(error.value)
    assert "'vgg'" in str(error.value)


def test_split_fractions_must_sum_to_one():
    with pytest.raises(ValueError, match="must be 1"):
        parse_params({"ingest": {"splits": {"train": 0.8, "val": 0.15, "test": 0.15}}})


def test_target_shape_must_be_multiple_of_eight():
    with pytest.raises(ValueError, match="preprocess.target_shape"):
        parse_params({"preprocess": {"target_shape": [30, 32, 32]}})


def test_frozen_blocks_cannot_exceed_encoder():
    with pytest.raises(ValueError, match="frozen_blocks=9 exceeds"):
        parse_params({"model": {"blocks_per_stage": [1, 1]}, "finetune": {"frozen_blocks": 9}})


def test_load_reports_bad_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_params(path)


def test_load_reports_file_name(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("seed: -1\n")
    with pytest.raises(ValueError, match="mine.yaml"):
        load_params(path)


def test_top_level_must_be_mapping():
    with pytest.raises(ValueError, match="mapping"):
        parse_params([1, 2])  # type: ignore[arg-type]


def test_params_model_is_plain_defaults():
    assert Params().synth.classes == ["normal", "lesion", "atrophy"]


def test_model_layouts_heads_and_training_devices():
    params = parse_params(
        {
            "model": {"blocks_per_stage": "resnet18", "head_units": [16, 8], "stem_stride": 2},
            "training": {
                "precision": "mixed_bfloat16",
                "jit_compile": True,
                "deterministic": False,
            },
        }
    )
    assert params.model.blocks_per_stage == [2, 2, 2, 2]
    assert params.model.head_units == [16, 8]
    assert params.training.precision == "mixed_bfloat16" and params.training.jit_compile is True
    assert parse_params({}).training.distribution == "auto"
    with pytest.raises(ValueError, match="unknown layout 'resnet50'"):
        parse_params({"model": {"blocks_per_stage": "resnet50"}})
    with pytest.raises(ValueError, match="training.precision"):
        parse_params({"training": {"precision": "float64"}})
    with pytest.raises(ValueError, match="jit_compile: true needs deterministic: false"):
        parse_params({"training": {"jit_compile": True}})
    with pytest.raises(ValueError, match="model.stem_stride"):
        parse_params({"model": {"stem_stride": 3}})
    names = {"frozen_blocks": ["stem", "stage2_block1"]}
    assert parse_params({"finetune": names}).finetune.frozen_blocks == names["frozen_blocks"]
    with pytest.raises(ValueError, match="unknown blocks \\['stage3_block1'\\]"):
        parse_params({"finetune": {"frozen_blocks": ["stem", "stage3_block1"]}})
    with pytest.raises(ValueError, match="target_shape \\[32, 32, 40\\] must be divisible by 16"):
        parse_params(
            {
                "model": {"blocks_per_stage": "resnet10", "stem_stride": 2},
                "preprocess": {"target_shape": [32, 32, 40]},
            }
        )
    # a layout name counts its blocks for finetune.frozen_blocks too
    with pytest.raises(ValueError, match="exceeds the encoder's 5 blocks"):
        parse_params({"model": {"blocks_per_stage": "resnet10"}, "finetune": {"frozen_blocks": 6}})


def test_pretraining_and_fine_tuning_params_are_checked():
    with pytest.raises(ValueError, match="inpainting_probability \\+ outpainting_probability"):
        parse_params({"pretrain": {"inpainting_probability": 0.7, "outpainting_probability": 0.5}})
    with pytest.raises(ValueError, match="mode: supervised needs source_dir"):
        parse_params({"pretrain": {"mode": "supervised"}})
    with pytest.raises(ValueError, match="subvolume_scale must be \\[low, high\\]"):
        parse_params({"pretrain": {"subvolume_scale": [0.9, 0.5]}})
    with pytest.raises(ValueError, match="phase2_epochs and unfreeze_blocks go together"):
        parse_params({"finetune": {"phase2_epochs": 3}})
    with pytest.raises(ValueError, match="unfreeze_blocks=2 exceeds the 1 frozen blocks"):
        parse_params({"finetune": {"phase2_epochs": 3, "unfreeze_blocks": 2}})
    tune = parse_params(
        {"finetune": {"monitor": "val_auc", "balance": "sampler", "schedule": "plateau"}}
    ).finetune
    assert (tune.monitor, tune.balance, tune.schedule) == ("val_auc", "sampler", "plateau")


def test_the_example_params_name_every_key_of_the_repository_params():
    """`cp examples/.../params.yaml params.yaml` must leave no key dvc.yaml depends on."""
    import yaml

    main = yaml.safe_load((REPO / "params.yaml").read_text())
    example = yaml.safe_load((REPO / "examples" / "adrenalmnist3d" / "params.yaml").read_text())
    missing = [section for section in main if section not in example]
    for section, values in main.items():
        if isinstance(values, dict) and section in example:
            missing += [f"{section}.{key}" for key in values if key not in example[section]]
    assert missing == []
    load_params(REPO / "examples" / "adrenalmnist3d" / "params.yaml")
