"""The ``voxelflow`` console command: the top layer (nothing imports it)."""

from __future__ import annotations

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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
