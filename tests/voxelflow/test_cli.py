from typer.testing import CliRunner

from voxelflow.cli import app
from voxelflow.dataset import read_rows

runner = CliRunner()


def _ingest(data_dir, out, *extra):
    arguments = [
        "ingest",
        str(data_dir),
        "--labels",
        str(data_dir / "labels.csv"),
        "--out",
        str(out),
    ]
    return runner.invoke(app, [*arguments, *map(str, extra)])


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("synth", "ingest", "run"):
        assert command in result.output


def test_ingest_command_writes_manifest_and_rejected(tiny_data, tmp_path):
    result = _ingest(tiny_data["raw"], tmp_path / "checked")
    assert result.exit_code == 0, result.output
    manifest = read_rows(tmp_path / "checked" / "manifest.csv")
    assert list(manifest[0])[0] == "id"
    assert list(read_rows(tmp_path / "checked" / "rejected.csv")) == []
    two = _ingest(tiny_data["raw"], tmp_path / "two", "--workers", 2)
    assert two.exit_code == 0, two.output
    assert read_rows(tmp_path / "two" / "manifest.csv") == manifest


def test_ingest_command_names_an_unreachable_dask_scheduler(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr("voxelflow.runtime.DASK_CONNECT_TIMEOUT", "1s")
    result = _ingest(tiny_data["raw"], tmp_path / "o", "--dask-address", "tcp://127.0.0.1:9")
    assert result.exit_code == 2
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in result.output
    assert not (tmp_path / "o").exists()


def test_ingest_command_reports_bad_table(tmp_path):
    (tmp_path / "labels.csv").write_text("name,label\n")
    result = _ingest(tmp_path, tmp_path / "o")
    assert result.exit_code == 2
    assert "missing required column(s) ['id']" in result.output


def test_missing_params_file_is_an_error(tiny_data, tmp_path):
    result = _ingest(tiny_data["raw"], tmp_path / "o", "--params", tmp_path / "nope.yaml")
    assert result.exit_code == 2
    assert "nope.yaml: params file not found" in result.output


def test_synth_refuses_a_folder_of_other_files(tmp_path):
    (tmp_path / "scan.nii").write_bytes(b"mine")
    result = runner.invoke(app, ["synth", str(tmp_path)])
    assert result.exit_code == 2
    assert "refusing to replace it" in result.output
    assert (tmp_path / "scan.nii").read_bytes() == b"mine"


def test_models_list_and_promote(tmp_path):
    import json

    from voxelflow import registry

    models = tmp_path / "models"
    for index in (1, 2):
        bundle = tmp_path / f"b{index}"
        bundle.mkdir()
        (bundle / "model.keras").write_bytes(bytes([index]))
        (bundle / "bundle.json").write_text(json.dumps({"params_hash": f"p{index}"}))
        registry.promote_bundle(
            models, bundle, {"balanced_accuracy": 0.5 + index / 10}, "d" * 64, "r"
        )
    listed = CliRunner().invoke(app, ["models", "list", "--models", str(models)])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[0].startswith("    v1") and lines[1].startswith("*   v2") and "0.7" in lines[1]
    promoted = CliRunner().invoke(
        app, ["models", "promote", "v1", "--reason", "rollback", "--models", str(models)]
    )
    assert promoted.exit_code == 0 and registry.read_registry(models)["champion"] == "v1"
    assert registry.read_registry(models)["decisions"][-1]["reason"] == "rollback"
    missing = CliRunner().invoke(app, ["models", "promote", "v7", "--models", str(models)])
    assert missing.exit_code == 2 and "no model version 'v7'" in missing.output
    empty = CliRunner().invoke(app, ["models", "list", "--models", str(tmp_path / "none")])
    assert "no promoted model yet" in empty.output
