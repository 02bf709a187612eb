"""The exceptions and the warning that the dataset loaders raise or issue."""
from __future__ import annotations

from typing import Sequence


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are not in the folders searched. ``missing``: the file names (with
    the accepted variants), ``searched``: the folders looked in."""

    def __init__(self, message: str, missing: Sequence[str] = (), searched: Sequence[str] = ()):
        super().__init__(message)
        self.missing = list(missing)
        self.searched = list(searched)

    def __str__(self):  # FileNotFoundError's own __str__ would show "[Errno ...]" forms
        return self.args[0]


class DatasetFormatError(ValueError):
    """A dataset file is not what its name says: bad magic number, truncated, wrong shape..."""


class ChecksumError(ValueError):
    """A known file's md5 differs from the published one (``verify="strict"``)."""


class ChecksumWarning(UserWarning):
    """A known file's md5 differs from the published one (``verify="warn"``, the default)."""



class DownloadError(DatasetNotFoundError):
    """A missing file could not be fetched from any mirror. ``failures``: (url, reason) per mirror
    tried, in order; ``folder``: where the file was to go (nothing was left there)."""

    def __init__(self, message: str, failures: Sequence[tuple] = (), folder: str = "",
                 missing: Sequence[str] = ()):
        super().__init__(message, missing=missing, searched=[folder] if folder else [])
        self.failures = list(failures)
        self.folder = folder


class UnsafeArchiveError(DatasetFormatError):
    """A tarball has a member that would land outside the folder it is extracted into (an absolute
    path, a ``..`` component, a link pointing outside) or is a device file; nothing was extracted.
    ``member``: its name."""

    def __init__(self, message: str, member: str = ""):
        super().__init__(message)
        self.member = member
