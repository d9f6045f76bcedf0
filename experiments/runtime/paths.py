"""Whether a path can be made, asked of the file system itself before any work is done."""

from __future__ import annotations

import tempfile
from pathlib import Path


def writable_ancestor(path: Path) -> Path:
    """The nearest existing folder above `path`, checked by making (and removing) a folder
    in it: permission bits say little to root, and /proc or a read-only mount refuse.
    Raises OSError (with the reason) when nothing can be made there."""
    base = path.resolve().parent
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise NotADirectoryError(20, f"{base} is not a folder")
    Path(tempfile.mkdtemp(prefix=".probe-", dir=base)).rmdir()
    return base
