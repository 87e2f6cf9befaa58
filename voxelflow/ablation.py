"""The ablation: what each lever buys, over seeds, from one design file.

A design (``benchmarks/ablation.yaml``) names levers and their levels as params overrides
(dotted keys, as ``dvc exp run -S`` takes them), the seeds, and optionally one lever whose
levels are *regimes* (such as the label fraction): every other lever is varied one at a
time from the baseline inside each regime (``one_at_a_time``), or all levels are crossed
(``full``). Each (configuration, seed) is one DVC experiment, named so that its cell can be
found again: ``abl-<regime>-<lever>-<level>-s<seed>``.

This module is pure: it expands a design into experiments and turns their metrics into the
table (mean, standard deviation, bootstrap interval of the mean over seeds, and the effect
of each level against the baseline of its regime, paired by seed). ``flows/ablation.py``
runs the experiments and reads them back from ``dvc exp show``.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

METRICS = ("balanced_accuracy", "macro_auc_ovr")  # test split: reported, never chosen on
SELECTION = ("val_auc", "val_loss")  # validation split, at the selected epoch: the choice
REPORTED = ("accuracy", "minutes")  # summarised over seeds, without effects
BASELINE = "baseline"
NAME = re.compile(r"^[a-z0-9][a-z0-9.]*$")


class References(BaseModel):
    """Published results on the same test split, e.g. a paper's table: ``rows`` maps a
    method to its figures (``macro_auc_ovr``, ``accuracy``, ``balanced_accuracy``)."""

    model_config = ConfigDict(extra="forbid")

    source: str  # the citation, and which table the figures were taken from
    rows: dict[str, dict[Literal["macro_auc_ovr", "accuracy", "balanced_accuracy"], float]]


class Design(BaseModel):
    """``benchmarks/ablation.yaml``: levers, levels (params overrides), seeds, regimes."""

    model_config = ConfigDict(extra="forbid")

    seeds: Annotated[list[int], Field(min_length=1)] = [1, 2, 3]
    # seed: everything seeded varies (data, splits, kept labels, training);
    # training.seed: the same data and splits, only training's randomness
    seed_key: Literal["seed", "training.seed"] = "seed"
    design: Literal["one_at_a_time", "full"] = "one_at_a_time"
    baseline: dict[str, object] = {}
    levers: dict[str, dict[str, dict[str, object]]]
    regimes: str | None = None  # a lever whose levels are crossed with everything else
    bootstrap_resamples: int = Field(10_000, ge=100)
    confidence: float = Field(0.95, gt=0, lt=1)
    references: References | None = None  # published figures, tabled beside the baselines
    title: str = "Ablation: what each lever buys"

    @field_validator("levers")
    @classmethod
    def _names(cls, levers: dict) -> dict:
        for lever, levels in levers.items():
            for name in (lever, *levels):
                if not NAME.match(name):
                    raise ValueError(
                        f"lever or level name {name!r}: use lower-case letters, digits and "
                        "'.' (it becomes part of an experiment name)"
                    )
            if not levels:
                raise ValueError(f"lever {lever!r} has no levels")
        return levers

    @model_validator(mode="after")
    def _compared(self) -> Design:
        # a lever compares levels; the regimes lever only slices (one level: one regime)
        for lever, levels in self.levers.items():
            if lever != self.regimes and len(levels) < 2:
                raise ValueError(f"lever {lever!r} needs at least two levels, got {list(levels)}")
        return self


def load_design(path: str | Path) -> Design:
    """Reads and checks a design file; ``ValueError`` names the file and the problem."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
        design = Design.model_validate(data or {})
    except FileNotFoundError:
        raise ValueError(f"{path}: ablation design not found") from None
    except (yaml.YAMLError, ValidationError) as error:
        raise ValueError(f"{path}: invalid ablation design: {error}") from None
    if design.regimes is not None and design.regimes not in design.levers:
        raise ValueError(
            f"{path}: regimes {design.regimes!r} is not one of the levers {list(design.levers)}"
        )
    return design


@dataclass(frozen=True)
class Experiment:
    """One run: a configuration (its lever levels) under one seed."""

    name: str
    regime: str  # the regime's level, or "all"
    lever: str  # the lever varied, or "baseline"
    level: str
    seed: int
    settings: dict[str, object] = field(default_factory=dict)

    def arguments(self) -> list[str]:
        """``-S key=value`` pairs for ``dvc exp run`` (values as YAML scalars)."""
        pairs = []
        for key, value in self.settings.items():
            text = yaml.safe_dump(value, default_flow_style=True).strip()
            text = text.removesuffix("\n...").strip()
            pairs += ["-S", f"{key}={text}"]
        return pairs


def _level_of(levels: dict[str, dict], current: dict[str, object]) -> str | None:
    """The level whose overrides the current params already hold (the baseline level)."""
    for name, overrides in levels.items():
        if all(current.get(key) == value for key, value in overrides.items()):
            return name
    return None


def flatten(params: dict, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: params as ``-S`` keys."""
    flat = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


_MISSING = object()


def matching(
    experiments: list[Experiment], runs: dict[str, list[dict]], committed: dict
) -> dict[str, dict]:
    """Each experiment's recorded run: of the runs under its name (``runs``, best first),
    the first whose params (``run["params"]``, as ``-S`` keys) hold every value of the
    ``committed`` params.yaml with the experiment's settings applied. A name alone is not
    enough: with ``--all-commits`` an older commit may have run it from other defaults, and
    another design may use the same name for other settings. Experiments with no such run
    are left out (not run yet)."""
    base = flatten(committed)
    found = {}
    for experiment in experiments:
        expected = {**base, **experiment.settings}
        for run in runs.get(experiment.name, []):
            params = run.get("params")
            if params is not None and all(
                params.get(key, _MISSING) == value for key, value in expected.items()
            ):
                found[experiment.name] = run
                break
    return found


def expand(design: Design, current_params: dict) -> list[Experiment]:
    """Every experiment of the design, baselines first, in a stable order.

    ``current_params`` (params.yaml as a dict) decides which level of each lever is the
    baseline: the level whose overrides it already holds. A lever with no such level is
    refused (its effect would have nothing to be measured against).
    """
    current = {**flatten(current_params), **design.baseline}
    regime_levels = design.levers[design.regimes] if design.regimes else {"all": {}}
    levers = {name: levels for name, levels in design.levers.items() if name != design.regimes}
    defaults = {}
    for lever, levels in levers.items():
        found = _level_of(levels, current)
        if found is None:
            raise ValueError(
                f"lever {lever!r}: none of its levels {list(levels)} matches params.yaml; "
                "one level must be the current setting (the baseline)"
            )
        defaults[lever] = found
    configurations: list[tuple[str, str, str, dict]] = []
    for regime, regime_overrides in regime_levels.items():
        base = {**design.baseline, **regime_overrides}
        configurations.append((regime, BASELINE, BASELINE, base))
        if design.design == "one_at_a_time":
            for lever, levels in levers.items():
                for level, overrides in levels.items():
                    if level != defaults[lever]:
                        configurations.append((regime, lever, level, {**base, **overrides}))
        else:
            names = list(levers)
            for combination in itertools.product(*(levers[name] for name in names)):
                chosen = dict(zip(names, combination, strict=True))
                if chosen == defaults:
                    continue
                settings = dict(base)
                for name, level in chosen.items():
                    settings.update(levers[name][level])
                label = "+".join(f"{name}.{level}" for name, level in chosen.items())
                configurations.append((regime, "combination", label, settings))
    experiments = []
    for regime, lever, level, settings in configurations:
        for seed in design.seeds:
            name = f"abl-{regime}-{lever}-{level}-s{seed}".replace("%", "pct")
            name = re.sub(r"[^A-Za-z0-9.+-]", "-", name)
            experiments.append(
                Experiment(name, regime, lever, level, seed, {**settings, design.seed_key: seed})
            )
    return experiments


def stage_params(dvc_yaml: dict, params: dict | None = None) -> list[list[str]]:
    """Each stage's ``params`` entries (``seed``, ``synth``, ``pretrain.mode`` ...) from a
    loaded dvc.yaml, in the order :func:`run_order` groups by: a topological order of the
    stages (a stage after every stage whose outputs it reads) that, of the stages ready at
    each point, takes a training stage first (one with a ``persist: true`` output, its
    checkpoints) and the others in the order dvc.yaml lists them. So experiments that share
    pretraining run together even where they differ in a cheaper sibling stage, such as
    the augmentation cache. ``params`` (params.yaml, loaded) resolves ``${key}`` in deps
    and outs; a path left unresolved links no stages. Entries of other params files (a
    ``{file: [keys]}`` mapping) are not params.yaml's and are left out."""
    flat = flatten(params or {})

    def resolve(path: str) -> str:
        return re.sub(
            r"\$\{([^}]+)\}", lambda m: str(flat.get(m.group(1).strip(), m.group(0))), path
        )

    def paths(entries) -> list[tuple[str, dict]]:
        listed = []
        for entry in entries or []:
            if isinstance(entry, dict):
                listed += [(resolve(str(k)), v or {}) for k, v in entry.items()]
            else:
                listed.append((resolve(str(entry)), {}))
        return [(path.rstrip("/"), options) for path, options in listed]

    stages = {name: stage or {} for name, stage in ((dvc_yaml or {}).get("stages") or {}).items()}
    outs = {name: paths(stage.get("outs")) for name, stage in stages.items()}
    deps = {name: paths(stage.get("deps")) for name, stage in stages.items()}
    training = {
        name for name, listed in outs.items() if any(o.get("persist") for _, o in listed)
    }

    def reads(stage: str, other: str) -> bool:
        return other != stage and any(
            dep == out or dep.startswith(out + "/")
            for dep, _ in deps[stage]
            for out, _ in outs[other]
            if "${" not in dep and "${" not in out
        )

    upstream = {name: {o for o in stages if reads(name, o)} for name in stages}
    order: list[str] = []
    while len(order) < len(stages):
        ready = [n for n in stages if n not in order and upstream[n] <= set(order)]
        if not ready:  # a cycle (DVC refuses one): the rest in dvc.yaml's order
            ready = [n for n in stages if n not in order]
        order.append(next((n for n in ready if n in training), ready[0]))
    return [
        [entry for entry in stages[name].get("params", []) if isinstance(entry, str)]
        for name in order
    ]


def _reaches(key: str, entries: list[str]) -> bool:
    return any(key == entry or key.startswith(entry + ".") for entry in entries)


def run_order(
    experiments: list[Experiment],
    stages: list[list[str]] = (),
    current: dict | None = None,
) -> list[Experiment]:
    """The order to run experiments in: by seed, then by what each stage sees, then by
    regime, in the order given within.

    ``dvc exp run`` leaves an experiment's outputs and dvc.lock in the workspace, and the
    next one skips every stage whose params and inputs did not change. So experiments are
    grouped by the settings that reach each stage (``stages``: each stage's params entries
    in pipeline order, training stages before their siblings, from :func:`stage_params`;
    ``current``: params.yaml, for the values an experiment does not override), the first
    stage first: one seed's data stages run once, and experiments that share pretraining
    run one after another whatever their regime or augmentation, so it runs once per seed
    instead of once per alternation. Groups keep the order in which they first come.
    """
    current = flatten(current or {})
    first_come: list[dict] = [{} for _ in stages]

    def key(experiment: Experiment) -> tuple:
        effective = {**current, **experiment.settings}
        ranks = []
        for entries, seen in zip(stages, first_come, strict=True):
            signature = tuple(
                sorted((k, repr(v)) for k, v in effective.items() if _reaches(k, entries))
            )
            ranks.append(seen.setdefault(signature, len(seen)))
        return (experiment.seed, *ranks, regimes.index(experiment.regime))

    regimes = list(dict.fromkeys(e.regime for e in experiments))  # first come, first run
    keys = [key(experiment) for experiment in experiments]  # first come: in the given order
    order = sorted(range(len(experiments)), key=keys.__getitem__)
    return [experiments[index] for index in order]


def mean_interval(
    values: list[float], resamples: int, confidence: float, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over seeds (degenerate for one value)."""
    data = np.asarray(values, dtype=float)
    if data.size < 2:
        return float(data.mean()), float(data.mean())
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def summarize(
    design: Design, experiments: list[Experiment], results: dict[str, dict]
) -> list[dict]:
    """One row per (regime, lever, level): runs done, and per metric the mean, standard
    deviation and interval over seeds, and the effect against the regime's baseline (mean
    of the paired per-seed differences, their standard deviation, and whether the effect
    is larger than the seed-to-seed spread of both arms)."""
    cells: dict[tuple[str, str, str], dict[int, dict]] = {}
    for experiment in experiments:
        key = (experiment.regime, experiment.lever, experiment.level)
        cells.setdefault(key, {})
        if experiment.name in results:
            cells[key][experiment.seed] = results[experiment.name]
    rows = []
    for (regime, lever, level), by_seed in cells.items():
        base = cells.get((regime, BASELINE, BASELINE), {})
        row = {"regime": regime, "lever": lever, "level": level, "runs": len(by_seed)}
        for metric in (*METRICS, *SELECTION, *REPORTED):
            values = [run[metric] for run in by_seed.values() if run.get(metric) is not None]
            if not values:
                continue
            low, high = mean_interval(values, design.bootstrap_resamples, design.confidence)
            row[metric] = {
                "mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "interval": [low, high],
                "values": values,
            }
            paired = [
                by_seed[seed][metric] - base[seed][metric]
                for seed in sorted(set(by_seed) & set(base))
                if by_seed[seed].get(metric) is not None and base[seed].get(metric) is not None
            ]
            if lever != BASELINE and paired and metric in METRICS:
                spread = max(
                    row[metric]["std"],
                    float(np.std([base[s][metric] for s in base], ddof=1)) if len(base) > 1 else 0,
                )
                effect = float(np.mean(paired))
                row[metric]["effect"] = effect
                row[metric]["effect_std"] = (
                    float(np.std(paired, ddof=1)) if len(paired) > 1 else 0.0
                )
                row[metric]["beyond_spread"] = bool(len(paired) > 1 and abs(effect) > spread)
        rows.append(row)
    return rows


def validation_choice(rows: list[dict]) -> list[dict]:
    """For every regime and lever, the level (the baseline included) with the highest mean
    validation AUC over its seeds: the evidence for a default, from the validation split
    only. It replaces the baseline (``chosen``) only when its lead exceeds the seed-to-seed
    spread (standard deviation) of the validation AUC of both; otherwise the baseline is
    kept, as the evidence does not tell them apart. Cells with fewer runs than the baseline
    are left out of the choice."""
    choices = []
    for regime in dict.fromkeys(row["regime"] for row in rows):
        inside = [row for row in rows if row["regime"] == regime]
        base = next((row for row in inside if row["lever"] == BASELINE), None)
        if not base or not base.get("val_auc"):
            continue
        for lever in dict.fromkeys(row["lever"] for row in inside if row["lever"] != BASELINE):
            candidates = [base] + [
                row
                for row in inside
                if row["lever"] == lever and row.get("val_auc") and row["runs"] >= base["runs"]
            ]
            best = max(candidates, key=lambda row: row["val_auc"]["mean"])
            lead = best["val_auc"]["mean"] - base["val_auc"]["mean"]
            spread = max(best["val_auc"]["std"], base["val_auc"]["std"])
            clear = best is not base and len(best["val_auc"]["values"]) > 1 and lead > spread
            choices.append(
                {
                    "regime": regime,
                    "lever": lever,
                    "best": BASELINE if best is base else best["level"],
                    "val_auc": best["val_auc"]["mean"],
                    "baseline_val_auc": base["val_auc"]["mean"],
                    "spread": spread,
                    "chosen": best["level"] if clear else BASELINE,
                }
            )
    return choices


def _references(references: References, rows: list[dict]) -> list[str]:
    """Each regime's baseline beside the published figures, on the same test split."""
    metrics = [
        m
        for m in ("macro_auc_ovr", "accuracy", "balanced_accuracy")
        if any(m in figures for figures in references.rows.values())
    ]
    names = {
        "macro_auc_ovr": "test AUC",
        "accuracy": "test accuracy",
        "balanced_accuracy": "test balanced accuracy",
    }
    lines = [
        "",
        f"Compared with published results ({references.source}):",
        "",
        "| method | " + " | ".join(names[m] for m in metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for row in rows:
        if row["lever"] == BASELINE and row["runs"]:
            cells = [_cell(row.get(metric)) for metric in metrics]
            lines.append(
                f"| voxelflow, {row['regime']} ({row['runs']} seeds) | " + " | ".join(cells) + " |"
            )
    for method, figures in references.rows.items():
        cells = [f"{figures[m]:.3f}" if m in figures else "-" for m in metrics]
        lines.append(f"| {method} (published) | " + " | ".join(cells) + " |")
    return lines


def _cell(value: dict | None, digits: int = 3) -> str:
    if not value:
        return "-"
    low, high = value["interval"]
    mean, std = value["mean"], value["std"]
    return f"{mean:.{digits}f} ± {std:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _effect(value: dict | None) -> str:
    if not value or "effect" not in value:
        return ""
    mark = " **(beyond spread)**" if value["beyond_spread"] else ""
    return f"{value['effect']:+.3f} ± {value['effect_std']:.3f}{mark}"


def markdown(design: Design, rows: list[dict], command: str, figure: str | None) -> str:
    """``benchmarks/ablation.md``: the table, how to read it, and the commands behind it."""
    lines = [
        f"# {design.title}",
        "",
        f"Regenerate: `{command}`. Every cell is a set of DVC experiments "
        "(`dvc exp show --only-changed` lists them; `dvc exp apply <name>` restores one).",
        "",
        f"Seeds per cell: {design.seeds} ({design.seed_key}). Each cell: mean ± standard "
        f"deviation over seeds [{int(design.confidence * 100)}% percentile bootstrap interval "
        "of the mean]; effect: the mean of the paired per-seed differences from the baseline "
        "of the same regime ± their standard deviation, marked when its size exceeds the "
        "seed-to-seed spread (standard deviation) of both arms.",
        "",
        "| regime | lever | level | runs | validation AUC | test balanced accuracy | effect "
        "| test macro AUC | effect | fine-tune minutes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        minutes = f"{row['minutes']['mean']:.1f}" if row.get("minutes") else "-"
        validation = f"{row['val_auc']['mean']:.3f}" if row.get("val_auc") else "-"
        lines.append(
            f"| {row['regime']} | {row['lever']} | {row['level']} | {row['runs']} | {validation} "
            f"| {_cell(row.get('balanced_accuracy'))} | {_effect(row.get('balanced_accuracy'))} "
            f"| {_cell(row.get('macro_auc_ovr'))} | {_effect(row.get('macro_auc_ovr'))} "
            f"| {minutes} |"
        )
    choices = validation_choice(rows)
    if choices:
        lines += [
            "",
            "Validation AUC: Keras's AUC on the validation split at the epoch each run "
            "selected (mean over seeds). Defaults are chosen on it alone; the test columns "
            "report, they do not choose. The level each lever would take, by regime: the "
            "best on validation replaces the baseline only when its lead exceeds the "
            "seed-to-seed spread of both:",
            "",
            "| regime | lever | best on validation | its validation AUC | baseline's "
            "| spread (std) | chosen |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {choice['regime']} | {choice['lever']} | {choice['best']} "
            f"| {choice['val_auc']:.3f} | {choice['baseline_val_auc']:.3f} "
            f"| {choice['spread']:.3f} | {choice['chosen']} |"
            for choice in choices
        ]
    if design.references:
        lines += _references(design.references, rows)
    if figure:
        lines += ["", f"![ablation]({figure})", ""]
    return "\n".join(lines) + "\n"
