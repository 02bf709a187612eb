"""Extracting a tarball safely: every member must land inside the destination folder.

Refused, before anything is written: members with an absolute path, with a ``..`` component,
symbolic or hard links whose target is absolute or lies outside the folder, and device files or
FIFOs. Where Python's tarfile has extraction filters (3.10.12+, 3.11.4+, 3.12+) the ``"data"``
filter checks each member again as it is written (it also catches links that only escape through
other links); without them, links are refused altogether.

The archive is extracted into a temporary folder inside the destination, then moved into place:
an archive that turns out truncated or unsafe halfway leaves nothing behind, and files already
present in the destination are kept, never overwritten.
"""
from __future__ import annotations

import os
import posixpath
import secrets
import shutil
import tarfile
import zlib
from pathlib import Path, PureWindowsPath

from .errors import DatasetFormatError, UnsafeArchiveError

_HAS_FILTERS = hasattr(tarfile, "data_filter")
_FILTER_ERROR = getattr(tarfile, "FilterError", ())
_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


def _is_absolute(name: str) -> bool:
    return name.startswith(("/", "\\")) or bool(PureWindowsPath(name).drive)


def _parts(name: str) -> list:
    return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]


def _escapes(path: str) -> bool:
    """Whether a relative archive path, normalised, leaves the archive's root."""
    norm = posixpath.normpath(path.replace("\\", "/"))
    return norm == ".." or norm.startswith("../")


def _unsafe(member: tarfile.TarInfo):
    """Why ``member`` may not be extracted, or None."""
    name = member.name
    if _is_absolute(name):
        return "an absolute path"
    if ".." in _parts(name):
        return "a '..' component in its path"
    if member.isdev():
        return "a device file or FIFO"
    if member.issym() or member.islnk():
        kind = "symbolic link" if member.issym() else "hard link"
        target = member.linkname
        if not _HAS_FILTERS:
            return f"a {kind} (to {target!r}; this Python's tarfile has no extraction filters, so links are refused)"
        if _is_absolute(target):
            return f"a {kind} to the absolute path {target!r}"
        # a symbolic link is relative to its own folder, a hard link to the archive's root
        resolved = posixpath.join(posixpath.dirname(name), target) if member.issym() else target
        if _escapes(resolved):
            return f"a {kind} pointing outside the folder (to {target!r})"
    return None


def _merge(src: Path, dest: Path):
    """Moves the entries of ``src`` into ``dest``; entries already in ``dest`` are kept."""
    for entry in sorted(src.iterdir()):
        target = dest / entry.name
        if not os.path.lexists(target):
            os.replace(entry, target)
        elif target.is_dir() and not target.is_symlink() and entry.is_dir() and not entry.is_symlink():
            _merge(entry, target)


def extract_tarball(tarball, dest) -> Path:
    """Extracts ``tarball`` (any compression tarfile reads) into the folder ``dest`` safely (see
    the module docstring) and returns ``dest``. Raises :class:`UnsafeArchiveError` naming the
    first unsafe member (nothing is extracted then), :class:`DatasetFormatError` for an archive
    that cannot be read (truncated, corrupted), ``OSError`` when ``dest`` cannot be written."""
    tarball, dest = Path(tarball), Path(dest)
    try:
        archive = tarfile.open(tarball, "r:*")
    except _READ_ERRORS as exc:
        raise DatasetFormatError(f"{tarball}: cannot read it as a tar archive ({type(exc).__name__}: "
                                 f"{exc}); it is probably truncated or corrupted") from exc
    with archive:
        try:
            members = archive.getmembers()
        except _READ_ERRORS as exc:
            raise DatasetFormatError(f"{tarball}: the archive is truncated or corrupted "
                                     f"({type(exc).__name__}: {exc})") from exc
        for member in members:
            why = _unsafe(member)
            if why is not None:
                raise UnsafeArchiveError(f"{tarball}: refusing to extract it: member {member.name!r} has "
                                         f"{why}. Nothing was extracted.", member=member.name)
        dest.mkdir(parents=True, exist_ok=True)
        tmp = dest / f".{tarball.name}.{secrets.token_hex(4)}.extract"
        tmp.mkdir()
        try:
            kwargs = {"filter": "data"} if _HAS_FILTERS else {}
            try:
                archive.extractall(tmp, members=members, **kwargs)
            except _FILTER_ERROR as exc:
                raise UnsafeArchiveError(f"{tarball}: refusing to extract it: {exc}. Nothing was extracted.",
                                         member=getattr(getattr(exc, "tarinfo", None), "name", "")) from exc
            except (tarfile.TarError, EOFError, zlib.error) as exc:
                raise DatasetFormatError(f"{tarball}: the archive is truncated or corrupted "
                                         f"({type(exc).__name__}: {exc}). Nothing was extracted.") from exc
            _merge(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
