"""Saves that survive faults: a file or folder is written under a temporary name in the same directory, flushed,
then renamed into place, so Ctrl-C, SIGKILL or a full disk mid-save leave the previous good copy and never a
half-written one under the real name.

Lightning's own `_atomic_save` writes through an fsspec transaction whose temporary file lives in the system temp
directory; when that is another file system the final move is a copy into the destination, which a full disk cuts
short under the real name. `AtomicCheckpointIO` replaces it for local paths.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from modules.settings import SettingsError


class SaveError(SettingsError):
    """A save that could not complete (full disk, no permission); the previous copy is untouched."""


def _why(err: OSError, path: Path) -> SaveError:
    hint = {errno.ENOSPC: "free space or point the run at another disk (trainer.default_root_dir)",
            errno.EACCES: "make it writable or choose another trainer.default_root_dir",
            errno.EROFS: "choose a writable trainer.default_root_dir"}.get(err.errno, "check the path")
    return SaveError(f"cannot write {str(path)!r}: {err.strerror or err}; {hint} (the previous copy is kept)")


def _fsync_tree(path: Path) -> None:
    for file in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
        with open(file, "rb") as f:
            os.fsync(f.fileno())


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _temp_name(path: Path, tag: str) -> Path:
    return path.parent / f".{path.name}.{tag}-{os.getpid()}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write into (a folder when `directory`); on success it replaces
    `path` (an existing folder is swapped out, then removed); on any failure it is removed and `path` is left as
    it was. An OSError (full disk, permissions) becomes a one-line `SaveError`."""
    path = Path(path)
    tmp = _temp_name(path, "tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove(tmp)
        if directory:
            tmp.mkdir()
        yield tmp
        _fsync_tree(tmp)
        if directory and path.exists():
            old = _temp_name(path, "old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as err:
        _remove(tmp)
        if isinstance(err, OSError) and not isinstance(err, SaveError):
            raise _why(err, path) from None
        raise


def check_writable(directory: str | os.PathLike, field: str) -> None:
    """`directory` can be created and written (a probe file is written and removed), else a one-line SaveError."""
    path = Path(directory).expanduser()
    probe = path / f".r1-write-probe-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"0" * 4096)
    except OSError as err:
        raise SaveError(f"{field}={str(path)!r} is not writable: {err.strerror or err}; choose a writable "
                        "folder with free space") from None
    finally:
        probe.unlink(missing_ok=True)


def json_safe(value: Any) -> Any:
    """NaN -> None, recursively through dicts, lists and tuples (strict JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through `atomic_path`: a reader sees the old file or the whole new one."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary file in the same directory, fsynced, then renamed."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO does not take storage_options, got {storage_options!r}")
        if "://" in str(path):  # remote storage: fsspec's own transaction
            return super().save_checkpoint(checkpoint, path)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


__all__ = ["AtomicCheckpointIO", "SaveError", "atomic_path", "atomic_write_text", "check_writable", "json_safe"]
