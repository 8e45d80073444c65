#!/usr/bin/env bash
# Create .venv with stixbus and its dev tools from uv.lock (first use); re-sync when
# pyproject.toml or uv.lock changes.  The lock is the truth: `uv sync --frozen` installs exactly
# what it pins (README "Dependencies and pinning"), and stixbus itself as an editable install.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# The uv that installs everything, pinned; pyproject.toml's dev extra pins the same version, so
# `uv sync` keeps it in .venv.  Change both together.
UV_VERSION=0.13.9
py="$(command -v python3.11 || command -v python3 || true)"
[ -n "$py" ] || { echo "bootstrap: python3.11 not found: install Python 3.11" >&2; exit 1; }
"$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || { echo "bootstrap: $py is not Python 3.11: install Python 3.11" >&2; exit 1; }
stamp=".venv/.installed-$(cat pyproject.toml uv.lock | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then exit 0; fi
echo "bootstrap: installing the Python environment into .venv from uv.lock..."
[ -x .venv/bin/python ] || "$py" -m venv .venv
if [ "$(.venv/bin/uv --version 2>/dev/null | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
fi
UV_PROJECT_ENVIRONMENT=.venv .venv/bin/uv sync -q --frozen --extra dev --python .venv/bin/python
rm -f .venv/.installed-*
touch "$stamp"
