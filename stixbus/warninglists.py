"""Loads the MISP warninglists the false-positive guard uses (stixbus/core/guard.py).

The lists are CC0 data shipped inside the `pymispwarninglists` package (no network access at
run time).  Only the chosen lists are read, straight from their list.json files: the package's
own loader parses all of them (65 MB).  The worker builds the index once at start.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from schemas.org import Registry
from stixbus.core.guard import CHOSEN_LISTS, WarninglistIndex, build_index
from stixbus.errors import ConfigError


def lists_dir() -> Path:
    """Where the package keeps the lists (found without importing it: its import is slow)."""
    spec = importlib.util.find_spec("pymispwarninglists")
    if spec is None or spec.origin is None:
        raise ConfigError(
            "the pymispwarninglists package is not installed",
            "run deploy/bootstrap.sh (it installs the locked dependencies)",
        )
    return Path(spec.origin).parent / "data" / "misp-warninglists" / "lists"


@cache
def _document(slug: str) -> dict[str, Any]:
    path = lists_dir() / slug / "list.json"
    try:
        document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot read MISP warninglist {slug} at {path}: {exc}",
            "reinstall the environment (the pymispwarninglists package ships the lists) or "
            "remove the list from STIXBUS_GUARD_LISTS",
        ) from exc
    document["slug"] = slug
    return document


def load_lists(slugs: Iterable[str] = CHOSEN_LISTS) -> list[dict[str, Any]]:
    return [_document(slug) for slug in slugs]


_BUILT: dict[tuple[int, tuple[str, ...]], tuple[Registry, WarninglistIndex]] = {}


def guard_index(registry: Registry, slugs: Iterable[str] = CHOSEN_LISTS) -> WarninglistIndex:
    """The guard's index for this registry (built once per process and registry)."""
    chosen = tuple(slugs)
    key = (id(registry), chosen)
    found = _BUILT.get(key)
    if found is not None and found[0] is registry:
        return found[1]
    index = build_index(load_lists(chosen), registry)
    _BUILT[key] = (registry, index)
    return index
