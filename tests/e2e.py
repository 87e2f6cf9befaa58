"""A temporary git + DVC repository holding this project's pipeline, with tiny params."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
COPIED = (
    "voxelflow",
    "stages",
    "flows",
    "dvc.yaml",
    ".dvc/config",
    ".dvc/.gitignore",
    ".gitignore",
)


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(
        DVC_NO_ANALYTICS="1",
        TF_CPP_MIN_LOG_LEVEL="2",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@t",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t",
    )
    return env


def run(command: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    process = subprocess.run(command, cwd=cwd, env=environment(), capture_output=True, text=True)
    if check and process.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{process.stdout}\n{process.stderr}")
    return process


def dvc(*arguments: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *arguments], cwd, check)


def merged(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` applied section by section (DVC needs every tracked key)."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = (
            merged(base[key], value)
            if isinstance(value, dict) and isinstance(base.get(key), dict)
            else value
        )
    return out


def make_repository(root: Path, params: dict) -> Path:
    """A git repository with this project's pipeline and the repo's params.yaml, overridden."""
    for name in COPIED:
        source = REPO / name
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    full = merged(yaml.safe_load((REPO / "params.yaml").read_text()), params)
    (root / "params.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    run(["git", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "tiny pipeline"], root)
    return root


def declared_outputs(root: Path) -> list[Path]:
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    paths = []
    for stage in spec["stages"].values():
        for key in ("outs", "metrics"):
            for item in stage.get(key, []):
                paths.append(root / (item if isinstance(item, str) else next(iter(item))))
    return paths


OUTPUT_FOLDERS = ("data", "models", "metrics", "plots", "reports")


def output_bytes(root: Path) -> dict[str, bytes]:
    """Every file under the pipeline's output folders, by path relative to ``root``."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for folder in OUTPUT_FOLDERS
        for path in sorted((root / folder).rglob("*"))
        if path.is_file()
    }
