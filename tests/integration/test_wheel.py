"""The installed package stands on its own: a wheel, a fresh venv, the CLI outside the checkout.

Slowish (it builds the wheel and a venv) and needs no broker; marked `packaging`. It installs the
pins of uv.lock from uv's cache (`uv sync --frozen --offline`), which `deploy/bootstrap.sh`
(`uv sync`) filled, then the wheel without dependencies.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import DEPLOY, REPO_ROOT

# Our top-level import names (pyproject.toml [tool.setuptools.packages.find]).  `agents`,
# `schemas` and `connectors` are generic names: another distribution providing one of them
# would shadow ours or be shadowed by it (README, "Layout").
OUR_TOP_LEVEL = ("stixbus", "agents", "schemas", "connectors", "egress")


def _uv() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if found is None:
        pytest.fail("uv not found: run deploy/bootstrap.sh (it installs the pinned uv)")
    return found


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, (
        f"{' '.join(cmd)} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    )
    return done.stdout


@pytest.mark.packaging
def test_wheel_runs_outside_the_checkout(tmp_path: Path) -> None:
    uv = _uv()
    dist = tmp_path / "dist"
    _run([uv, "build", "--wheel", "--out-dir", str(dist), str(REPO_ROOT)], cwd=REPO_ROOT)
    wheels = list(dist.glob("stixbus-*.whl"))
    assert len(wheels) == 1, wheels
    venv = tmp_path / "venv"
    _run([uv, "venv", "-q", "--python", sys.executable, str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    # The lock's pins (not the dev extra) from uv's cache, as bootstrap's `uv sync` installed
    # them: a sync from the lock needs no index pages, which `uv pip install --offline` would
    # (and a cache filled by `uv sync --frozen` alone does not have).
    _run(
        [
            uv,
            "sync",
            "-q",
            "--frozen",
            "--offline",
            "--no-dev",
            "--no-install-project",
            "--python",
            str(python),
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv)},
    )
    _run(
        [
            uv,
            "pip",
            "install",
            "-q",
            "--offline",
            "--no-deps",
            "--python",
            str(python),
            str(wheels[0]),
        ],
        cwd=tmp_path,
    )

    elsewhere = tmp_path / "elsewhere"  # not the checkout: nothing importable from cwd
    elsewhere.mkdir()
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "STIXBUS_HOME": str(tmp_path / "home"),
        "STIXBUS_DEPLOY_DIR": str(DEPLOY),
    }
    where = _run(
        [str(python), "-c", "import stixbus, schemas; print(stixbus.__file__)"],
        cwd=elsewhere,
        env=env,
    )
    assert Path(where.strip()).is_relative_to(venv), f"imported from {where}, not the venv"
    assert not Path(where.strip()).is_relative_to(REPO_ROOT)

    stixbus = str(venv / "bin" / "stixbus")
    assert "agreements" in _run([stixbus, "--help"], cwd=elsewhere, env=env)
    report = _run(
        [stixbus, "agreements", "check", str(DEPLOY / "agreements.yaml")], cwd=elsewhere, env=env
    )
    assert "0 error(s)" in report, report

    # And without STIXBUS_DEPLOY_DIR the default ./deploy is relative to where it runs.
    no_deploy = {k: v for k, v in env.items() if k != "STIXBUS_DEPLOY_DIR"}
    failed = subprocess.run(
        [stixbus, "agreements", "check", str(DEPLOY / "agreements.yaml")],
        cwd=elsewhere,
        env=no_deploy,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 1
    assert failed.stderr.startswith(f"stixbus: cannot read org registry deploy{os.sep}orgs.yaml")
