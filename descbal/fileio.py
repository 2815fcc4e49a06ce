"""File helpers: atomic writing, temporary files that name their writer, the one SHA-256 helper.

Outputs are written to a temporary sibling and renamed into place, so a crash or Ctrl-C never
leaves a half-written file under the final name.

Temporary siblings are named ``.<final name>.<host>-<pid>-<start>-<random><suffix>.tmp``:
``host`` is a hash of the machine's name, ``pid`` the writing process and ``start`` its start
time (``/proc/<pid>/stat``, so a reused PID is not mistaken for the writer; ``0`` where there is
no ``/proc``). A temporary file of this machine whose writer is no longer running (a
``kill -9``, a power cut) is *stale*; :func:`remove_stale_temps` deletes those of one output, and
every new temporary file of an output first removes its stale siblings. A file of a live
process (this one included), of another machine (a shared file system) or with a name of
another form is never touched. Temporary files are created with
``os.open(..., 0o666)`` like a plain ``open()``, so outputs get the permissions the user's umask
gives (not mkstemp's 0600), and a replaced output keeps its mode.

:func:`sha256_hex` is the one SHA-256 of the package (file contents, weights, cache
fingerprints); only the downloader keeps its own running md5 + sha256 pair, because it hashes a
stream while it arrives and resumes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

_CHUNK = 1 << 20
#: The ending of every temporary file and folder that :func:`temp_sibling` creates.
TEMP_SUFFIX = ".tmp"
# a temporary sibling's name: "." final "." host "-" pid "-" start "-" 8 hex digits [suffix] ".tmp"
_TEMP_RE = re.compile(r"\.(?P<final>.+)\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<start>\d+)-[0-9a-f]{8}(?:\..*)?\.tmp")


def _host_tag() -> str:
    """8 hex digits naming this machine (PIDs of other machines say nothing here)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, ``/proc/<pid>/stat`` field 22), or
    None when it does not exist or there is no ``/proc``."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after "(comm)", which may itself hold spaces
    return None if fields[0] == "Z" else int(fields[19])  # a zombie has finished writing


def process_alive(pid: int, start: int = 0) -> bool:
    """Whether the process ``pid`` that started at ``start`` (0: unknown) still runs.

    A process of another user counts as alive; where ``/proc`` tells a start time, a different
    one means the PID was reused by another process, so the writer is gone.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not Path("/proc/self/stat").exists():
        return True
    now = process_start(pid)
    return now is not None and (start == 0 or now == start)


def _owner_tag() -> str:
    return f"{_host_tag()}-{os.getpid()}-{process_start(os.getpid()) or 0}-{secrets.token_hex(4)}"


def temp_sibling(final: str | Path, suffix: str = "", *, folder: bool = False, clean: bool = True) -> Path:
    """Create an empty temporary file (or, with ``folder``, a folder) beside ``final``, named
    for this process (see the module docstring), after removing ``final``'s stale ones (unless
    ``clean`` is False: writers of many small files sweep their folder once instead, see
    :func:`sweep_stale_temps`).

    The file is created like a plain ``open(path, "w")`` (mode 0o666 less the umask; a folder
    0o777 less the umask), so that renaming it into place gives the output ordinary permissions.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if clean:
        remove_stale_temps(final)
    while True:
        tmp = final.parent / f".{final.name}.{_owner_tag()}{suffix}{TEMP_SUFFIX}"
        try:
            if folder:
                os.mkdir(tmp, 0o777)
            else:
                os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:  # 32 random bits collided: draw again
            continue


def _is_stale(tmp: Path, final_name: str | None = None) -> bool:
    """Whether ``tmp`` is a temporary file of the :func:`temp_sibling` scheme (of ``final_name``
    when given) whose writer no longer runs."""
    m = _TEMP_RE.fullmatch(tmp.name)
    if m is None or m["host"] != _host_tag() or (final_name is not None and m["final"] != final_name):
        return False
    return not process_alive(int(m["pid"]), int(m["start"]))


def _remove(path: Path) -> bool:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:  # another run removed it first
        return False
    return True


def remove_stale_temps(final: str | Path) -> list[Path]:
    """Delete the temporary siblings of ``final`` whose writer no longer runs; return them.

    Only names of the :func:`temp_sibling` scheme are considered: files of live processes
    (this one included) and names of any other form are left alone.
    """
    final = Path(final)
    head = f".{final.name}."
    try:
        names = [n for n in os.listdir(final.parent) if n.startswith(head) and n.endswith(TEMP_SUFFIX)]
    except OSError:
        return []
    return [p for p in (final.parent / n for n in names) if _is_stale(p, final.name) and _remove(p)]


def sweep_stale_temps(folder: str | Path) -> list[Path]:
    """Delete every stale temporary file (:func:`remove_stale_temps`) in a folder tree; return
    them. For outputs made of one file per item, swept once per run."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [p for p in folder.rglob(f".*{TEMP_SUFFIX}") if _is_stale(p) and _remove(p)]


def keep_mode(tmp: str | Path, final: str | Path) -> None:
    """Give ``tmp`` the permission bits of an existing ``final`` (what writing ``final`` in
    place would have kept); nothing when ``final`` does not exist."""
    with contextlib.suppress(FileNotFoundError):
        os.chmod(tmp, os.stat(final).st_mode & 0o7777)


@contextlib.contextmanager
def atomic_path(final: str | Path, suffix: str = "", *, clean: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``final`` (:func:`temp_sibling`, which removes stale ones
    unless ``clean`` is False); rename it to ``final`` if the block succeeds, with the mode of
    the file it replaces (else the umask's).

    The temporary file is removed when the block raises (including KeyboardInterrupt).
    """
    final = Path(final)
    tmp_path = temp_sibling(final, suffix, clean=clean)
    try:
        yield tmp_path
        keep_mode(tmp_path, final)
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_text_atomic(final: str | Path, text: str, *, clean: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``final`` atomically (``clean``: see :func:`atomic_path`)."""
    with atomic_path(final, clean=clean) as tmp:
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
