"""Say what a path is when it is not the regular file (or folder) a command expects.

``Path.is_file()`` is False for a missing file, a folder, a FIFO, a device and a symlink loop alike, so
"does not exist" would be wrong advice for all but the first. :func:`require_file` and
:func:`require_folder` raise a ``ValueError`` that names what the path really is.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = ["describe_path", "require_file", "require_folder"]


def describe_path(path: str | os.PathLike) -> str:
    """What ``path`` is, in words: ``'a regular file'``, ``'a folder'``, ``'a FIFO (named pipe)'``,
    ``'a symlink loop'``, ``'a broken symlink (to X)'``, ``'missing'``, ... (never raises)."""
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symlink loop (the link points back to itself)"
        if p.is_symlink():
            try:
                target = os.readlink(p)
            except OSError:
                target = "?"
            return f"a broken symlink (to {target})"
        if err.errno == errno.ENOENT:
            return "missing"
        if err.errno == errno.ENOTDIR:
            parent = p.parent
            while parent != parent.parent and not parent.is_file():
                parent = parent.parent
            return f"below {parent}, which is a file, not a folder"
        if err.errno == errno.EACCES:
            return "not accessible (permission denied)"
        return f"unreadable ({err.strerror})"
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _problem(path: Path, what: str, wanted: str) -> ValueError:
    kind = describe_path(path)
    if kind == "missing":
        return ValueError(f"{what} {path} does not exist")
    return ValueError(f"{what} {path} is {kind}, not {wanted}")


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` when it is a regular file (or a link to one); else ``ValueError`` naming what it is.

    Args:
        path: the path to check.
        what: how the message names it (``'labels CSV'``, ``'feature file'``, ``'--labels'``).
    """
    p = Path(path)
    if describe_path(p) != "a regular file":
        raise _problem(p, what, "a file")
    return p


def require_folder(path: str | os.PathLike, what: str = "folder") -> Path:
    """``path`` when it is a folder (or a link to one); else ``ValueError`` naming what it is."""
    p = Path(path)
    if describe_path(p) != "a folder":
        raise _problem(p, what, "a folder")
    return p
