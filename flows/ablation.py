"""The ablation flow: every experiment of a design as a ``dvc exp run``, then the table.

    voxelflow ablate --design benchmarks/ablation.yaml

Each experiment (a configuration under one seed, see ``voxelflow/ablation.py``) runs the
whole pipeline with ``dvc exp run --name <experiment> -S key=value ...`` in this workspace,
one after the other, as a Prefect task (so the dashboard shows them); stages whose inputs
did not change are skipped (the previous experiment's outputs are still in the workspace:
experiments run by seed, then by what each stage sees, see ``voxelflow.ablation.run_order``)
or come back from DVC's run cache. An experiment already in ``dvc exp show`` is not run
again, so an interrupted ablation resumes where it stopped. The table is then built from
``dvc exp show --json`` alone: every cell can be traced to, and restored from, its
experiments (``dvc exp apply <name>``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task

from flows.pipeline import _environment
from voxelflow import ablation
from voxelflow.atomic import write_text
from voxelflow.figures import ablation_figure
from voxelflow.lock import workspace_lock
from voxelflow.params import params_dict, parse_params_text

EVAL = "metrics/eval.json"
FINETUNE = "metrics/finetune.json"


def _git(root: str, *arguments: str) -> str:
    return subprocess.run(
        ["git", *arguments], cwd=root, capture_output=True, text=True, check=True
    ).stdout


def read_runs(root: str, all_commits: bool = False) -> dict[str, list[dict]]:
    """Every named experiment of the current commit (``all_commits``: of every commit, the
    current one first; several designs or commits may reuse a name): its test metrics, the
    validation metrics of its selected epoch, its fine-tuning minutes and its params (as
    ``-S`` keys), from ``dvc exp show --json`` (experiments whose metrics are missing, or
    still running, are left out)."""
    process = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--json", *(["-A"] if all_commits else [])],
        cwd=root,
        env=_environment(),
        capture_output=True,
        text=True,
    )
    if process.returncode != 0:
        raise RuntimeError(f"dvc exp show failed:\n{process.stdout}\n{process.stderr}")
    found: dict[str, list[dict]] = {}

    def walk(node) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
            return
        if not isinstance(node, dict):
            return
        if (node.get("executor") or {}).get("state") in {"running", "queued", "failed"}:
            return  # an experiment still running shows the workspace's (stale) metrics
        name, data = node.get("name"), node.get("data") or {}
        if node.get("rev") == "workspace":
            name = None  # not an experiment: the workspace (or a run in progress)
        metrics = data.get("metrics") or {}
        evaluated = (metrics.get(EVAL) or {}).get("data")
        if name and evaluated:
            tuned = (metrics.get(FINETUNE) or {}).get("data") or {}
            validation = (evaluated.get("model") or {}).get("val_metrics") or {}
            params = ((data.get("params") or {}).get("params.yaml") or {}).get("data")
            found.setdefault(name, []).append(
                {
                    "balanced_accuracy": evaluated.get("balanced_accuracy"),
                    "macro_auc_ovr": evaluated.get("macro_auc_ovr"),
                    "accuracy": evaluated.get("accuracy"),
                    "val_auc": validation.get("auc"),  # of the bundled (selected) epoch
                    "val_loss": validation.get("loss"),
                    "minutes": tuned["seconds"] / 60 if tuned.get("seconds") else None,
                    "rev": node.get("rev"),
                    "params": ablation.flatten(params) if params is not None else None,
                },
            )
        for key, value in node.items():
            if key != "data":
                walk(value)

    walk(json.loads(process.stdout or "[]"))
    return found


def committed_params(root: str) -> dict:
    """The committed params.yaml as written (every experiment starts from it)."""
    return yaml.safe_load(_git(root, "show", "HEAD:params.yaml")) or {}


def read_design_results(root: str, experiments: list, all_commits: bool = False) -> dict:
    """The design's experiments found in ``dvc exp show``: under its name, the run whose
    params are the committed params.yaml with the experiment's settings (an older commit's
    run of another baseline, or another design's cell of the same name, is not it)."""
    return ablation.matching(experiments, read_runs(root, all_commits), committed_params(root))


@task(retries=1, retry_delay_seconds=10)
def run_experiment(root: str, experiment: ablation.Experiment) -> str:
    """One ``dvc exp run``, starting from the committed params.yaml (``dvc exp run`` leaves
    its ``-S`` values in the workspace's params.yaml)."""
    logger = get_run_logger()
    _git(root, "checkout", "HEAD", "--", "params.yaml")  # index too: DVC stages params.yaml
    # no --force: that would rerun every stage (unchanged ones: skipped, or from the run cache)
    command = [sys.executable, "-m", "dvc", "exp", "run", "--name", experiment.name]
    command += experiment.arguments()
    logger.info("%s: %s", experiment.name, " ".join(command[3:]))
    process = subprocess.run(command, cwd=root, env=_environment(), capture_output=True, text=True)
    _git(root, "checkout", "HEAD", "--", "params.yaml")
    if process.returncode != 0:
        raise RuntimeError(
            f"{experiment.name} failed:\n{process.stdout[-3000:]}\n{process.stderr[-3000:]}"
        )
    return experiment.name


def plan(root: str, design_path: str) -> tuple[ablation.Design, list[ablation.Experiment]]:
    """The design's experiments, with baselines from the committed params.yaml: every
    experiment starts from it, and the workspace's copy holds a running experiment's
    overrides while an ablation runs."""
    design = ablation.load_design(Path(root) / design_path)
    return design, ablation.expand(design, _committed_params(root))


def _committed_params(root: str) -> dict:
    committed = _git(root, "show", "HEAD:params.yaml")
    return params_dict(parse_params_text(committed, f"{root}/params.yaml (committed)"))


def _stage_params(root: str, params: dict) -> list[list[str]]:
    """Each stage's params entries, from the committed dvc.yaml (what experiments run), in
    :func:`voxelflow.ablation.stage_params`'s order (``params``: the committed params.yaml)."""
    return ablation.stage_params(yaml.safe_load(_git(root, "show", "HEAD:dvc.yaml")), params)


def write_report(
    root: str,
    design: ablation.Design,
    experiments: list,
    out: str,
    command: str,
    all_commits: bool = False,
) -> list[dict]:
    """``out`` (markdown) and its figure beside it, from ``dvc exp show`` alone."""
    results = read_design_results(root, experiments, all_commits)
    rows = ablation.summarize(design, experiments, results)
    out_path = Path(root) / out
    figure = out_path.with_suffix(".png")
    if any(row["runs"] for row in rows):
        ablation_figure([row for row in rows if row["runs"]], figure)
    write_text(out_path, ablation.markdown(design, rows, command, figure.name))
    write_text(out_path.with_suffix(".json"), json.dumps(rows, indent=2) + "\n")
    return rows


@flow(name="voxelflow-ablation", log_prints=True)
def ablate(
    root: str = ".",
    design: str = "benchmarks/ablation.yaml",
    out: str = "benchmarks/ablation.md",
    run: bool = True,
    all_commits: bool = False,
) -> dict:
    """Runs the design's experiments not yet in ``dvc exp show`` (unless ``run`` is false),
    then writes the table (``out``), its figure and its data (``.png``, ``.json``). ``out``
    must not be inside a stage's output folder (``reports/`` is the report stage's: DVC
    deletes it before every rerun of that stage). ``all_commits`` also counts experiments
    run on earlier commits, for when no stage's code or dvc.yaml changed since (DVC ties
    an experiment to the commit it started from)."""
    logger = get_run_logger()
    root = str(Path(root).resolve())
    the_design, experiments = plan(root, design)
    changed = _git(root, "status", "--porcelain", "--", "params.yaml", "dvc.yaml").strip()
    if run and changed:
        raise ValueError(
            f"{root}: params.yaml or dvc.yaml has uncommitted changes ({changed!r}); every "
            "experiment starts from the committed params.yaml: commit or stash them first"
        )
    done = read_design_results(root, experiments, all_commits)
    todo = [experiment for experiment in experiments if experiment.name not in done]
    # one seed's data, and pretraining where it is shared, built once and reused
    committed = _committed_params(root)
    todo = ablation.run_order(todo, _stage_params(root, committed), committed)
    logger.info(
        "%d experiments in the design, %d done before, %d to run",
        len(experiments),
        len(experiments) - len(todo),
        len(todo) if run else 0,
    )
    failed = []
    if run and todo:
        with workspace_lock(root, "voxelflow ablate"):
            for experiment in todo:
                state = run_experiment.with_options(name=f"exp-{experiment.name}")(
                    root, experiment, return_state=True
                )
                if state.is_failed():
                    failed.append(experiment.name)
    command = f"voxelflow ablate --design {design} --out {out}"
    command += " --all-commits" if all_commits else ""
    rows = write_report(root, the_design, experiments, out, command, all_commits)
    if failed:
        logger.warning("failed experiments (rerun to retry them): %s", failed)
    return {
        "experiments": len(experiments),
        "ran": len(todo) if run else 0,
        "failed": failed,
        "rows": rows,
    }
