"""The layer contracts (.importlinter) hold, and a wrong-way import makes them fail.

The repository maps one folder per subpackage (``pyproject.toml``'s ``package-dir``), so the import
package ``delibench`` exists as one tree only once installed; grimp, which import-linter uses, walks
the tree of the installed package's directory. These tests lay the tree out as a wheel would (a
symlink per subpackage, which grimp follows) and run ``lint-imports`` on it.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ROOT / ".importlinter"


def _package_dirs() -> dict[str, Path]:
    """Dotted package name -> its folder, from pyproject.toml."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    return {name: ROOT / folder for name, folder in mapping.items()}


def mirror_package(dest: Path, *, kernel_dir: Path | None = None) -> Path:
    """Lay out ``delibench`` under ``dest`` as an installed wheel has it; returns the sys.path entry."""
    dirs = _package_dirs()
    root = dest / "delibench"
    shutil.copytree(kernel_dir or dirs["delibench"], root, ignore=shutil.ignore_patterns("__pycache__"))
    for name, folder in sorted(dirs.items()):
        parts = name.split(".")[1:]
        if len(parts) == 1:  # top-level subpackages; nested ones (app.bench) come with their parent
            (root / parts[0]).symlink_to(folder, target_is_directory=True)
    return dest


def lint(path_entry: Path) -> subprocess.CompletedProcess[str]:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    env = dict(os.environ, PYTHONPATH=str(path_entry))
    return subprocess.run(
        [str(lint_imports), str(CONTRACTS), "--no-cache"],
        cwd=path_entry, env=env, capture_output=True, text=True, timeout=240,
    )


def test_contracts_hold(tmp_path: Path) -> None:
    result = lint(mirror_package(tmp_path))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_kernel_importing_a_part_breaks_a_contract(tmp_path: Path) -> None:
    kernel = tmp_path / "kernel"
    shutil.copytree(_package_dirs()["delibench"], kernel, ignore=shutil.ignore_patterns("__pycache__"))
    with (kernel / "units.py").open("a") as f:
        f.write("\n\ndef _wrong_way() -> None:\n    from delibench.loaders import deli  # noqa: F401\n")
    result = lint(mirror_package(tmp_path / "tree", kernel_dir=kernel))
    assert result.returncode != 0
    assert "delibench.units -> delibench.loaders" in result.stdout


def test_every_kernel_module_is_in_the_kernel_contract() -> None:
    config = configparser.ConfigParser()
    config.read(CONTRACTS)
    listed = set(config["importlinter:contract:kernel"]["source_modules"].split())
    modules = {f"delibench.{p.stem}" for p in _package_dirs()["delibench"].glob("*.py")}
    modules -= {"delibench.__init__", "delibench.__main__"}
    assert modules == listed


def test_the_kernel_loads_no_torch_and_no_cloud_client() -> None:
    """DESIGN.md: the kernel imports neither torch nor a cloud client at module import."""
    kernel = sorted(p.stem for p in _package_dirs()["delibench"].glob("*.py") if p.stem not in ("__init__", "__main__"))
    code = (
        "import importlib, sys\n"
        f"for name in {kernel!r}: importlib.import_module('delibench.' + name)\n"
        "heavy = [m for m in ('torch', 's3fs', 'gcsfs', 'botocore', 'aiobotocore', 'optuna') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == ""
