"""On-disk cache for built or converted models: build once, publish atomically, reuse.

A cached directory is valid when its stamp file (a small JSON written last) equals the stamp the
caller expects. Builds run under a file lock into a temporary sibling directory that is swapped in
with ``os.replace``, so an interrupted build never leaves a half-written model behind and two
processes never write the same directory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

_TMP_TAG = ".building-"


class ModelNotFoundError(FileNotFoundError):
    """A model name or path that cannot be resolved to something `from_pretrained` can load."""


def default_cache_dir() -> Path:
    """``$R1_CACHE`` if set, else ``~/.cache/r1-recipes``."""
    return Path(os.environ.get("R1_CACHE") or Path.home() / ".cache" / "r1-recipes").expanduser()


def read_stamp(path: str | os.PathLike, stamp_name: str) -> dict[str, Any] | None:
    """The JSON stamp stored in ``path/stamp_name``, or None if absent or unreadable."""
    try:
        return json.loads((Path(path) / stamp_name).read_text())
    except (OSError, ValueError):
        return None


def cached_build(
    path: str | os.PathLike,
    stamp: dict[str, Any],
    build: Callable[[Path], None],
    *,
    stamp_name: str,
) -> Path:
    """Return ``path`` if it holds a build with this ``stamp``; otherwise run ``build(tmp_dir)``,
    write the stamp last and move the result to ``path``.

    ``path`` is only ever replaced when it is empty or holds an earlier build (it has a stamp
    file): a directory with other content raises ``FileExistsError`` rather than being deleted.
    """
    path = Path(path).expanduser().absolute()
    if read_stamp(path, stamp_name) == stamp:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if read_stamp(path, stamp_name) == stamp:  # another process built it while we waited
            return path
        _check_replaceable(path, stamp_name)
        for stale in path.parent.glob(f".{path.name}{_TMP_TAG}*"):  # leftovers of killed builds
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}{_TMP_TAG}", dir=path.parent))
        try:
            build(tmp)
            (tmp / stamp_name).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
            tmp.chmod(0o755)  # mkdtemp makes it private; a cache is readable like any model folder
            if path.exists():
                old = path.with_name(f".{path.name}{_TMP_TAG}old")
                os.replace(path, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return path


def _check_replaceable(path: Path, stamp_name: str) -> None:
    if not path.exists():
        return
    if not path.is_dir():
        raise FileExistsError(f"cannot build a model at {path}: it is a file; pass a directory path")
    if any(path.iterdir()) and not (path / stamp_name).exists():
        raise FileExistsError(
            f"cannot build a model at {path}: the directory holds other files (no {stamp_name}); "
            "pass an empty or new directory"
        )
