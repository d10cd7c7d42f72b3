"""Files that are never left half-written: atomic writes, and JSON reads that name the file on error."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Callable


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` on a temporary file in ``path``'s folder, flush it to disk, then rename it over ``path``.

    An interrupted write leaves the previous file (or none) in place, never a partial one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(path: str | Path, obj, **kwargs) -> None:
    """``obj`` as indented JSON at ``path``, written atomically."""
    text = json.dumps(obj, indent=2, **kwargs) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def read_json(path: str | Path):
    """The JSON at ``path``; SystemExit naming the file when it is not valid JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise SystemExit(f"{path}: not valid JSON ({e})") from None
