"""Writing export artefacts atomically: readers see the old artefact or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_output(path: Path, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; once the block ends without error it becomes ``path``.

    With ``directory`` the temporary path is an (empty) directory, for formats that are directories
    (a SavedModel); an existing artefact at ``path`` is replaced. On error the temporary is removed
    and ``path`` is left as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    else:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory:
            _replace_dir(tmp, path)
        else:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def _replace_dir(tmp: Path, path: Path) -> None:
    """Move directory ``tmp`` to ``path``, replacing what is there (the old one is removed after)."""
    if not path.exists():
        tmp.rename(path)
        return
    old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
    old.rmdir()
    path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
