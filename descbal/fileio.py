"""File helpers: atomic writing and the one SHA-256 helper.

Outputs are written to a temporary sibling and renamed into place, so a crash or Ctrl-C never
leaves a half-written file under the final name. :func:`sha256_hex` is the one SHA-256 of the
package (file contents, weights, cache fingerprints); only the downloader keeps its own running
md5 + sha256 pair, because it hashes a stream while it arrives and resumes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

_CHUNK = 1 << 20


@contextlib.contextmanager
def atomic_path(final: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` if the block succeeds.

    The temporary file is removed when the block raises (including KeyboardInterrupt).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix + ".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_text_atomic(final: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``final`` atomically."""
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")


def sha256_hex(data: bytes | str | Iterable[bytes]) -> str:
    """Hex SHA-256 of bytes, of a string (UTF-8), or of the concatenation of byte chunks."""
    h = hashlib.sha256()
    if isinstance(data, str):
        data = data.encode()
    for chunk in (data,) if isinstance(data, bytes) else data:
        h.update(chunk)
    return h.hexdigest()


def file_chunks(path: str | Path, chunk: int = _CHUNK) -> Iterator[bytes]:
    """A file's bytes in blocks of ``chunk`` bytes (the file is not read whole)."""
    with open(path, "rb") as f:
        while block := f.read(chunk):
            yield block


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (OSError when it cannot be read)."""
    return sha256_hex(file_chunks(path))
