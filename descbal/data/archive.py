"""Safe archive extraction: zip and tar (plain, gzip, bzip2, xz), detected by magic bytes.

Every entry is checked before anything is written. Entries that could escape the target folder
(absolute paths, ``..`` components, drive letters) and entries that are not plain files or
folders (symlinks, hard links, devices, FIFOs; zip entries whose attributes mark a symlink) are
refused with a :class:`~descbal.errors.BadInputError` naming the archive and the entry.

Extraction goes into a temporary folder beside ``dest`` and is renamed into place only when
complete, so an interrupted extraction never leaves a half-filled ``dest``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Literal

from descbal.errors import BadInputError
from descbal.fileio import temp_sibling

ArchiveFormat = Literal["zip", "tar"]

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_TAR_COMPRESSED_MAGICS = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")
_USTAR_OFFSET = 257
#: Folder that macOS zip tools add; it holds resource forks, never data.
_JUNK_TOP = "__MACOSX"
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class _Entry:
    """One archive member that will be written: its cleaned name and how to open it."""

    parts: tuple[str, ...]
    is_dir: bool
    member: zipfile.ZipInfo | tarfile.TarInfo


def detect_format(archive: Path) -> ArchiveFormat:
    """Tell a zip from a tar archive by the file's first bytes, ignoring its extension.

    Args:
        archive: Path of the archive.

    Returns:
        ``"zip"`` or ``"tar"`` (a tar may be plain or gzip/bzip2/xz compressed).

    Raises:
        BadInputError: the file is missing or is neither a zip nor a tar archive.
    """
    try:
        with open(archive, "rb") as f:
            head = f.read(_USTAR_OFFSET + 8)
    except OSError as exc:
        raise BadInputError(f"cannot read archive: {exc.strerror or exc}", path=archive) from exc
    if head.startswith(_ZIP_MAGICS):
        return "zip"
    if head.startswith(_TAR_COMPRESSED_MAGICS) or head[_USTAR_OFFSET : _USTAR_OFFSET + 5] == b"ustar":
        return "tar"
    if tarfile.is_tarfile(archive):  # old v7 tar without the ustar magic
        return "tar"
    raise BadInputError("not a zip or tar archive (unrecognised magic bytes)", path=archive)


def _clean_parts(archive: Path, name: str) -> tuple[str, ...]:
    """Split an entry name into path components, refusing anything that could escape the target.

    Args:
        archive: The archive (for the error message).
        name: The entry name as stored in the archive.

    Returns:
        The non-empty components, without ``.``; empty for the archive root itself.

    Raises:
        BadInputError: absolute path, drive letter or ``..`` component.
    """
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) >= 2 and posix[1] == ":"):
        raise BadInputError(f"refusing entry {name!r}: absolute path", path=archive)
    parts = tuple(p for p in PurePosixPath(posix).parts if p not in ("", "."))
    if ".." in parts:
        raise BadInputError(f"refusing entry {name!r}: '..' escapes the target folder", path=archive)
    return parts


def _zip_entries(archive: Path, zf: zipfile.ZipFile) -> list[_Entry]:
    """Validated entries of a zip archive (symlinks refused)."""
    entries = []
    for info in zf.infolist():
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise BadInputError(f"refusing entry {info.filename!r}: symbolic link", path=archive)
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise BadInputError(f"refusing entry {info.filename!r}: not a regular file or folder", path=archive)
        entries.append(_Entry(_clean_parts(archive, info.filename), info.is_dir(), info))
    return entries


def _tar_entries(archive: Path, tf: tarfile.TarFile) -> list[_Entry]:
    """Validated entries of a tar archive (links, devices and FIFOs refused)."""
    entries = []
    for member in tf.getmembers():
        if member.issym() or member.islnk():
            raise BadInputError(f"refusing entry {member.name!r}: link to {member.linkname!r}", path=archive)
        if not (member.isfile() or member.isdir()):
            raise BadInputError(f"refusing entry {member.name!r}: device, FIFO or special file", path=archive)
        entries.append(_Entry(_clean_parts(archive, member.name), member.isdir(), member))
    return entries


def _common_prefix_len(entries: list[_Entry]) -> int:
    """How many leading folders every entry shares (the single top folder, repeatedly).

    A component is only stripped while every file still lies strictly below it, so a file
    never loses its own name.
    """
    files = [e.parts for e in entries if not e.is_dir and e.parts]
    if not files:
        return 0
    depth = 0
    while all(len(p) > depth + 1 for p in files) and len({p[depth] for p in files}) == 1:
        top = files[0][depth]
        dirs_ok = all(len(e.parts) <= depth or e.parts[depth] == top for e in entries if e.is_dir)
        if not dirs_ok:
            break
        depth += 1
    return depth


@contextlib.contextmanager
def _open_archive(archive: Path, fmt: ArchiveFormat) -> Iterator[zipfile.ZipFile | tarfile.TarFile]:
    """Open ``archive`` as zip or tar, turning read errors into :class:`BadInputError`."""
    try:
        handle: zipfile.ZipFile | tarfile.TarFile = zipfile.ZipFile(archive) if fmt == "zip" else tarfile.open(archive, "r:*")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise BadInputError(f"corrupt or unreadable {fmt} archive: {exc}", path=archive) from exc
    with handle:
        yield handle


def _open_member(handle: zipfile.ZipFile | tarfile.TarFile, member: zipfile.ZipInfo | tarfile.TarInfo) -> IO[bytes]:
    """A binary stream of one regular-file member."""
    if isinstance(handle, zipfile.ZipFile):
        assert isinstance(member, zipfile.ZipInfo)
        return handle.open(member)
    assert isinstance(member, tarfile.TarInfo)
    stream = handle.extractfile(member)
    if stream is None:  # pragma: no cover - only for non-files, which were refused
        raise BadInputError(f"cannot read entry {member.name!r}")
    return stream


def _write_entries(
    archive: Path, handle: zipfile.ZipFile | tarfile.TarFile, entries: list[_Entry], strip: int, target: Path
) -> list[Path]:
    """Write validated entries under ``target`` with ``strip`` leading components removed.

    Returns:
        Relative paths of the files written, in archive order.
    """
    written: list[Path] = []
    root = target.resolve()
    for entry in entries:
        parts = entry.parts[strip:]
        if not parts:
            continue
        out = target.joinpath(*parts)
        if root not in out.resolve().parents:  # belt and braces after _clean_parts
            raise BadInputError(f"refusing entry {'/'.join(entry.parts)!r}: escapes the target folder", path=archive)
        if entry.is_dir:
            out.mkdir(parents=True, exist_ok=True)
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            with _open_member(handle, entry.member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, _COPY_CHUNK)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
            raise BadInputError(f"corrupt entry {'/'.join(entry.parts)!r}: {exc}", path=archive) from exc
        written.append(Path(*parts))
    return written


def _replace_dir(tmp: Path, dest: Path) -> None:
    """Move the finished folder ``tmp`` to ``dest``, replacing an existing ``dest``."""
    if not dest.exists():
        os.replace(tmp, dest)
        return
    old = temp_sibling(dest, ".old", folder=True)
    old.rmdir()
    os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def extract_archive(archive: Path, dest: Path, flatten: bool = True) -> list[Path]:
    """Extract a zip or tar archive into ``dest`` safely and atomically.

    Args:
        archive: The archive; its format is read from its magic bytes, not its extension.
        dest: Folder that receives the content. It is created (with its parents); an existing
            ``dest`` is replaced only once the new content is complete.
        flatten: Strip leading folders shared by every entry (``liberty/liberty/x`` -> ``x``),
            so that e.g. Brown tiles land directly in ``dest``. ``__MACOSX`` entries are skipped.

    Returns:
        The paths of the extracted files under ``dest``, in archive order.

    Raises:
        BadInputError: not an archive, a corrupt archive, or an entry that is unsafe (absolute
            path, ``..``, link, device); nothing is extracted in that case.
    """
    archive, dest = Path(archive), Path(dest)
    fmt = detect_format(archive)
    with _open_archive(archive, fmt) as handle:
        if isinstance(handle, zipfile.ZipFile):
            entries = _zip_entries(archive, handle)
        else:
            entries = _tar_entries(archive, handle)
        entries = [e for e in entries if not e.parts or e.parts[0] != _JUNK_TOP]
        strip = _common_prefix_len(entries) if flatten else 0
        dest.parent.mkdir(parents=True, exist_ok=True)
        # made like a plain mkdir (umask permissions), named so a dead run's copy is removed later
        tmp = temp_sibling(dest, ".extract", folder=True)
        try:
            written = _write_entries(archive, handle, entries, strip, tmp)
            _replace_dir(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return [dest / rel for rel in written]
