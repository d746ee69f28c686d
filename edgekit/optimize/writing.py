"""Writing the result: refuse a bad output path before any slow work, then replace it atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from edgekit.errors import OutputError

__all__ = ["atomic_write", "check_output_path"]


def check_output_path(out: Path, model: Path) -> None:
    parent = out.parent if str(out.parent) else Path(".")
    if out.resolve() == model.resolve():
        raise OutputError(f"output {out} would overwrite the input model")
    if out.is_dir():
        raise OutputError(f"output {out} is a directory; give a file name like model.int8.onnx")
    if not parent.is_dir():
        raise OutputError(f"cannot write {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {out}: folder {parent} is not writable")
    # os.access says yes to root and knows nothing of read-only mounts or /proc: create the
    # temporary file the result will be written through, and remove it again.
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{out.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from exc
    os.close(fd)
    Path(probe).unlink(missing_ok=True)


def atomic_write(path: Path, data: bytes) -> None:
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror}") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
