"""Atomic writes: a failed stage leaves no half-written output behind.

Files are written to a temporary sibling and renamed into place; folders are built under a
temporary sibling name and renamed when complete, so readers see either the old state or the
complete new one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from cxrsynth.errors import CxrsynthError


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _plain_mode(path: Path, directory: bool) -> None:
    """Give ``path`` the permissions a plain ``open``/``mkdir`` would (mkstemp/mkdtemp make it private).

    Outputs are meant to be read by others (a release for sharing, a report for an ethics board);
    the process umask still decides, as for any other file the user creates.
    """
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename).

    Args:
        path: destination file; its parent folder is created if missing.
        data: the bytes to write.

    Returns:
        The destination path.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        _plain_mode(Path(tmp_name), directory=False)
        os.replace(tmp_name, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(dest.parent)
    return dest


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically. Returns the destination path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically.

    Non-finite floats are rejected, because JSON that other tools parse must be strict:
    convert NaN to None before calling.

    Raises:
        ValueError: when ``obj`` contains NaN or infinity.
    """
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name and move it to ``target`` only on success.

    Usage::

        with atomic_directory(out) as tmp:
            (tmp / "file").write_text("...")
        # out now exists, complete; on an exception nothing is left at ``out``.

    Args:
        target: the folder to create.
        overwrite: replace an existing ``target`` (the old one is removed only after the new
            one is complete).

    Yields:
        The temporary folder to write into (same parent as ``target``).

    Raises:
        CxrsynthError: when ``target`` exists and ``overwrite`` is false.
    """
    dest = Path(target)
    if dest.exists() and not overwrite:
        raise CxrsynthError(
            f"output folder {dest} already exists",
            "choose another output path, or remove it first",
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        _plain_mode(tmp, directory=True)
        yield tmp
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_PERMISSION_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_PATH_ERRNOS = frozenset({errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOENT, errno.ENAMETOOLONG, errno.ELOOP})


def os_error_message(exc: OSError) -> CxrsynthError | None:
    """The clear error for a file-system failure the user can fix (disk full, read-only, a path that is a file).

    Args:
        exc: the ``OSError`` a stage raised while reading or writing.

    Returns:
        A :class:`CxrsynthError` naming the file and the fix, or None for an ``OSError`` that is
        not one of these (left to surface as a bug).
    """
    where = exc.filename if exc.filename is not None else "a file"
    reason = exc.strerror or str(exc)
    if exc.errno in _SPACE_ERRNOS:
        return CxrsynthError(
            f"no space left while writing {where} ({reason}); nothing half-written was kept",
            "free disk space (or choose an output folder on another disk) and run the same command again "
            "(`train --resume` continues from the last complete checkpoint; `sample` makes only the missing images)",
        )
    if exc.errno in _PERMISSION_ERRNOS:
        return CxrsynthError(
            f"permission denied on {where} ({reason})",
            "make that folder writable for this user, or choose another output folder",
        )
    if exc.errno in _PATH_ERRNOS:
        return CxrsynthError(f"cannot use the path {where} ({reason})",
                             "check the path: a folder was expected where a file is, or the reverse")
    return None


def check_output_parent(path: str | os.PathLike[str], option: str = "--out") -> None:
    """Refuse an output path that is an existing file, or whose parent chain runs through a file.

    Raises:
        CxrsynthError: naming the file in the way.
    """
    target = Path(path)
    if target.is_file():
        raise CxrsynthError(f"{option} {target} is an existing file, not a folder", f"choose another {option}")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CxrsynthError(f"{option} {target} lies under {parent}, which is a file",
                                    f"choose an {option} whose parent folders are folders")
            return


def plain_permissions(folder: str | os.PathLike[str]) -> None:
    """Give every file and folder under ``folder`` the permissions a plain ``open``/``mkdir`` would (the umask decides).

    safetensors creates its files 0600; a model folder meant to be shared (``RUN/pipeline``)
    should be readable like every other output.
    """
    root = Path(folder)
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            _plain_mode(path, directory=path.is_dir())
