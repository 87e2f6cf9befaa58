"""Hostile input: nothing outside the data folder is read, nothing a table holds is run,
nothing is unpickled or deserialised unsafely, and a tampered model is refused."""

from __future__ import annotations

import ast
import csv
import gzip
import json
import shutil
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from voxelflow.atomic import FORMULA_STARTS, escape_cell, save_npy, unescape_cell
from voxelflow.dataset import load_npy, read_rows
from voxelflow.ingest import ingest_folder
from voxelflow.nifti import VolumeError, load_volume, save_volume
from voxelflow.params import IngestParams, load_params

REPO = Path(__file__).resolve().parents[2]
FORMULA = "=cmd|' /C calc'!A0"


def _scan(path: Path, seed: int, shape=(12, 12, 12)) -> None:
    rng = np.random.default_rng(seed)
    save_volume(path, rng.normal(size=shape).astype(np.float32), np.diag([2.0, 2.0, 2.0, 1]))


def _cells(path: Path) -> list[str]:
    with open(path, newline="") as handle:
        return [cell for row in csv.reader(handle) for cell in row]


def test_tables_cannot_reach_outside_the_data_folder_or_inject_formulas(tmp_path):
    data = tmp_path / "raw"
    data.mkdir()
    secret = tmp_path / "secret.nii.gz"
    _scan(secret, 99)
    rows = ["id,path,label,subject"]
    for index in range(12):
        _scan(data / f"s{index}.nii.gz", index)
        subject = FORMULA if index == 0 else f"@SUM(1+{index})" if index == 1 else f"p{index}"
        rows.append(f's{index},s{index}.nii.gz,{"ab"[index % 2]},"{subject}"')
    (data / "link.nii.gz").symlink_to(secret)
    rows += [
        "up,../secret.nii.gz,a,",
        f"absolute,{secret},a,",
        "link,link.nii.gz,a,",
        f'"{FORMULA}",s0.nii.gz,a,',
        "+1,s1.nii.gz,a,",
    ]
    unlabelled = data / "unlabelled"
    unlabelled.mkdir()
    _scan(unlabelled / "-2+3.nii.gz", 50)  # a file name that is a formula
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    ingest_folder(
        data,
        data / "labels.csv",
        out,
        IngestParams(classes=["a", "b"], unlabelled_dir="unlabelled"),
        seed=0,
        workers=1,
    )
    manifest = read_rows(out / "manifest.csv")
    rejected = read_rows(out / "rejected.csv")
    reasons = " | ".join(f"{row['input']}: {row['reason']}" for row in rejected)
    # escapes: ../, absolute, a symlink out; none of them in the manifest
    assert "escapes the data folder" in reasons and "absolute path" in reasons
    assert "link" in reasons and "outside" in reasons
    assert all("secret" not in row["path"] and "link" not in row["path"] for row in manifest)
    # formulas: stored as text (the subject read back is the original), never as formulas
    subjects = {row["id"]: row["subject"] for row in manifest}
    assert subjects["s0"] == FORMULA and subjects["s1"] == "@SUM(1+1)"
    assert "ids become file names" in reasons  # an id that is a formula is refused
    assert "-2+3.nii.gz" in reasons  # and so is a file whose name cannot be an id
    for table in ("manifest.csv", "rejected.csv"):
        cells = _cells(out / table)
        assert any(cell.startswith("'=cmd") for cell in cells) or table == "rejected.csv"
        dangerous = [cell for cell in cells if cell.startswith(FORMULA_STARTS[:-1])]
        assert [cell for cell in dangerous if not _is_number(cell)] == [], table


def test_tables_voxelflow_writes_read_back_unchanged(tmp_path):
    """synth and import-npz write labels.csv escaped; ingest reads it back as written."""
    from voxelflow.atomic import write_csv
    from voxelflow.labels import read_table

    rows = [{"id": "a1", "path": "a1.nii.gz", "label": "-ve", "subject": FORMULA}]
    write_csv(tmp_path / "labels.csv", rows, ("id", "path", "label", "subject"))
    assert "'-ve" in (tmp_path / "labels.csv").read_text()
    _, read = read_table(tmp_path / "labels.csv")
    assert {key: read[0][key] for key in rows[0]} == rows[0]


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


@pytest.mark.parametrize(
    "value", [FORMULA, "+1+1", "-A1", "@x", "\tx", "'=x", "'", "''", "-0.5", "plain", ""]
)
def test_cell_escaping_round_trips(value):
    escaped = escape_cell(value)
    assert unescape_cell(escaped) == value
    assert not (escaped.startswith(FORMULA_STARTS[:-1]) and not _is_number(escaped))


def test_a_header_claiming_enormous_dimensions_is_refused_before_allocating(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_shape((4000, 4000, 4000))  # 64e9 voxels, 256 GB of float32
    header.set_data_dtype(np.float32)
    path = tmp_path / "bomb.nii"
    path.write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 1000)
    compressed = tmp_path / "bomb.nii.gz"
    compressed.write_bytes(gzip.compress(path.read_bytes()))
    for candidate in (path, compressed):
        tracemalloc.start()
        with pytest.raises(VolumeError, match=r"64000000000 voxels .* exceeds the limit"):
            load_volume(candidate, max_voxels=IngestParams().max_voxels)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 8 * 2**20, f"{candidate.name}: {peak} bytes allocated"


def test_a_header_claiming_more_data_than_the_file_holds_is_refused(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_shape((64, 64, 64))
    header.set_data_dtype(np.int16)
    path = tmp_path / "short.nii"
    path.write_bytes(header.binaryblock + b"\0" * 4 + b"\1" * 5000)
    with pytest.raises(VolumeError, match="short.nii: cannot read the voxel data"):
        load_volume(path)


def test_extensions_and_odd_dtypes(tmp_path):
    values = np.arange(6 * 7 * 8).reshape(6, 7, 8)
    for dtype in ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "float64"):
        image = nib.Nifti1Image(values.astype(dtype), np.eye(4), dtype=dtype)
        image.header.extensions.append(nib.nifti1.Nifti1Extension(40, b"<xml>" * 20_000))
        image.header.extensions.append(nib.nifti1.Nifti1Extension(0, b"\0\xff" * 7))
        path = tmp_path / f"{dtype}.nii.gz"
        nib.save(image, path)
        volume = load_volume(path)
        assert volume.disk_dtype == dtype
        expected = values.astype(dtype).astype(np.float32)
        assert np.array_equal(volume.data, expected), dtype
    for dtype, reason in (("complex64", "complex or RGB"), ("bool", None)):
        path = tmp_path / f"{dtype}.nii"
        try:
            nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), dtype=dtype), np.eye(4)), path)
        except Exception:  # nibabel refuses to write it: nothing to read
            continue
        if reason:
            with pytest.raises(VolumeError, match=reason):
                load_volume(path)


def test_params_yaml_is_loaded_safely(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "params.yaml"
    path.write_text(f"seed: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ValueError, match="params.yaml"):
        load_params(path)
    assert not marker.exists()
    path.write_text("seed: 1\nsynth: {subjects_per_class: 3, shell: 'rm -rf /'}\n")
    with pytest.raises(ValueError, match="synth.shell"):
        load_params(path)


def test_pickled_arrays_are_refused(tmp_path):
    path = tmp_path / "evil.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="evil.npy: not a plain numeric array"):
        load_npy(path)
    with pytest.raises(ValueError):
        save_npy(tmp_path / "out.npy", np.array([{"a": 1}], dtype=object))


def test_no_shell_command_is_built_anywhere():
    """No ``shell=True``, ``os.system`` or ``os.popen`` in the code; subprocesses take
    argument lists, so no table value, file name or param can become shell syntax."""
    offenders = []
    for folder in ("voxelflow", "stages", "flows"):
        for path in sorted((REPO / folder).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.keyword) and node.arg == "shell":
                    offenders.append(f"{path}:{node.value.lineno} shell=")
                if isinstance(node, ast.Attribute) and node.attr in ("system", "popen"):
                    offenders.append(f"{path}:{node.lineno} os.{node.attr}")
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("run", "Popen", "check_output", "call")
                    and node.args
                    and isinstance(node.args[0], ast.Constant | ast.JoinedStr)
                ):
                    offenders.append(f"{path}:{node.lineno} a command given as one string")
    assert offenders == []


def test_unsafe_models_are_refused(tmp_path):
    import keras

    from voxelflow.bundle import bundle_checksums, load_bundle

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    model.save(tmp_path / "model.keras")
    (tmp_path / "bundle.json").write_text(json.dumps({"files": bundle_checksums(tmp_path)}))
    with pytest.raises(ValueError, match="safe_mode"):
        load_bundle(tmp_path)


def test_a_tampered_bundle_is_refused_by_predict(trained, tiny_data, tmp_path):
    from voxelflow.atomic import file_sha256
    from voxelflow.bundle import add_checksums
    from voxelflow.cli import app
    from voxelflow.predictor import predict

    scans = sorted(tiny_data["raw"].glob("*.nii.gz"))[:2]
    intact = tmp_path / "intact"
    shutil.copytree(trained / "classifier", intact)
    assert len(predict(intact, scans, batch_size=2).rows) == 2
    for name in ("model.keras", "history.csv", "model_summary.json"):
        bundle = tmp_path / name
        shutil.copytree(intact, bundle)
        data = bytearray((bundle / name).read_bytes())
        data[len(data) // 2] ^= 0x01  # one bit
        (bundle / name).write_bytes(bytes(data))
        with pytest.raises(ValueError, match=rf"{name}: modified after training"):
            predict(bundle, scans, batch_size=2)
        result = CliRunner().invoke(app, ["predict", str(bundle), *map(str, scans)])
        assert result.exit_code != 0 and "modified after training" in result.output
    unverifiable = tmp_path / "unverifiable"
    shutil.copytree(intact, unverifiable)
    record = json.loads((unverifiable / "bundle.json").read_text())
    del record["files"]
    (unverifiable / "bundle.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="no checksums"):
        predict(unverifiable, scans, batch_size=2)
    # a bundle registered before checksums existed: verified by the registry's model hash
    with pytest.raises(ValueError, match="modified after it was registered"):
        add_checksums(unverifiable, "0" * 64)
    assert add_checksums(unverifiable, file_sha256(unverifiable / "model.keras"))
    assert len(predict(unverifiable, scans, batch_size=2).rows) == 2
