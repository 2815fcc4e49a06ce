"""Robust dataset download with the standard library only (``urllib``).

What :func:`download_file` guarantees:

* The download goes to ``<dest>.part``; an existing ``.part`` from the same URL is resumed
  with an HTTP ``Range`` request (``If-Range`` guards against a changed file). A server that
  ignores the range (200 instead of 206) makes the download restart from zero; 416 on a
  ``.part`` that is already whole is accepted.
* A cut connection, a stalled server (socket timeout), a refused connection or a 5xx/429 answer
  is retried ``retries`` times with exponential backoff, resuming each time; an attempt that
  made progress does not use up a retry. 4xx answers (404, 403, ...) are not retried. Then the
  next mirror is tried.
* md5 and sha256 are computed while streaming, over the resumed prefix too, and checked
  against the mirror's checksum, or, when that is unknown, against the manifest entry left by
  an earlier download (the first download records one). A mismatch moves the file aside as
  ``<dest>.corrupt`` and tries the next mirror; when none is left,
  :class:`~descbal.errors.DataMissingError` (exit code 3) names the file, expected and got.
* Only a verified file is renamed to ``dest``; nothing that looks complete is left otherwise.

:func:`fetch` turns :class:`~descbal.data.sources.RemoteFile` entries into extracted folders
(with a ``.descbal-complete.json`` marker written last) or placed files, and is idempotent.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from descbal import __version__
from descbal.data.archive import extract_archive
from descbal.data.sources import Mirror, RemoteFile, parse_checksum
from descbal.errors import BadInputError, DataMissingError, DescbalError
from descbal.fileio import atomic_path, write_text_atomic
from descbal.progress import Progress
from descbal.results import JsonResult

MANIFEST_NAME = "manifest.json"
MARKER_NAME = ".descbal-complete.json"
_CHUNK = 1 << 20
_USER_AGENT = f"descbal/{__version__} (+urllib)"
#: HTTP statuses worth retrying on the same mirror; other errors go straight to the next one.
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass
class DownloadResult:
    """Outcome of one :func:`download_file` call.

    Attributes:
        path: The final, verified file.
        url: The URL it came from (for a skipped file: the one recorded in the manifest, if any).
        size: Size in bytes.
        sha256: Hex sha256 of the file.
        md5: Hex md5 of the file.
        resumed: ``True`` if the file was completed from a partial download.
        skipped: ``True`` if ``path`` already held a verified copy and nothing was downloaded.
        verified: ``True`` if the file matched a known checksum (the mirror's or the manifest's);
            ``False`` for a first download whose checksum was unknown (it is now recorded).
    """

    path: Path
    url: str
    size: int
    sha256: str
    md5: str
    resumed: bool = False
    skipped: bool = False
    verified: bool = False


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------


class Manifest:
    """``<root>/manifest.json``: sha256, size and URL of every file downloaded under ``root``.

    Entries are keyed by the file's POSIX path relative to ``root`` (absolute for files outside
    it). The file is re-read before every write and written atomically.
    """

    def __init__(self, root: Path) -> None:
        """Bind the manifest of ``root`` (the file need not exist yet).

        Args:
            root: The data root.
        """
        self.root = Path(root)
        self.path = self.root / MANIFEST_NAME

    def key(self, path: Path) -> str:
        """The manifest key of ``path``.

        Args:
            path: A file, normally under :attr:`root`.

        Returns:
            Its POSIX path relative to the root, or its absolute POSIX path.
        """
        path = Path(path)
        try:
            return path.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return path.resolve().as_posix()

    def _load(self) -> dict[str, dict[str, Any]]:
        """All entries; empty when the file does not exist."""
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            files = data["files"]
            if not isinstance(files, dict):
                raise TypeError("'files' is not an object")
        except (ValueError, KeyError, TypeError) as exc:
            raise BadInputError(f"corrupt manifest ({exc}); delete it to start over", path=self.path) from exc
        return files

    def get(self, path: Path) -> dict[str, Any] | None:
        """The entry recorded for ``path``.

        Args:
            path: The file.

        Returns:
            ``{"sha256", "size", "url", ...}`` or ``None`` if nothing is recorded.
        """
        return self._load().get(self.key(path))

    def forget(self, path: Path) -> None:
        """Drop the entry for ``path`` (e.g. a recorded file that proved corrupt), if any.

        Args:
            path: The file.
        """
        files = self._load()
        if files.pop(self.key(path), None) is not None:
            self._save(files)

    def _save(self, files: dict[str, dict[str, Any]]) -> None:
        """Write all entries atomically."""
        body = json.dumps({"version": 1, "files": dict(sorted(files.items()))}, indent=2) + "\n"
        write_text_atomic(self.path, body)

    def record(self, path: Path, *, sha256: str, size: int, url: str, **extra: Any) -> None:
        """Record (or replace) the entry for ``path`` and save the manifest atomically.

        Args:
            path: The file.
            sha256: Hex sha256 of the file.
            size: Size in bytes.
            url: Where it came from.
            **extra: Further JSON-serialisable fields (e.g. ``md5``).
        """
        files = self._load()
        files[self.key(path)] = {
            "sha256": sha256,
            "size": size,
            "url": url,
            **extra,
            "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        self._save(files)


# --------------------------------------------------------------------------------------------
# Hashing helpers
# --------------------------------------------------------------------------------------------


@dataclass
class _Hashes:
    """Running md5 + sha256 + size of a byte stream."""

    md5: Any = field(default_factory=lambda: hashlib.md5(usedforsecurity=False))
    sha256: Any = field(default_factory=hashlib.sha256)
    size: int = 0

    def update(self, chunk: bytes) -> None:
        """Feed ``chunk`` to both digests."""
        self.md5.update(chunk)
        self.sha256.update(chunk)
        self.size += len(chunk)

    def digest(self, algo: str) -> str:
        """Hex digest for ``"md5"`` or ``"sha256"``."""
        return self.md5.hexdigest() if algo == "md5" else self.sha256.hexdigest()


def _hash_file(path: Path) -> _Hashes:
    """md5 + sha256 + size of a file on disk."""
    hashes = _Hashes()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            hashes.update(chunk)
    return hashes


def _expected_checksum(mirror: Mirror, manifest: Manifest | None, dest: Path) -> tuple[str, str, str] | None:
    """The checksum a download from ``mirror`` must match.

    Returns:
        ``(algo, hex, source)`` where source says where it came from, or ``None`` if unknown.
    """
    if mirror.checksum is not None:
        algo, digest = parse_checksum(mirror.checksum)
        return algo, digest, "mirror"
    entry = manifest.get(dest) if manifest is not None else None
    if entry and entry.get("sha256"):
        return "sha256", str(entry["sha256"]).lower(), "manifest"
    return None


def _matches(hashes: _Hashes, expected: tuple[str, str, str] | None) -> bool:
    """Whether ``hashes`` satisfy ``expected`` (always true when nothing is expected)."""
    return expected is None or hashes.digest(expected[0]) == expected[1]


# --------------------------------------------------------------------------------------------
# One HTTP transfer
# --------------------------------------------------------------------------------------------


class _Transient(Exception):
    """A failure worth retrying on the same mirror (cut connection, timeout, 5xx)."""


class _MirrorFailed(Exception):
    """This mirror cannot deliver the file; try the next one."""


@dataclass
class _PartState:
    """The ``.part`` file, its sidecar (URL and validators) and how to talk about it."""

    part: Path
    meta: Path
    name: str

    def resumable_offset(self, url: str) -> int:
        """Bytes already on disk for ``url``; a ``.part`` from another URL is discarded."""
        if not self.part.is_file():
            return 0
        try:
            info = json.loads(self.meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            info = {}
        if info.get("url") != url:
            self.discard()
            return 0
        return self.part.stat().st_size

    def validator(self) -> str | None:
        """Strong ETag (preferred) or Last-Modified saved with the ``.part``, for ``If-Range``."""
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(self.meta.read_text(encoding="utf-8"))
            etag = info.get("etag")
            if etag and not str(etag).startswith("W/"):  # weak ETags are not allowed in If-Range
                return str(etag)
            return info.get("last_modified")
        return None

    def save_meta(self, url: str, resp: http.client.HTTPResponse) -> None:
        """Remember which URL (and which version of it) the ``.part`` holds."""
        info = {"url": url, "etag": resp.headers.get("ETag"), "last_modified": resp.headers.get("Last-Modified")}
        write_text_atomic(self.meta, json.dumps(info) + "\n")

    def discard(self) -> None:
        """Delete the ``.part`` and its sidecar."""
        for path in (self.part, self.meta):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """Parse ``bytes START-END/TOTAL`` or ``bytes */TOTAL`` into ``(start, total)``."""
    if not header or not header.strip().lower().startswith("bytes"):
        return None, None
    spec = header.strip()[5:].strip()
    rng, _, total_s = spec.partition("/")
    start_s = rng.split("-", 1)[0]
    start = int(start_s) if start_s.strip().isdigit() else None
    total = int(total_s) if total_s.strip().isdigit() else None
    return start, total


def _open(url: str, offset: int, validator: str | None, timeout: float) -> http.client.HTTPResponse:
    """Send the GET (with ``Range`` from ``offset`` when resuming)."""
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
        if validator:
            headers["If-Range"] = validator
    request = urllib.request.Request(url, headers=headers)
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) URLs from the registry or the user


def _stream(
    resp: http.client.HTTPResponse,
    state: _PartState,
    hashes: _Hashes,
    append: bool,
    total: int | None,
    progress: Progress | None,
) -> None:
    """Copy the response body to the ``.part`` while hashing; raise :class:`_Transient` if cut short."""
    read = getattr(resp, "read1", resp.read)  # read1: return what has arrived, so a stall loses nothing
    with open(state.part, "ab" if append else "wb") as f:
        while chunk := read(_CHUNK):
            f.write(chunk)
            hashes.update(chunk)
            if progress is not None:
                progress(state.name, hashes.size, total)
    if total is not None and hashes.size < total:
        raise _Transient(f"connection closed after {hashes.size} of {total} bytes")


def _transfer(url: str, state: _PartState, timeout: float, progress: Progress | None) -> tuple[_Hashes, bool]:
    """One attempt: resume or start the download of ``url`` into the ``.part`` until complete.

    Returns:
        The hashes of the whole ``.part`` and whether a previous prefix was kept.

    Raises:
        _Transient: retry (cut, timeout, 5xx, a 206 from the wrong offset).
        _MirrorFailed: give up on this mirror (4xx).
    """
    offset = state.resumable_offset(url)
    try:
        resp = _open(url, offset, state.validator(), timeout)
    except urllib.error.HTTPError as exc:
        try:
            if exc.code == 416 and offset > 0:
                return _on_416(state, exc.headers.get("Content-Range"), offset)
            if exc.code in _RETRY_STATUS:
                raise _Transient(f"HTTP {exc.code} {exc.reason}") from exc
            raise _MirrorFailed(f"HTTP {exc.code} {exc.reason}") from exc
        finally:
            exc.close()
    with resp:
        length = resp.headers.get("Content-Length")
        body_len = int(length) if length and length.isdigit() else None
        resumed = offset > 0 and resp.status == 206
        if resumed:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != offset:
                state.discard()
                raise _Transient(f"server resumed at byte {start}, not {offset}; restarting")
            if total is None and body_len is not None:
                total = offset + body_len
            hashes = _hash_file(state.part)
        else:  # 200: full body (also when the server ignored the Range header)
            total, hashes = body_len, _Hashes()
        state.save_meta(url, resp)
        _stream(resp, state, hashes, resumed, total, progress)
    return hashes, resumed


def _on_416(state: _PartState, content_range: str | None, offset: int) -> tuple[_Hashes, bool]:
    """Range not satisfiable: accept a ``.part`` that is already whole, otherwise restart."""
    _, total = _content_range(content_range)
    if total is not None and total == offset:
        return _hash_file(state.part), True
    state.discard()
    raise _Transient(f"HTTP 416 for a {offset}-byte partial file (remote size {total}); restarting")


def _is_network_error(exc: BaseException) -> bool:
    """Network-level errors that a retry may fix (timeouts, resets, refused connections, bad HTTP)."""
    if isinstance(exc, urllib.error.HTTPError):
        return False
    return isinstance(exc, (urllib.error.URLError, TimeoutError, ConnectionError, ssl.SSLError, http.client.HTTPException))


def _download_from(
    url: str, state: _PartState, *, timeout: float, retries: int, backoff: float, progress: Progress | None
) -> tuple[_Hashes, bool]:
    """Download ``url`` into the ``.part``, retrying transient failures with exponential backoff.

    Returns:
        The hashes of the complete ``.part`` and whether any prefix was resumed into the result.

    Raises:
        _MirrorFailed: a permanent error, or the retries are used up.
    """
    failures = 0
    best = state.part.stat().st_size if state.part.is_file() else 0
    while True:
        try:
            return _transfer(url, state, timeout, progress)
        except _MirrorFailed:
            raise
        except _Transient as exc:
            reason = str(exc)
        except OSError as exc:
            if not _is_network_error(exc):
                raise DescbalError(f"cannot write the partial download: {exc.strerror or exc}", path=state.part) from exc
            reason = _describe(exc)
        except http.client.HTTPException as exc:
            reason = _describe(exc)
        after = state.part.stat().st_size if state.part.is_file() else 0
        failures = 0 if after > best else failures + 1  # only getting further than ever before is progress
        best = max(best, after)
        if failures > retries:
            raise _MirrorFailed(f"{reason} (after {retries} retries)")
        time.sleep(backoff * (2 ** max(failures - 1, 0)))


def _describe(exc: BaseException) -> str:
    """Short text for a network error."""
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------------------------
# download_file
# --------------------------------------------------------------------------------------------


def _existing_ok(dest: Path, mirrors: Sequence[Mirror], manifest: Manifest | None) -> DownloadResult | None:
    """A result for ``dest`` if it already exists and matches a known checksum, else ``None``."""
    if not dest.is_file():
        return None
    known = [parse_checksum(m.checksum) for m in mirrors if m.checksum is not None]
    entry = manifest.get(dest) if manifest is not None else None
    if entry and entry.get("sha256"):
        known.append(("sha256", str(entry["sha256"]).lower()))
    if not known:
        return None
    hashes = _hash_file(dest)
    if not any(hashes.digest(algo) == digest for algo, digest in known):
        return None
    url = str(entry.get("url", "")) if entry else ""
    return DownloadResult(dest, url, hashes.size, hashes.digest("sha256"), hashes.digest("md5"), skipped=True, verified=True)


def _quarantine(part: Path, dest: Path) -> Path:
    """Move a file that failed its checksum to ``<dest>.corrupt`` (replacing an older one)."""
    corrupt = dest.with_name(dest.name + ".corrupt")
    os.replace(part, corrupt)
    return corrupt


def download_file(
    mirrors: list[Mirror],
    dest: Path,
    *,
    timeout: float = 30.0,
    retries: int = 3,
    backoff: float = 1.0,
    progress: Progress | None = None,
    manifest: Manifest | None = None,
) -> DownloadResult:
    """Download one file from the first mirror that delivers a verified copy.

    A ``dest`` that already exists and matches a known checksum (a mirror's, or the manifest's)
    is returned with ``skipped=True``.

    Args:
        mirrors: Mirrors in the order to try them.
        dest: Final path. Work happens in ``<dest>.part`` (resumable) beside it.
        timeout: Socket timeout in seconds for connecting and for each read; a server silent for
            longer counts as a failure.
        retries: Retries per mirror after the first attempt (attempts that made progress are
            free).
        backoff: Seconds before the first retry; doubled for each further one.
        progress: ``progress(file name, bytes done, bytes total or None)`` after every chunk.
        manifest: Where unknown checksums are recorded and later checked; every successful
            download is recorded.

    Returns:
        A :class:`DownloadResult`.

    Raises:
        BadInputError: no mirror given, or a malformed checksum.
        DataMissingError: every mirror failed or delivered a file with the wrong checksum.
    """
    if not mirrors:
        raise BadInputError("no download URL given", path=dest)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    existing = _existing_ok(dest, mirrors, manifest)
    if existing is not None:
        return existing
    state = _PartState(dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json"), dest.name)
    problems: list[str] = []
    for mirror in mirrors:
        result = _try_mirror(
            mirror, dest, state, problems, timeout=timeout, retries=retries, backoff=backoff, progress=progress, manifest=manifest
        )
        if result is not None:
            return result
    raise DataMissingError(f"could not download {dest.name}: " + "; ".join(problems), path=dest)


def _try_mirror(
    mirror: Mirror,
    dest: Path,
    state: _PartState,
    problems: list[str],
    *,
    timeout: float,
    retries: int,
    backoff: float,
    progress: Progress | None,
    manifest: Manifest | None,
) -> DownloadResult | None:
    """Download and verify from one mirror; on failure append the reason to ``problems``.

    A checksum mismatch on a resumed file is retried once from scratch (the old prefix may be
    stale) before the copy is declared corrupt.
    """
    expected = _expected_checksum(mirror, manifest, dest)
    for fresh in (False, True):
        if fresh:
            state.discard()
        try:
            hashes, resumed = _download_from(
                mirror.url, state, timeout=timeout, retries=retries, backoff=backoff, progress=progress
            )
        except _MirrorFailed as exc:
            problems.append(f"{mirror.url}: {exc}")
            return None
        if _matches(hashes, expected):
            return _finish(mirror, dest, state, hashes, resumed, manifest, verified=expected is not None)
        if resumed and not fresh:
            continue
        assert expected is not None
        algo, want, source = expected
        state.meta.unlink(missing_ok=True)
        corrupt = _quarantine(state.part, dest)
        problems.append(
            f"{mirror.url}: checksum mismatch, expected {algo}:{want} ({source}), got {algo}:{hashes.digest(algo)}; "
            f"bad copy kept as {corrupt.name}"
        )
        return None
    return None  # pragma: no cover - the loop always returns


def _finish(
    mirror: Mirror, dest: Path, state: _PartState, hashes: _Hashes, resumed: bool, manifest: Manifest | None, *, verified: bool
) -> DownloadResult:
    """Rename the verified ``.part`` to ``dest``, record it, and build the result."""
    os.replace(state.part, dest)
    state.meta.unlink(missing_ok=True)
    sha256, md5 = hashes.digest("sha256"), hashes.digest("md5")
    if manifest is not None:
        manifest.record(dest, sha256=sha256, size=hashes.size, url=mirror.url, md5=md5)
    return DownloadResult(dest, mirror.url, hashes.size, sha256, md5, resumed=resumed, verified=verified)


# --------------------------------------------------------------------------------------------
# fetch
# --------------------------------------------------------------------------------------------


def _mirrors_for(rf: RemoteFile, extra_mirrors: Iterable[str], checksum: str | None) -> list[Mirror]:
    """User mirrors first (a URL ending in ``/`` is a folder: the file name is appended), then the built-ins.

    ``checksum``, when given, applies to every mirror and overrides the built-in values.
    """
    extras = [Mirror(url + rf.filename if url.endswith("/") else url, checksum) for url in extra_mirrors]
    builtin = [Mirror(m.url, checksum if checksum is not None else m.checksum) for m in rf.mirrors]
    return extras + builtin


def _archive_path(rf: RemoteFile, root: Path) -> Path:
    """Where the archive of ``rf`` is downloaded: beside its destination folder."""
    return root / Path(rf.dest).parent / rf.filename


def _target(rf: RemoteFile, root: Path) -> Path:
    """The folder (archive) or file (plain) that ``rf`` produces."""
    return root / rf.dest if rf.archive else root / rf.dest / rf.filename


def _read_marker(folder: Path) -> dict[str, Any] | None:
    """The completion marker of an extracted folder, or ``None`` when absent or unreadable."""
    with contextlib.suppress(OSError, ValueError):
        data = json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
        if isinstance(data, dict) and data.get("sha256"):
            return data
    return None


@dataclass
class FetchedFile(JsonResult):
    """One remote file made available by :func:`fetch`: its key, where it is (the folder of an
    archive), the URL it came from, size in bytes, sha256 and whether it was already there
    (``skipped``), completed from a partial download (``resumed``) and matched a known checksum
    (``verified``)."""

    key: str
    path: str
    url: str
    size: int
    sha256: str
    skipped: bool
    resumed: bool
    verified: bool


@dataclass
class FetchReport(JsonResult):
    """What :func:`fetch` did under the data root ``root``: one :class:`FetchedFile` per file."""

    root: str
    files: list[FetchedFile]


def _summary(
    rf: RemoteFile, path: Path, url: str, size: int, sha256: str, *, skipped: bool, resumed: bool, verified: bool
) -> FetchedFile:
    """The per-file result of :func:`fetch`."""
    return FetchedFile(key=rf.key, path=str(path), url=url, size=size, sha256=sha256, skipped=skipped, resumed=resumed,
                       verified=verified)


def _skipped_summary(rf: RemoteFile, folder: Path, marker: dict[str, Any]) -> FetchedFile:
    """The summary of an archive whose folder is already complete (from its marker)."""
    url, size = str(marker.get("url", "")), int(marker.get("size", 0))
    verified = bool(marker.get("verified", True))
    return _summary(rf, folder, url, size, str(marker["sha256"]), skipped=True, resumed=False, verified=verified)


def _verify_local(path: Path, mirrors: Sequence[Mirror], checksum: str | None) -> tuple[_Hashes, bool]:
    """Check a user-supplied file.

    Returns:
        Its hashes and whether it matched a known checksum.

    Raises:
        DataMissingError: ``checksum`` was given and does not match.
    """
    hashes = _hash_file(path)
    if checksum is not None:
        algo, want = parse_checksum(checksum)
        if hashes.digest(algo) != want:
            raise DataMissingError(f"checksum mismatch, expected {algo}:{want}, got {algo}:{hashes.digest(algo)}", path=path)
        return hashes, True
    known = [parse_checksum(m.checksum) for m in mirrors if m.checksum is not None]
    return hashes, any(hashes.digest(algo) == want for algo, want in known)


def _install_archive(archive: Path, rf: RemoteFile, root: Path, source: dict[str, Any]) -> Path:
    """Extract ``archive`` into ``root/rf.dest`` and write the completion marker last.

    Args:
        archive: The archive file.
        rf: What it is.
        root: The data root.
        source: ``url, sha256, md5, size, verified`` of the archive, stored in the marker.

    Returns:
        The extracted folder.
    """
    folder = root / rf.dest
    files = extract_archive(archive, folder, flatten=True)
    marker = {
        "key": rf.key,
        "filename": rf.filename,
        **source,
        "files": len(files),
        "completed": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_text_atomic(folder / MARKER_NAME, json.dumps(marker, indent=2) + "\n")
    return folder


def _ingest(
    rf: RemoteFile, root: Path, from_file: Path, mirrors: list[Mirror], checksum: str | None, manifest: Manifest
) -> FetchedFile:
    """Install a user-supplied copy of ``rf`` (verified where a checksum is known)."""
    from_file = Path(from_file).expanduser()
    if not from_file.is_file():
        raise DataMissingError("no such file", path=from_file)
    hashes, verified = _verify_local(from_file, mirrors, checksum)
    sha256, md5, url = hashes.digest("sha256"), hashes.digest("md5"), from_file.resolve().as_uri()
    record_at = _archive_path(rf, root) if rf.archive else _target(rf, root)
    if rf.archive:
        source = {"url": url, "sha256": sha256, "md5": md5, "size": hashes.size, "verified": verified}
        target = _install_archive(from_file, rf, root, source)
    else:
        target = _target(rf, root)
        with atomic_path(target) as tmp:
            shutil.copyfile(from_file, tmp)
    manifest.record(record_at, sha256=sha256, size=hashes.size, url=url, md5=md5)
    return _summary(rf, target, url, hashes.size, sha256, skipped=False, resumed=False, verified=verified)


def _fetch_archive(
    rf: RemoteFile, root: Path, mirrors: list[Mirror], manifest: Manifest, *, keep_archive: bool, dl: dict[str, Any]
) -> FetchedFile:
    """Download and extract one archive unless its folder already holds the completion marker."""
    folder = root / rf.dest
    marker = _read_marker(folder)
    if marker is not None:
        return _skipped_summary(rf, folder, marker)
    archive = _archive_path(rf, root)
    r = download_file(mirrors, archive, manifest=manifest, **dl)
    source = {"url": r.url, "sha256": r.sha256, "md5": r.md5, "size": r.size, "verified": r.verified}
    try:
        _install_archive(archive, rf, root, source)
    except BadInputError as exc:
        corrupt = _quarantine(archive, archive)
        manifest.forget(archive)
        raise DataMissingError(
            f"downloaded archive cannot be extracted ({exc}); moved to {corrupt.name}, run again to re-download", path=archive
        ) from exc
    if not keep_archive:
        archive.unlink(missing_ok=True)
    return _summary(rf, folder, r.url, r.size, r.sha256, skipped=False, resumed=r.resumed, verified=r.verified)


def _fetch_plain(rf: RemoteFile, root: Path, mirrors: list[Mirror], manifest: Manifest, *, dl: dict[str, Any]) -> FetchedFile:
    """Download one plain file unless it already exists with a known checksum."""
    r = download_file(mirrors, _target(rf, root), manifest=manifest, **dl)
    return _summary(rf, r.path, r.url, r.size, r.sha256, skipped=r.skipped, resumed=r.resumed, verified=r.verified)


def fetch(
    files: list[RemoteFile],
    root: Path,
    *,
    extra_mirrors: Sequence[str] = (),
    checksum: str | None = None,
    from_file: Path | None = None,
    keep_archive: bool = False,
    progress: Progress | None = None,
    timeout: float = 30.0,
    retries: int = 3,
    backoff: float = 1.0,
) -> FetchReport:
    """Make every remote file available under ``root``: download, verify, extract; skip what is done.

    An archive is complete when its folder holds the ``.descbal-complete.json`` marker (written
    last, recording the source sha256); a plain file when it exists and matches a known
    checksum or its manifest entry.

    Args:
        files: What to fetch (see :mod:`descbal.data.sources`).
        root: The data root (see :func:`descbal.data.paths.default_root`).
        extra_mirrors: URLs tried before the built-in mirrors. A URL ending in ``/`` is a folder
            (the file name is appended) and works with many files; a full file URL needs exactly
            one file.
        checksum: ``"md5:HEX"`` or ``"sha256:HEX"`` that the file must match, overriding the
            built-in checksums; needs exactly one file.
        from_file: A local copy (e.g. downloaded by hand) to install instead of downloading;
            needs exactly one file. It is checked against ``checksum`` or the built-in
            checksums; if it matches none and no ``checksum`` is given it is accepted
            (``verified: false``) and recorded in the manifest. It is never deleted.
        keep_archive: Keep downloaded archives beside their folders after extraction.
        progress: ``progress(file name, bytes done, bytes total or None)`` after every chunk.
        timeout: Socket timeout in seconds.
        retries: Retries per mirror.
        backoff: First retry delay in seconds, doubled each time.

    Returns:
        A :class:`FetchReport`: ``root`` as given and one :class:`FetchedFile` per file.

    Raises:
        BadInputError: inconsistent options, a malformed checksum, an unsafe archive.
        DataMissingError: a file could not be downloaded or fails its checksum.
    """
    given = str(root)
    root = Path(root).expanduser()
    _check_options(files, extra_mirrors, checksum, from_file)
    manifest = Manifest(root)
    dl = {"timeout": timeout, "retries": retries, "backoff": backoff, "progress": progress}
    out = []
    for rf in files:
        mirrors = _mirrors_for(rf, extra_mirrors, checksum)
        done = _read_marker(root / rf.dest) if rf.archive and from_file is not None else None
        if done is not None:
            out.append(_skipped_summary(rf, root / rf.dest, done))
        elif from_file is not None:
            out.append(_ingest(rf, root, from_file, mirrors, checksum, manifest))
        elif rf.archive:
            out.append(_fetch_archive(rf, root, mirrors, manifest, keep_archive=keep_archive, dl=dl))
        else:
            out.append(_fetch_plain(rf, root, mirrors, manifest, dl=dl))
    return FetchReport(root=given, files=out)


def _check_options(
    files: Sequence[RemoteFile], extra_mirrors: Sequence[str], checksum: str | None, from_file: Path | None
) -> None:
    """Reject option combinations that only make sense for a single file."""
    if isinstance(extra_mirrors, str):
        raise BadInputError("extra_mirrors must be a list of URLs, not a string")
    if checksum is not None:
        parse_checksum(checksum)
    single = len(files) == 1
    if from_file is not None and not single:
        raise BadInputError(f"--from-file needs exactly one dataset file, got {len(files)}: {', '.join(f.key for f in files)}")
    if checksum is not None and not single:
        raise BadInputError(f"--checksum needs exactly one dataset file, got {len(files)}: {', '.join(f.key for f in files)}")
    full_urls = [u for u in extra_mirrors if not u.endswith("/")]
    if full_urls and not single:
        raise BadInputError(
            f"mirror URL {full_urls[0]!r} names one file but {len(files)} files are requested; give a folder URL ending in '/'"
        )
    bad = [u for u in extra_mirrors if not u.lower().startswith(("http://", "https://", "file://"))]
    if bad:
        raise BadInputError(f"mirror URL {bad[0]!r} must start with http://, https:// or file://")
