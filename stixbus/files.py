"""Files at rest are the owner's alone: state, data and log folders 0700, files 0600.

The broker's data (deploy/kafka/kafka.sh runs under `umask 077` and tightens the state folder on
`up`), the worker's RocksDB state and every log hold TLP:RED content in clear: another local
account must not read them (docs/security.md, "Files").
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600


def private_files() -> None:
    """New files and folders of this process (and its children) are owner-only."""
    os.umask(PRIVATE_UMASK)


def make_private(root: Path) -> None:
    """Folders under `root` (itself included) 0700, files 0600; symlinks are not followed.

    For state made before `private_files` existed (an old `.stixbus` folder)."""
    if not root.exists():
        return
    root.chmod(DIR_MODE)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            path = Path(folder, name)
            if not path.is_symlink():
                path.chmod(DIR_MODE)
        for name in files:
            path = Path(folder, name)
            if not path.is_symlink():
                path.chmod(FILE_MODE)
