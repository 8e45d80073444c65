"""Files at rest: owner-only modes, and writes a crash cannot tear.

- State, data and log folders 0700, files 0600: the broker's data (deploy/kafka/kafka.sh runs
  under `umask 077` and tightens the state folder on `up`), the worker's RocksDB state and every
  log hold TLP:RED content in clear, and another local account must not read them
  (docs/security.md, "Files").
- `atomic_write`: a crash leaves the old content or the new one, never a torn mix.

I/O, so not in `stixbus.core`; Kafka-independent, so connectors, the Kafka plumbing and the CLI
can all use it (it sits with `settings`/`context`/`metrics` in the layers of
docs/architecture.md).
"""

from __future__ import annotations

import os
import tempfile
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




def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` atomically: a temp file in the same directory, written and
    fsync'ed, given `mode` (default: owner only), then `os.replace`d over `path`, and the
    directory fsync'ed so the rename itself survives a power cut.  Creates missing parent
    directories; the temp file is removed if anything fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        directory = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return  # e.g. a platform that cannot open directories: the rename is still atomic
    try:
        os.fsync(directory)
    except OSError:
        pass
    finally:
        os.close(directory)
