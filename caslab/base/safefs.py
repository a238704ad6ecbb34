"""Writing and handing over result folders as root, where another account may own paths.

A result folder may end up owned by the user who ran sudo (or sit in a folder someone else
can write): every name inside it may be a symlink planted there, or be swapped for one while
root works. So root never resolves a path inside a result folder twice by name:

* ``write_file`` opens the file's folder without following a symlink (``O_NOFOLLOW``),
  writes a new file beside the target (``O_EXCL``) and renames it over the target in that
  same folder: a planted symlink or hard link is replaced, never written through.
* ``chown_tree`` walks with directory descriptors (``os.fwalk``, symlinks not followed)
  and changes owners relative to them (``dir_fd``, ``follow_symlinks=False``): a folder
  swapped for a symlink mid-walk cannot lead it outside.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def write_file(path: Path | str, data: str | bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` (str: UTF-8); OSError if its folder is a symlink."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    folder = os.open(path.parent, DIR_FLAGS)
    try:
        temp = f".{path.name}.{secrets.token_hex(6)}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                     dir_fd=folder)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
            os.rename(temp, path.name, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            try:
                os.unlink(temp, dir_fd=folder)
            except OSError:
                pass
            raise
    finally:
        os.close(folder)


def chown_tree(path: Path | str, uid: int, gid: int, recursive: bool = True) -> None:
    """Give ``path`` (and, if a folder and ``recursive``, everything under it) to uid/gid,
    never following a symlink: links themselves change owner, their targets never."""
    try:
        os.chown(path, uid, gid, follow_symlinks=False)  # the top as named (a link: the link itself)
    except OSError:
        pass
    if not recursive:
        return
    try:
        walk = os.fwalk(path, follow_symlinks=False)  # top must be a real folder, not a link
        for _root, dirs, files, root_fd in walk:
            for name in dirs + files:
                try:
                    os.chown(name, uid, gid, dir_fd=root_fd, follow_symlinks=False)
                except OSError:
                    continue
    except OSError:
        return

