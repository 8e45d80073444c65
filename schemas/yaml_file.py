"""Reading the YAML files operators edit (registry, connector configs, token files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from stixbus.errors import ConfigError


def read_yaml(path: Path, what: str) -> Any:
    """The parsed document; ConfigError names the file, what it is and what went wrong."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(
            f"cannot read {what} {path}: {exc.strerror}",
            "check the path (relative paths are read from the current directory)",
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"{what} {path} is not valid YAML: {exc}", "fix the YAML syntax at the place shown"
        ) from exc
