"""The ``voxelflow`` console command: the top layer (nothing imports it)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated

import typer

from voxelflow.runtime import quiet_environment, setup_logging

app = typer.Typer(
    help="voxelflow: train and evaluate 3D CNN classifiers on NIfTI volumes.",
    no_args_is_help=True,
    add_completion=False,
)

ParamsOption = Annotated[
    Path | None,
    typer.Option("--params", help="params.yaml to read [default: ./params.yaml if present]"),
]


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    setup_logging(verbose)


def _params(path: Path | None):
    """The given params file (an error if missing), else ./params.yaml, else the defaults."""
    from voxelflow.params import Params, load_params

    if path is not None:
        if not path.is_file():
            raise ValueError(f"{path}: params file not found")
        return load_params(path)
    return load_params("params.yaml") if Path("params.yaml").is_file() else Params()


def _fail(error: Exception) -> None:
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Argument(help="folder to write the dataset into")],
    params: ParamsOption = None,
) -> None:
    """Write the embedded default dataset (NIfTI phantoms + labels.csv)."""
    from voxelflow.synthdata import write_dataset

    try:
        summary = write_dataset(out_dir, _params(params))
    except ValueError as error:
        _fail(error)
    typer.echo(json.dumps(summary))


@app.command()
def ingest(
    data_dir: Annotated[Path, typer.Argument(help="the folder of volumes")],
    labels: Annotated[Path, typer.Option(help="the labels CSV (id,path,label[,subject,split])")],
    out: Annotated[Path, typer.Option(help="folder for manifest.csv and rejected.csv")],
    params: ParamsOption = None,
    workers: Annotated[
        int | None, typer.Option(help="processes; 0: every core [default: params compute]")
    ] = None,
    dask_address: Annotated[
        str | None, typer.Option(help="Dask scheduler to run on, e.g. tcp://host:8786")
    ] = None,
) -> None:
    """Validate a data folder outside DVC: OUT/manifest.csv and OUT/rejected.csv."""
    from voxelflow.ingest import ingest_folder
    from voxelflow.runtime import compute_options

    try:
        settings = _params(params)
        workers, dask_address = compute_options(settings.compute, workers, dask_address)
        report = ingest_folder(
            data_dir, labels, out, settings.ingest, settings.seed, workers, dask_address
        )
    except (ValueError, ConnectionError) as error:
        _fail(error)
    typer.echo(json.dumps(report, indent=2))


@app.command("import-npz")
def import_npz(
    file: Annotated[Path, typer.Argument(help="a MedMNIST-style 3D .npz archive")],
    out: Annotated[Path, typer.Argument(help="folder to write volumes/, labels.csv into")],
    classes: Annotated[
        str | None,
        typer.Option(help="class names by integer label, e.g. normal,hyperplasia"),
    ] = None,
    spacing: Annotated[
        str, typer.Option(help="voxel size in mm: one value or three, e.g. 1.0 or 1,1,2")
    ] = "1.0",
) -> None:
    """Import a MedMNIST .npz as NIfTI volumes + labels.csv (official splits kept)."""
    from voxelflow.npz_import import import_npz as write_npz

    try:
        names = None if classes is None else [name.strip() for name in classes.split(",")]
        try:
            spacing_mm = [float(value) for value in spacing.split(",")]
        except ValueError:
            raise ValueError(f"--spacing {spacing!r}: expected one or three numbers") from None
        summary = write_npz(file, out, names, spacing_mm)
    except ValueError as error:
        _fail(error)
    typer.echo(json.dumps(summary))


@app.command("augment-preview")
def augment_preview(
    volume: Annotated[Path, typer.Argument(help="a scan (.nii, ...) or a preprocessed .npy")],
    out: Annotated[Path, typer.Option(help="the PNG to write")] = Path("augment-preview.png"),
    copies: Annotated[int, typer.Option(min=1, max=16, help="augmented copies to show")] = 4,
    params: ParamsOption = None,
) -> None:
    """Write a PNG of orthogonal slices: the volume and a few augmented copies (params)."""
    from voxelflow.preview import load_for_preview, preview_copies, write_preview

    try:
        settings = _params(params)
        array, spacing, identifier = load_for_preview(volume, settings)
        rows = preview_copies(array, identifier, spacing, settings, copies)
        path = write_preview(rows, out, f"{volume.name}: augment params, seed {settings.seed}")
    except (ValueError, OSError) as error:
        _fail(error)
    typer.echo(f"wrote {path}")


@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="a model bundle folder (models/classifier)")],
    inputs: Annotated[list[Path], typer.Argument(help="NIfTI files or folders of them")],
    out: Annotated[Path, typer.Option(help="the predictions CSV to write")] = Path(
        "predictions.csv"
    ),
    batch_size: Annotated[int, typer.Option(min=1, help="volumes per forward pass")] = 16,
) -> None:
    """Predict new scans with a model bundle, preprocessed exactly as it was trained.

    Every file is checked as ingest checks it; files that cannot be used are listed with
    the reason (and in <out>.rejected.csv) while the others are still predicted.
    """
    quiet_environment()
    from voxelflow.predictor import predict as predict_files

    try:
        result = predict_files(bundle, inputs, out, batch_size, progress=True)
    except (ValueError, OSError) as error:
        _fail(error)
    for problem in result.rejected:
        typer.secho(f"not predicted: {problem['path']}: {problem['reason']}", err=True)
    typer.echo(f"wrote {out}: {len(result.rows)} predicted, {len(result.rejected)} not predicted")
    if not result.rows:
        raise typer.Exit(code=1)


@app.command()
def run(
    root: Annotated[Path, typer.Option(help="the voxelflow repository to run")] = Path("."),
    force: Annotated[bool, typer.Option(help="rerun every stage even if unchanged")] = False,
) -> None:
    """Run the pipeline: a Prefect flow with one task per DVC stage."""
    quiet_environment()
    from flows.pipeline import pipeline

    result = pipeline(root=str(root), force=force)
    typer.echo(json.dumps(result["stages"], indent=2))
    metrics = result["metrics"]
    if metrics:
        intervals = metrics.get("confidence_intervals", {})

        def interval(key: str) -> str:
            pair = intervals.get(key)
            return f" [{pair[0]:.3f}, {pair[1]:.3f}]" if pair and None not in pair else ""

        typer.echo(
            f"test balanced accuracy {metrics['balanced_accuracy']:.3f}"
            f"{interval('balanced_accuracy')} "
            f"(chance {metrics['baselines']['chance_balanced_accuracy']:.3f}), "
            f"accuracy {metrics['accuracy']:.3f}{interval('accuracy')}, "
            f"macro AUC {metrics['macro_auc_ovr']}{interval('macro_auc_ovr')}"
        )
        report = root / "reports" / "index.html"
        if report.is_file():
            typer.echo(f"report: {report.resolve()}")


RootOption = Annotated[Path, typer.Option(help="the voxelflow repository")]


@app.command()
def retrain(
    root: RootOption = Path("."),
    force: Annotated[bool, typer.Option(help="retrain even when no data changed")] = False,
) -> None:
    """Retrain once: new data -> pipeline -> champion/challenger -> promote or keep."""
    quiet_environment()
    from flows.retrain import retrain as retrain_flow

    outcome = retrain_flow(root=str(root), force=force)
    typer.echo(f"{outcome['decision']}: {outcome['reason']}")


@app.command()
def serve(
    cron: Annotated[str, typer.Option(help='when to retrain, e.g. "0 2 * * 1" (Mon 02:00)')],
    root: RootOption = Path("."),
    name: Annotated[str, typer.Option(help="the deployment's name")] = "scheduled",
    timezone: Annotated[str, typer.Option(help="the cron's time zone")] = "UTC",
) -> None:
    """Serve the retraining flow on a cron schedule (a Prefect deployment; one run at a
    time). Runs until interrupted; the dashboard shows the deployment and its runs."""
    quiet_environment()
    from prefect.schedules import Cron

    from flows.retrain import retrain as retrain_flow

    retrain_flow.serve(
        name=name,
        schedules=[Cron(cron, timezone=timezone)],
        parameters={"root": str(root.resolve())},
        global_limit=1,
        limit=1,
        description=f"voxelflow retraining of {root.resolve()}",
    )


@app.command()
def deploy(
    pool: Annotated[str, typer.Option(help="the Prefect work pool whose workers run it")],
    cron: Annotated[str | None, typer.Option(help="a schedule, e.g. '0 2 * * 1'")] = None,
    root: RootOption = Path("."),
    name: Annotated[str, typer.Option(help="the deployment's name")] = "retrain",
) -> None:
    """Create a deployment of the retraining flow for a work pool (workers elsewhere run it
    from this repository's path; at most one run at a time)."""
    quiet_environment()
    from flows.retrain import retrain as retrain_flow

    source = root.resolve()
    deployment_id = retrain_flow.from_source(
        source=str(source), entrypoint="flows/retrain.py:retrain"
    ).deploy(
        name=name,
        work_pool_name=pool,
        cron=cron,
        parameters={"root": str(source)},
        concurrency_limit=1,
        print_next_steps=False,
    )
    typer.echo(f"deployment voxelflow-retrain/{name} ({deployment_id}) on work pool {pool}")


@app.command()
def dashboard(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port of the dashboard and API")] = 4200,
) -> None:
    """Start a local Prefect server (SQLite, or PREFECT_API_DATABASE_CONNECTION_URL) and
    print the dashboard's URL; runs until interrupted."""
    import signal
    import sys

    quiet_environment()
    from flows.server import start_server

    # stopped by a signal, still stop the server (the block's cleanup runs on SystemExit)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.secho(
            f"warning: the Prefect API on {host} has no authentication: anyone who reaches it "
            "can start retraining runs (dvc repro) in this workspace. Put it behind a "
            "firewall or an authenticating proxy.",
            fg=typer.colors.YELLOW,
            err=True,
        )
    url = f"http://{host}:{port}"
    with start_server(host, port) as process:
        typer.echo(f"dashboard: {url}  (API {url}/api)")
        typer.echo(f"point runs at it: export PREFECT_API_URL={url}/api")
        with contextlib.suppress(KeyboardInterrupt):
            process.wait()


@app.command("ablate")
def ablate(
    design: Annotated[
        Path, typer.Option(help="the ablation design (levers, levels, seeds)")
    ] = Path("benchmarks/ablation.yaml"),
    out: Annotated[Path, typer.Option(help="the table (markdown); .png and .json beside it")] = (
        Path("benchmarks/ablation.md")
    ),
    root: Annotated[Path, typer.Option(help="the voxelflow repository")] = Path("."),
    plan: Annotated[bool, typer.Option("--plan", help="list the experiments, run nothing")] = (
        False
    ),
    collect: Annotated[
        bool, typer.Option("--collect", help="only rebuild the table from dvc exp show")
    ] = False,
    all_commits: Annotated[
        bool,
        typer.Option(
            "--all-commits",
            help="also count experiments of earlier commits (only if no stage's code or "
            "dvc.yaml changed since)",
        ),
    ] = False,
) -> None:
    """Run an ablation as DVC experiments (one per configuration and seed) and tabulate what
    each lever buys: mean, spread and intervals over seeds, effects paired by seed."""
    quiet_environment()
    from flows import ablation as ablation_flow

    try:
        if plan:
            _, experiments = ablation_flow.plan(str(root), str(design))
            for experiment in experiments:
                settings = " ".join(experiment.arguments()[1::2])
                typer.echo(f"{experiment.name}  {settings}")
            typer.echo(f"{len(experiments)} experiments")
            return
        result = ablation_flow.ablate(
            root=str(root),
            design=str(design),
            out=str(out),
            run=not collect,
            all_commits=all_commits,
        )
    except ValueError as error:
        _fail(error)
    typer.echo(
        f"wrote {out}: {result['experiments']} experiments, {result['ran']} run now, "
        f"{len(result['failed'])} failed"
    )
    if result["failed"]:
        raise typer.Exit(code=1)


models_app = typer.Typer(help="The model registry: promoted versions and the champion.")
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list(
    models: Annotated[Path, typer.Option(help="the models folder")] = Path("models"),
) -> None:
    """List every promoted version; the champion is marked *."""
    from voxelflow.registry import read_registry

    try:
        registry = read_registry(models)
    except ValueError as error:
        _fail(error)
    if not registry["versions"]:
        typer.echo("no promoted model yet")
        return
    for entry in registry["versions"]:
        mark = "*" if entry["version"] == registry["champion"] else " "
        metrics = entry.get("metrics", {})
        typer.echo(
            f"{mark} {entry['version']:>4}  {entry['promoted']}  "
            f"balanced accuracy {metrics.get('balanced_accuracy')}  "
            f"data {entry['data_version'][:12]}  params {entry['params_hash']}"
        )


@models_app.command("promote")
def models_promote(
    version: Annotated[str, typer.Argument(help="the version to make the champion, e.g. v2")],
    reason: Annotated[str, typer.Option(help="why (recorded)")] = "manual override",
    models: Annotated[Path, typer.Option(help="the models folder")] = Path("models"),
) -> None:
    """Make a version the champion by hand (recorded in the registry's decisions)."""
    from voxelflow.lock import WorkspaceBusyError, workspace_lock
    from voxelflow.registry import set_champion

    try:
        with workspace_lock(models.resolve().parent, "voxelflow models promote"):
            set_champion(models, version, reason)
    except (ValueError, WorkspaceBusyError) as error:
        _fail(error)
    typer.echo(f"{version} is the champion")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
