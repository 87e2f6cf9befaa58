"""The retraining flow: new data in, a better model out, or the champion kept.

    voxelflow retrain            # once
    voxelflow serve --cron "0 2 * * 1"   # every Monday at 02:00, as a Prefect deployment

Steps, each a Prefect task (the dashboard shows each with its state, logs and artifacts):

1. compare the data folder (``data.raw_dir``) with the one the last retraining used; with
   nothing new, record that and stop (unless ``force``);
2. ``dvc pull`` when a DVC remote is configured;
3. the pipeline flow (one task per DVC stage, retried on transient failures);
4. the champion's metrics on the *current* test split (its bundle, its own preprocessing),
   beside the challenger's from ``metrics/eval.json``;
5. promote or reject by ``retrain.metric`` and ``retrain.min_margin``, recorded in
   ``models/registry.json`` with both metrics and the reason;
6. for a promoted model: ``dvc push`` (``retrain.push``) and a git commit / tag of
   ``dvc.lock`` and the registry (``retrain.git_commit``, ``retrain.git_tag``).

A failure before step 5 leaves the champion and the registry as they were, and the data
fingerprint (taken after the pull and the pipeline) is recorded only once a new model was
judged, so the next run tries again. A failure to publish a promoted model is recorded in
the registry as "publish failed" and fails the run: the promotion stands, the push is left
to a person. A new model identical to the champion (nothing retrained) is never promoted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)

from flows.pipeline import _environment, pipeline
from voxelflow import changes, registry
from voxelflow.atomic import file_sha256, write_json
from voxelflow.lock import workspace_lock
from voxelflow.params import load_params

MODELS = Path("models")
STATE = MODELS / "retrain_state.json"
TRANSIENT = [5, 30, 120]  # seconds between retries of I/O and remote steps


def _run(command: list[str], root: str) -> str:
    process = subprocess.run(
        command, cwd=root, env=_environment(), capture_output=True, text=True, check=False
    )
    if process.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({process.returncode}): "
            f"{(process.stderr or process.stdout)[-2000:]}"
        )
    return process.stdout


@task(retries=2, retry_delay_seconds=TRANSIENT[:2])
def detect_changes(root: str, raw_dir: str) -> dict:
    """The data folder's fingerprint and what changed since the last completed run."""
    state_file = Path(root) / STATE
    previous = json.loads(state_file.read_text()) if state_file.is_file() else {}
    current = changes.fingerprint(Path(root) / raw_dir)
    found = changes.compare(previous.get("fingerprint"), current)
    return {"fingerprint": current, "changes": found, "first_run": not previous}


@task(retries=3, retry_delay_seconds=TRANSIENT)
def dvc_pull(root: str) -> bool:
    """``dvc pull`` when a remote is configured; False when there is none."""
    remotes = _run([sys.executable, "-m", "dvc", "remote", "list"], root).strip()
    if not remotes:
        return False
    _run([sys.executable, "-m", "dvc", "pull", "--allow-missing"], root)
    return True


@task(retries=2, retry_delay_seconds=TRANSIENT[:2])
def champion_metrics(root: str, seed: int) -> dict | None:
    """The champion's metrics on the volumes the challenger was evaluated on (the test
    split of the preprocessed data), scored as the evaluate stage scores (None without a
    champion)."""
    from voxelflow.bundle import add_checksums
    from voxelflow.dataset import read_index

    models = Path(root) / MODELS
    entry = registry.champion(models)
    if entry is None:
        return None
    params = load_params(Path(root) / "params.yaml")
    ids = [row["id"] for row in read_index(Path(root) / "data" / "preprocessed", ("test",))]
    # a champion promoted before bundles carried checksums: verified by the registry's hash
    add_checksums(registry.version_dir(models, entry["version"]), entry["model_hash"])
    metrics = registry.evaluate_on_split(
        registry.version_dir(models, entry["version"]),
        Path(root) / "data" / "ingested" / "manifest.csv",
        Path(root) / params.data.raw_dir,
        ids,
        resamples=params.evaluate.bootstrap_resamples,
        seed=seed,
        confidence=params.evaluate.confidence,
        bins=params.evaluate.calibration_bins,
    )
    return {"version": entry["version"], "model_hash": entry["model_hash"], **metrics}


@task
def promote_or_reject(root: str, challenger: dict, champion: dict | None, data_version: str):
    """The decision, recorded in the registry either way."""
    params = load_params(Path(root) / "params.yaml").retrain
    models = Path(root) / MODELS
    model_hash = file_sha256(models / "classifier" / "model.keras")
    if champion is not None and champion.get("model_hash") == model_hash:
        promote, reason = False, f"the new model is the champion {champion['version']} itself"
    else:
        promote, reason = registry.decide(challenger, champion, params.metric, params.min_margin)
    summary = {
        "metric": params.metric,
        "min_margin": params.min_margin,
        "challenger": challenger.get(params.metric),
        "champion": champion.get(params.metric) if champion else None,
        "champion_version": champion["version"] if champion else None,
        "reason": reason,
    }
    if promote:
        keep = ("test_volumes", "accuracy", "balanced_accuracy", "macro_auc_ovr", "log_loss")
        entry = registry.promote_bundle(
            models,
            models / "classifier",
            {key: challenger.get(key) for key in keep},
            data_version,
            reason,
        )
        return {"decision": "promoted", "version": entry["version"], **summary}
    registry.record_decision(models, {"decision": "rejected", **summary})
    return {"decision": "rejected", "version": None, **summary}


@task(retries=3, retry_delay_seconds=TRANSIENT)
def publish_promotion(root: str, version: str) -> list[str]:
    """``dvc push`` and the git commit / tag of a promoted model, as configured; safe to
    retry (a commit or tag already made is not made again)."""
    params = load_params(Path(root) / "params.yaml").retrain
    done = []
    remotes = _run([sys.executable, "-m", "dvc", "remote", "list"], root).strip()
    if params.push == "always" or (params.push == "auto" and remotes):
        _run([sys.executable, "-m", "dvc", "push"], root)
        done.append("dvc push")
    if params.git_commit or params.git_tag:
        paths = ["dvc.lock", "params.yaml", str(MODELS / registry.REGISTRY)]
        _run(["git", "add", "-f", "--", *paths], root)
        staged = subprocess.run(
            ["git", "diff", "--cached", "--quiet", "--", *paths], cwd=root, check=False
        )
        if staged.returncode:  # only these paths, whatever else the user has staged
            _run(["git", "commit", "-m", f"voxelflow: promote model {version}", "--", *paths], root)
        done.append("git commit")
        tag = f"model-{version}"
        exists = subprocess.run(
            ["git", "rev-parse", "-q", "--verify", f"refs/tags/{tag}"],
            cwd=root,
            check=False,
            capture_output=True,
        )
        if params.git_tag:
            if exists.returncode:
                _run(["git", "tag", tag], root)
            done.append(f"git tag {tag}")
    return done


def _publish_summary(root: str, outcome: dict, found: dict) -> None:
    decision = outcome.get("decision", "skipped")
    lines = [
        f"# Retraining: {decision}",
        "",
        f"**Data:** {changes.summary(found)} since the last retraining.",
    ]
    report = Path(root) / "data" / "ingested" / "ingest_report.json"
    if report.is_file() and decision != "skipped":
        counts = json.loads(report.read_text())
        per_split = "; ".join(
            f"{split} {sum(classes.values())}" for split, classes in counts["per_split"].items()
        )
        lines.append(
            f"- accepted {counts['accepted']} volumes ({per_split}), rejected {counts['rejected']}"
        )
    for kind, files in found.items():
        if files:
            shown = ", ".join(f"`{name}`" for name in files[:10])
            more = f" and {len(files) - 10} more" if len(files) > 10 else ""
            lines.append(f"- {kind}: {shown}{more}")
    if "reason" in outcome:
        lines += ["", f"**Decision:** {decision}: {outcome['reason']}."]
    if outcome.get("version"):
        lines.append(f"New champion: **{outcome['version']}**.")
    create_markdown_artifact(
        key="retraining-summary", markdown="\n".join(lines), description="What changed, and why"
    )


@flow(name="voxelflow-retrain", log_prints=True)
def retrain(root: str = ".", force: bool = False) -> dict:
    """One retraining of the repository at ``root`` (see the module docstring)."""
    root = str(Path(root).resolve())
    with workspace_lock(root, "voxelflow retrain"):  # pipeline and registry, one run at a time
        return _retrain(root, force)


def _retrain(root: str, force: bool) -> dict:
    logger = get_run_logger()
    params = load_params(Path(root) / "params.yaml")
    detected = detect_changes(root, params.data.raw_dir)
    found = detected["changes"]
    if not detected["first_run"] and not any(found.values()) and not force:
        logger.info("nothing new in %s since the last retraining: stopping", params.data.raw_dir)
        outcome = {"decision": "skipped", "reason": "no new or changed data"}
        registry.record_decision(Path(root) / MODELS, {"decision": "skipped", **outcome})
        _publish_summary(root, outcome, found)
        return outcome
    logger.info("data: %s", changes.summary(found))
    pulled = dvc_pull(root)
    run = pipeline(root=root)
    challenger = run["metrics"]
    champion = champion_metrics(root, params.seed)
    manifest = Path(root) / "data" / "ingested" / "manifest.csv"
    outcome = promote_or_reject(root, challenger, champion, file_sha256(manifest))
    outcome["stages"] = run["stages"]
    outcome["pulled"] = pulled
    # what this run trained on: the data folder after the pull and the pipeline (with the
    # default data/raw, the synth stage writes it)
    write_json(
        Path(root) / STATE,
        {
            "fingerprint": changes.fingerprint(Path(root) / params.data.raw_dir),
            "decision": outcome["decision"],
        },
    )
    if outcome["decision"] == "promoted":
        published = publish_promotion(root, outcome["version"], return_state=True)
        if published.is_failed():
            registry.record_decision(
                Path(root) / MODELS,
                {
                    "decision": "publish failed",
                    "version": outcome["version"],
                    "reason": "promoted, but dvc push / git commit failed: push it by hand",
                },
            )
        outcome["published"] = published.result()  # raises: the flow run fails
    create_table_artifact(
        key="champion-challenger",
        table=[
            {
                "model": "challenger",
                outcome["metric"]: outcome["challenger"],
                "version": outcome["version"] or "(rejected)",
            },
            {
                "model": "champion",
                outcome["metric"]: outcome["champion"],
                "version": outcome["champion_version"],
            },
        ],
        description=outcome["reason"],
    )
    report = Path(root) / "reports" / "index.html"
    if report.is_file():
        create_link_artifact(
            key="evaluation-report", link=report.as_uri(), description="The HTML report"
        )
    _publish_summary(root, outcome, found)
    logger.info("retraining: %s (%s)", outcome["decision"], outcome["reason"])
    return outcome
