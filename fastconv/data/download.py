"""Downloading dataset files from a list of mirrors, verified by md5 (urllib only).

    fetch("train-images-idx3-ubyte.gz", folder, MNIST_MIRRORS)  # -> folder / the name

A file's URL is a mirror's prefix followed by the file's standard name. The file is written to a
temporary name in the target folder (``.NAME.XXXXXXXX.part``), checked, and only then renamed to
its final name: a file under a final name is always complete and verified, and a failed attempt
leaves nothing behind. Any failure (connection refused, HTTP error, dropped connection, timeout,
checksum mismatch) moves on to the next mirror; when every mirror has failed,
:class:`DownloadError` lists each one's failure and says where to put the file by hand.

The digests checked are the published ones of :data:`fastconv.data.files.MD5`, by file name; a
gzipped file passes when its own md5 is the published ``.gz`` one or when the md5 of its
decompressed content is the published raw one (a mirror may serve a re-compressed copy).
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import secrets
import socket
import ssl
import sys
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Iterable, Optional, Union

from ..progress import Progress
from .errors import DownloadError
from . import files
from .files import _is_gzip_name

DEFAULT_TIMEOUT = 30.0
"""Seconds a connection may stay silent (connecting, or between two reads) before the mirror is
given up."""

USER_AGENT = "fastconv-data (Python urllib)"

_CHUNK = 1 << 16


class _MirrorFailure(Exception):
    """One mirror's failure; the message says what went wrong."""


def _prefixes(mirrors: Union[str, Iterable[str]]) -> list:
    if isinstance(mirrors, (str, bytes)):
        mirrors = [mirrors]
    out = [str(m) if str(m).endswith("/") else str(m) + "/" for m in mirrors]
    if not out:
        raise ValueError("mirrors is empty: give at least one URL prefix")
    return out


def _expected(name: str, md5: Optional[str], content_md5: Optional[str]):
    md5 = files.MD5.get(name) if md5 is None else md5
    if content_md5 is None and _is_gzip_name(name):
        content_md5 = files.MD5.get(name[:-3])
    if md5 is None and content_md5 is None:
        raise ValueError(f"no published md5 is known for {name!r}: pass md5= (downloads are always "
                         "verified)")
    return md5, content_md5


def _problem(path: Path, name: str, md5: Optional[str], content_md5: Optional[str],
             file_md5: Optional[str] = None) -> Optional[str]:
    """None when ``path`` passes the check, else what is wrong with it."""
    if file_md5 is None:
        with open(path, "rb") as f:
            h = hashlib.md5(usedforsecurity=False)
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        file_md5 = h.hexdigest()
    if md5 is not None and file_md5 == md5:
        return None
    said = [f"md5 {file_md5}, not the published {md5}"] if md5 is not None else [f"md5 {file_md5}"]
    if content_md5 is not None and _is_gzip_name(name):
        h = hashlib.md5(usedforsecurity=False)
        try:
            with gzip.open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except (OSError, EOFError, zlib.error) as exc:
            said.append(f"and it does not decompress ({type(exc).__name__}: {exc}): truncated or corrupted")
        else:
            if h.hexdigest() == content_md5:
                return None
            said.append(f"decompressed content's md5 {h.hexdigest()}, not the published {content_md5}")
    return "checksum mismatch: " + "; ".join(said)


def _describe(exc: BaseException, timeout: float) -> str:
    """A short sentence for a network failure."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, BaseException):
            return _describe(reason, timeout)
        return f"cannot open the URL ({reason})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"timed out (no data for {timeout:g} s)"
    if isinstance(exc, socket.gaierror):
        return f"host not found ({exc.strerror or exc})"
    if isinstance(exc, ssl.SSLError):
        return f"SSL error ({exc})"
    if isinstance(exc, (ConnectionError, http.client.IncompleteRead, http.client.RemoteDisconnected)):
        return f"connection dropped ({type(exc).__name__}: {exc})"
    return f"{type(exc).__name__}: {exc}"


def _say(text: str, enabled: bool):
    if enabled:
        print(text, file=sys.stderr, flush=True)


def _download(url: str, tmp: Path, desc: str, timeout: float, progress: bool) -> str:
    """Writes the body of ``url`` to ``tmp`` (a new file); returns its md5. Network failures raise
    :class:`_MirrorFailure`; failures to write ``tmp`` raise ``OSError``."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    opener = urllib.request.build_opener()  # built per call: proxy settings are read from the environment now
    h = hashlib.md5(usedforsecurity=False)
    done = 0
    try:
        response = opener.open(request, timeout=timeout)
    except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError is an OSError
        raise _MirrorFailure(_describe(exc, timeout)) from exc
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length is not None and length.isdigit() else None
        with open(tmp, "xb") as f, Progress(total, desc, unit="B", enabled=progress) as bar:
            while True:
                try:
                    block = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    got = f" after {done} of {total} bytes" if total else f" after {done} bytes"
                    raise _MirrorFailure(_describe(exc, timeout) + got) from exc
                if not block:
                    break
                f.write(block)
                h.update(block)
                done += len(block)
                bar.update(len(block))
            f.flush()
            os.fsync(f.fileno())
    if total is not None and done != total:
        raise _MirrorFailure(f"connection closed after {done} of {total} bytes")
    return h.hexdigest()


def _try_mirrors(name, folder, prefixes, md5, content_md5, timeout, progress) -> list:
    """Tries the mirrors in order until one delivers ``name`` intact into ``folder``; returns the
    (url, reason) of each failure, an empty list when the last one tried succeeded."""
    failures = []
    for i, prefix in enumerate(prefixes):
        url = prefix + name
        tmp = folder / f".{name}.{secrets.token_hex(4)}.part"
        _say(f"downloading {url} -> {folder / name}", progress)
        try:
            file_md5 = _download(url, tmp, name, timeout, progress)
            problem = _problem(tmp, name, md5, content_md5, file_md5)
            if problem is not None:
                raise _MirrorFailure(problem)
            os.replace(tmp, folder / name)
            return []
        except _MirrorFailure as exc:
            failures.append((url, str(exc)))
            _say(f"  failed: {exc}" + ("; trying the next mirror" if i + 1 < len(prefixes) else ""),
                 progress)
        except OSError as exc:  # the download could not be written here: another mirror would not help
            raise OSError(f"cannot write {name} to {folder}: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
    return failures


def fetch(name: str, folder, mirrors: Union[str, Iterable[str]], *, md5: Optional[str] = None,
          content_md5: Optional[str] = None, timeout: Optional[float] = None,
          progress: bool = True) -> Path:
    """``folder / name``, downloaded from the first of ``mirrors`` (URL prefixes, a ``/`` added
    where missing) that delivers it intact, unless it is there and intact already.

    ``md5``: the digest of the file (default: the published one, ``MD5[name]``); ``content_md5``:
    for a ``.gz`` name, the digest of the decompressed content (default ``MD5[name less .gz]``);
    either passing is enough. ``timeout``: seconds of silence before a mirror is given up
    (default :data:`DEFAULT_TIMEOUT`). ``progress``: a line per mirror tried and a progress bar
    per file on stderr. Raises :class:`DownloadError` when every mirror fails, ``OSError`` when
    the folder cannot be written.
    """
    md5, content_md5 = _expected(name, md5, content_md5)
    prefixes = _prefixes(mirrors)
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    folder = Path(folder).expanduser()
    final = folder / name
    if final.is_file() and _problem(final, name, md5, content_md5) is None:
        return final
    created, d = [], folder  # the folders made here, deepest first: removed again if nothing comes
    while not d.exists() and d != d.parent:
        created.append(d)
        d = d.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot create {folder} to download {name} into it: {exc}") from exc
    try:
        failures = _try_mirrors(name, folder, prefixes, md5, content_md5, timeout, progress)
    finally:
        if not final.is_file():
            for d in created:
                try:
                    d.rmdir()
                except OSError:
                    break
    if not failures:
        return final
    digests = [f"its md5 is {md5}"] if md5 else []
    if content_md5:
        digests.append(f"its decompressed content's md5 is {content_md5}")
    lines = "\n".join(f"  {url}: {reason}" for url, reason in failures)
    raise DownloadError(
        f"could not download {name} from any of the {len(failures)} mirror(s) tried:\n{lines}\n"
        f"Nothing was left in {folder}. Download {name} yourself (from a URL above or elsewhere: "
        f"{', or '.join(digests)}) and put it in {folder}, or pass other mirrors (mirrors=[URL "
        "prefix, ...]; bench/train.py: --mirror URL).",
        failures=failures, folder=str(folder), missing=[name])
