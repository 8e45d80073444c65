#!/usr/bin/env bash
# Create .venv with stixbus and its dev tools (first use), re-install when pyproject.toml changes.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
py="$(command -v python3.11 || command -v python3 || true)"
[ -n "$py" ] || { echo "bootstrap: python3.11 not found: install Python 3.11" >&2; exit 1; }
"$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || { echo "bootstrap: $py is not Python 3.11: install Python 3.11" >&2; exit 1; }
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$stamp" ]; then exit 0; fi
echo "bootstrap: installing the Python environment into .venv (first use)..."
[ -x .venv/bin/python ] || "$py" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check uv
.venv/bin/uv pip install -q --python .venv/bin/python -e ".[dev]"
rm -f .venv/.installed-*
touch "$stamp"
