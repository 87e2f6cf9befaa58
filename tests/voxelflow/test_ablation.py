from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from voxelflow.ablation import (
    Design,
    expand,
    load_design,
    markdown,
    matching,
    run_order,
    stage_params,
    summarize,
    validation_choice,
)
from voxelflow.params import params_dict, parse_params

DESIGN = {
    "seeds": [1, 2, 3],
    "regimes": "labels",
    "levers": {
        "labels": {"l25": {"ingest.label_fraction": 0.25}, "l100": {"ingest.label_fraction": 1.0}},
        "architecture": {
            "plain": {"model.architecture": "plain"},
            "resnet": {"model.architecture": "resnet"},
            "separable": {"model.architecture": "separable"},
        },
        "pretraining": {
            "none": {"pretrain.mode": "none"},
            "ssl": {"pretrain.mode": "self_supervised"},
        },
    },
}
ROOT = Path(__file__).resolve().parents[2]
PARAMS = params_dict(parse_params({}))  # resnet, self-supervised: the baselines


def test_one_at_a_time_inside_each_regime():
    experiments = expand(Design.model_validate(DESIGN), PARAMS)
    configurations = {(e.regime, e.lever, e.level) for e in experiments}
    assert configurations == {
        (regime, lever, level)
        for regime in ("l25", "l100")
        for lever, level in (
            ("baseline", "baseline"),
            ("architecture", "plain"),
            ("architecture", "separable"),
            ("pretraining", "none"),
        )
    }
    assert len(experiments) == 2 * 4 * 3
    plain = next(e for e in experiments if e.name == "abl-l25-architecture-plain-s2")
    assert plain.settings == {
        "ingest.label_fraction": 0.25,
        "model.architecture": "plain",
        "seed": 2,
    }
    assert plain.arguments() == [
        "-S",
        "ingest.label_fraction=0.25",
        "-S",
        "model.architecture=plain",
        "-S",
        "seed=2",
    ]
    assert len({e.name for e in experiments}) == len(experiments)


def test_experiments_run_grouped_by_seed_then_regime():
    """Consecutive runs of one seed reuse the workspace's data and pretraining."""
    experiments = expand(Design.model_validate(DESIGN), PARAMS)  # l25's configurations first
    ordered = run_order(experiments)
    assert sorted(ordered, key=lambda e: e.name) == sorted(experiments, key=lambda e: e.name)
    groups = [(e.seed, e.regime) for e in ordered]
    runs = [group for index, group in enumerate(groups) if index == 0 or group != groups[index - 1]]
    assert len(runs) == 6  # each seed and regime in one stretch: its data built once
    assert [seed for seed, _ in runs] == [1, 1, 2, 2, 3, 3]
    assert [regime for _, regime in runs] == ["l25", "l100"] * 3  # first come, not alphabetical
    assert [e.lever for e in ordered[:4]] == [  # the design's order within
        "baseline",
        "architecture",
        "architecture",
        "pretraining",
    ]
    reversed_order = run_order(experiments[::-1])
    assert [e.regime for e in reversed_order[:4]] == ["l100"] * 4  # as given
    assert [e.lever for e in reversed_order[:4]] == [
        "pretraining",
        "architecture",
        "architecture",
        "baseline",
    ]


def _regimes_by_pretraining(seeds: list[int], regime: str, levels: dict) -> Design:
    """A design whose regimes (``levels``) each run with and without pretraining."""
    return Design.model_validate(
        {
            "seeds": seeds,
            "regimes": regime,
            "levers": {
                regime: levels,
                "pretraining": {
                    "ssl": {"pretrain.mode": "self_supervised"},
                    "none": {"pretrain.mode": "none"},
                },
            },
        }
    )


def test_experiments_that_share_pretraining_run_together_across_regimes():
    """Regimes of fine-tuning alone (a rate) must not alternate pretraining on and off."""
    design = _regimes_by_pretraining(
        [4, 5],
        "rate",
        {"lr1": {"finetune.learning_rate": 0.001}, "lr3": {"finetune.learning_rate": 0.0003}},
    )
    experiments = expand(design, PARAMS)  # lr1: ssl, none; lr3: ssl, none
    stages = stage_params(yaml.safe_load((ROOT / "dvc.yaml").read_text()))
    ordered = run_order(experiments, stages, PARAMS)
    assert sorted(ordered, key=lambda e: e.name) == sorted(experiments, key=lambda e: e.name)
    modes = [(e.seed, e.settings.get("pretrain.mode", "self_supervised")) for e in ordered]
    assert (
        modes
        == [(4, "self_supervised")] * 2
        + [(4, "none")] * 2
        + [(5, "self_supervised")] * 2
        + [(5, "none")] * 2
    )  # pretraining runs twice per seed, not four times
    assert [e.regime for e in ordered[:4]] == ["lr1", "lr3", "lr1", "lr3"]  # first come within
    # an override equal to params.yaml's value is the same pretraining as no override
    explicit = [
        replace(e, settings={**e.settings, "pretrain.mode": "self_supervised"})
        if e.level == "baseline"
        else e
        for e in experiments
    ]
    assert [e.name for e in run_order(explicit, stages, PARAMS)] == [e.name for e in ordered]
    # without the stages: by seed and regime only, as before
    assert [e.regime for e in run_order(experiments)[:4]] == ["lr1", "lr1", "lr3", "lr3"]


def test_stage_params_reads_each_stages_params_yaml_entries_in_order():
    dvc_yaml = {
        "stages": {
            "prepare": {"cmd": "x", "params": ["seed", "prepare"]},
            "train": {"cmd": "y", "params": ["train.rate", {"other.yaml": ["lr"]}]},
            "report": {"cmd": "z"},
        }
    }
    assert stage_params(dvc_yaml) == [["seed", "prepare"], ["train.rate"], []]
    assert stage_params({}) == []


def test_stage_params_takes_training_stages_before_their_siblings():
    """A topological order (a stage after what it reads, wherever dvc.yaml lists it); of
    the stages ready, training first."""
    dvc_yaml = {
        "stages": {
            "prep": {
                "cmd": "p",
                "deps": ["${data.raw}/x.csv"],
                "params": ["prep"],
                "outs": ["data/prep"],
            },
            "make": {"cmd": "m", "params": ["make"], "outs": ["${data.raw}"]},
            "cache": {
                "cmd": "c",
                "deps": ["data/prep"],
                "params": ["cache"],
                "outs": ["data/cache"],
            },
            "train": {
                "cmd": "t",
                "deps": ["data/prep/"],
                "params": ["train"],
                "outs": ["models/m", {"models/ckpt": {"persist": True, "cache": False}}],
            },
            "tune": {
                "cmd": "f",
                "deps": ["data/cache", "models/m"],
                "params": ["tune"],
                "outs": [{"models/tuned.ckpt": {"persist": True}}],
            },
            "early": {"cmd": "e", "params": ["early"]},  # reads nothing: ready at once
        }
    }
    order = [entries[0] for entries in stage_params(dvc_yaml, {"data": {"raw": "data/raw"}})]
    assert order == ["make", "prep", "train", "cache", "tune", "early"]
    # unresolved, ${data.raw} links nothing: prep, listed first, is ready at once
    assert [e[0] for e in stage_params(dvc_yaml)] == [
        "prep",
        "train",
        "make",
        "cache",
        "tune",
        "early",
    ]
    dvc_yaml["stages"]["early"]["outs"] = [{"x": {"persist": True}}]  # a training stage
    assert [e[0] for e in stage_params(dvc_yaml)][:2] == ["early", "prep"]
    # voxelflow's own pipeline: pretraining before the augmentation cache, after its data
    order = stage_params(yaml.safe_load((ROOT / "dvc.yaml").read_text()), PARAMS)
    assert order.index(["seed", "model", "training", "pretrain"]) < order.index(["seed", "augment"])
    assert order.index(["preprocess"]) < order.index(["seed", "model", "training", "pretrain"])


def test_experiments_that_share_pretraining_run_together_across_augmentation():
    """Regimes of augmentation (its own stage, before pretraining in dvc.yaml) must not
    alternate pretraining on and off: the cache is rebuilt instead, which is cheap."""
    design = _regimes_by_pretraining(
        [1],
        "augmentation",
        {"on": {"augment.rotation_degrees": 12.0}, "off": {"augment.rotation_degrees": 0.0}},
    )
    experiments = expand(design, PARAMS)  # on: ssl, none; off: ssl, none
    stages = stage_params(yaml.safe_load((ROOT / "dvc.yaml").read_text()), PARAMS)
    ordered = run_order(experiments, stages, PARAMS)
    modes = [e.settings.get("pretrain.mode", "self_supervised") for e in ordered]
    assert modes == ["self_supervised", "self_supervised", "none", "none"]
    assert [e.regime for e in ordered] == ["on", "off", "on", "off"]


def test_a_full_design_crosses_every_level():
    design = Design.model_validate({**DESIGN, "design": "full", "regimes": None})
    experiments = expand(design, PARAMS)
    # 2 x 3 x 2 combinations, the all-baseline one counted once
    assert len({(e.regime, e.lever, e.level) for e in experiments}) == 12


def test_a_regime_lever_may_hold_one_regime_but_a_lever_needs_two_levels():
    one = {**DESIGN, "levers": {**DESIGN["levers"], "labels": DESIGN["levers"]["labels"].copy()}}
    del one["levers"]["labels"]["l100"]
    experiments = expand(Design.model_validate(one), PARAMS)  # a slice: one regime
    assert {e.regime for e in experiments} == {"l25"}
    full = expand(Design.model_validate(DESIGN), PARAMS)
    assert {e.name for e in experiments} <= {e.name for e in full}  # same names: reused
    with pytest.raises(ValueError, match="lever 'labels' needs at least two levels"):
        Design.model_validate({**one, "regimes": None})


def test_a_lever_without_the_current_setting_is_refused():
    design = Design.model_validate(
        {
            **DESIGN,
            "levers": {
                **DESIGN["levers"],
                "width": {"w4": {"model.width": 4}, "w16": {"model.width": 16}},
            },
        }
    )
    with pytest.raises(ValueError, match="lever 'width': none of its levels"):
        expand(design, PARAMS)


def test_design_file_errors_name_the_file(tmp_path):
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump({**DESIGN, "sedes": [1]}))
    with pytest.raises(ValueError, match="ablation.yaml: invalid ablation design"):
        load_design(path)
    path.write_text(yaml.safe_dump({**DESIGN, "regimes": "nothing"}))
    with pytest.raises(ValueError, match="regimes 'nothing' is not one of the levers"):
        load_design(path)


def test_summary_pairs_seeds_and_marks_effects_beyond_the_spread():
    design = Design.model_validate({**DESIGN, "regimes": None, "bootstrap_resamples": 500})
    experiments = expand(design, PARAMS)
    results = {}
    for e in experiments:
        base = {1: 0.60, 2: 0.70, 3: 0.65}[e.seed]
        lift = {"none": -0.20, "plain": 0.01}.get(e.level, 0.0)
        val_auc = {"none": 0.70, "plain": 0.90, "separable": 0.99}.get(e.level, 0.80)
        results[e.name] = {
            "balanced_accuracy": base + lift,
            "macro_auc_ovr": 0.8,
            "val_auc": val_auc,
            "minutes": 2,
        }
    del results["abl-all-architecture-separable-s3"]  # not run yet
    rows = {(row["lever"], row["level"]): row for row in summarize(design, experiments, results)}
    none = rows[("pretraining", "none")]["balanced_accuracy"]
    assert none["mean"] == pytest.approx(0.45)
    assert none["effect"] == pytest.approx(-0.20) and none["beyond_spread"]
    plain = rows[("architecture", "plain")]["balanced_accuracy"]
    assert plain["effect"] == pytest.approx(0.01) and not plain["beyond_spread"]
    assert rows[("architecture", "separable")]["runs"] == 2
    low, high = rows[("baseline", "baseline")]["balanced_accuracy"]["interval"]
    assert 0.60 <= low <= 0.65 <= high <= 0.70
    text = markdown(design, list(rows.values()), "voxelflow ablate", "ablation.png")
    assert "-0.200 ± 0.000 **(beyond spread)**" in text
    assert "| all | pretraining | none | 3 | 0.700 | 0.450 ± 0.050" in text
    assert "val_auc" not in rows[("pretraining", "none")]["balanced_accuracy"]


def test_defaults_are_chosen_on_validation_only():
    design = Design.model_validate({**DESIGN, "regimes": None})
    experiments = expand(design, PARAMS)
    results = {}
    for e in experiments:
        jitter = {1: -0.01, 2: 0.0, 3: 0.01}[e.seed]
        if e.level == "none":  # ahead by 0.01, but its seeds spread by 0.05
            jitter *= 5
        val_auc = {"none": 0.81, "plain": 0.90, "separable": 0.99}.get(e.level, 0.80) + jitter
        test = {"none": 0.99}.get(e.level, 0.5)  # the test split never decides
        results[e.name] = {"balanced_accuracy": test, "macro_auc_ovr": test, "val_auc": val_auc}
    del results["abl-all-architecture-separable-s3"]  # fewer runs: not a candidate yet
    choices = {c["lever"]: c for c in validation_choice(summarize(design, experiments, results))}
    assert choices["pretraining"]["best"] == "none"  # best on validation, within the spread:
    assert choices["pretraining"]["chosen"] == "baseline"  # the default is kept
    assert choices["pretraining"]["spread"] == pytest.approx(0.05)
    assert choices["architecture"]["best"] == choices["architecture"]["chosen"] == "plain"
    assert choices["architecture"]["val_auc"] == pytest.approx(0.90)
    assert choices["architecture"]["baseline_val_auc"] == pytest.approx(0.80)
    text = markdown(design, summarize(design, experiments, results), "voxelflow ablate", None)
    assert "| all | architecture | plain | 0.900 | 0.800 | 0.010 | plain |" in text
    assert "| all | pretraining | none | 0.810 | 0.800 | 0.050 | baseline |" in text


def test_published_references_are_tabled_beside_each_regime_baseline():
    design = Design.model_validate(
        {
            "seeds": [1, 2],
            "regimes": "source",
            "levers": {"source": {"r28": {"data.raw_dir": "data/a28"}}},
            "references": {
                "source": "MedMNIST v2, Table 3",
                "rows": {"ResNet-18 + 3D": {"macro_auc_ovr": 0.827, "accuracy": 0.721}},
            },
        }
    )
    experiments = expand(design, PARAMS)
    results = {
        e.name: {"balanced_accuracy": 0.7, "macro_auc_ovr": 0.85 + e.seed / 100, "accuracy": 0.8}
        for e in experiments
    }
    text = markdown(design, summarize(design, experiments, results), "voxelflow ablate", None)
    assert "Compared with published results (MedMNIST v2, Table 3)" in text
    assert text.startswith("# Ablation: what each lever buys\n")
    assert "| voxelflow, r28 (2 seeds) | 0.865 ± 0.007" in text
    assert "| ResNet-18 + 3D (published) | 0.827 | 0.721 |" in text
    with pytest.raises(ValueError, match="auc"):
        Design.model_validate({**DESIGN, "references": {"source": "x", "rows": {"m": {"auc": 1}}}})


@pytest.mark.parametrize(
    ("design_file", "params_file", "count"),
    [
        ("benchmarks/ablation.yaml", "params.yaml", 54),
        ("benchmarks/ablation_slice.yaml", "params.yaml", 9),
        ("examples/adrenalmnist3d/ablation.yaml", "examples/adrenalmnist3d/params.yaml", 6),
    ],
)
def test_the_committed_designs_expand_against_their_params(design_file, params_file, count):
    from pathlib import Path

    from voxelflow.params import load_params

    root = Path(__file__).resolve().parents[2]
    design = load_design(root / design_file)
    experiments = expand(design, params_dict(load_params(root / params_file)))
    assert len(experiments) == count
    assert len({e.name for e in experiments}) == count


def test_a_run_counts_for_an_experiment_only_with_its_settings_and_baseline():
    """Names repeat across designs and commits: the run must hold the committed params
    with the experiment's settings, or the experiment is still to run."""
    design = Design(
        seeds=[1],
        baseline={"model.blocks_per_stage": [1, 1, 1, 1]},
        levers={
            "pretraining": {"ssl": {"pretrain.mode": "ssl"}, "none": {"pretrain.mode": "none"}}
        },
    )
    committed = {"seed": 42, "pretrain": {"mode": "ssl"}, "preprocess": {"clip": [0.5, 100.0]}}
    baseline, none = expand(design, committed)
    assert baseline.name == "abl-all-baseline-baseline-s1"

    def run(auc, **changes):
        params = {"seed": 1, "pretrain.mode": "ssl", "preprocess.clip": [0.5, 100.0]}
        params["model.blocks_per_stage"] = [1, 1, 1, 1]
        return {"macro_auc_ovr": auc, "params": {**params, **changes}}

    other_design = run(0.1, **{"model.blocks_per_stage": [1, 1]})
    older_default = run(0.2, **{"preprocess.clip": [0.5, 99.9]})
    runs = {
        baseline.name: [other_design, older_default, run(0.3)],
        none.name: [run(0.4, **{"pretrain.mode": "none"})],
    }
    found = matching([baseline, none], runs, committed)
    assert found[baseline.name]["macro_auc_ovr"] == 0.3
    assert found[none.name]["macro_auc_ovr"] == 0.4
    # only mismatching runs, or runs whose params are unknown: not run yet
    runs = {baseline.name: [other_design, older_default, {"macro_auc_ovr": 0.5}]}
    assert matching([baseline, none], runs, committed) == {}
