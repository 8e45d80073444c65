"""Writing files so that a crash leaves the old content or the new one, never a torn mix.

I/O, so not in `stixbus.core`; Kafka-independent, so connectors, the Kafka plumbing and the CLI
can all use it (it sits with `settings`/`context`/`metrics` in the layers of
docs/architecture.md).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


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
