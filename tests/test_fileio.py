"""Atomic writes (descbal.fileio): outputs get the umask's permissions, temporary files name
their writer, and only the stale ones of dead writers are ever removed (issue 21, points 2-3)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from descbal.console import emit_json
from descbal.data.archive import extract_archive
from descbal.data.patchset import PatchSet, write_patchset
from descbal.extract import ExtractConfig, extract_folder
from descbal.fileio import (
    _host_tag,
    atomic_path,
    process_alive,
    process_start,
    remove_stale_temps,
    sweep_stale_temps,
    write_text_atomic,
)
from descbal.match import match_features
from descbal.models import build_model, save_checkpoint

HAS_PROC = Path("/proc/self/stat").exists()


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def dead_pid() -> int:
    """The PID of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def tmp_name(final: Path, pid: int, start: int | None, suffix: str = ".h5", host: str | None = None) -> Path:
    """A temporary sibling's name as :func:`temp_sibling` makes it, for writer ``pid`` (of this
    machine unless ``host``)."""
    return final.parent / f".{final.name}.{host or _host_tag()}-{pid}-{start or 0}-0123abcd{suffix}.tmp"


# ------------------------------------------------------------------------------ permissions


def _textured(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (90, 110)).astype(np.float32), (0, 0), 1.5).astype(np.uint8)


def _features(tmp: Path) -> list[Path]:
    images = tmp / "images"
    images.mkdir(exist_ok=True)
    cv2.imwrite(str(images / "a.png"), _textured(1))
    cv2.imwrite(str(images / "b.png"), _textured(2))
    cfg = ExtractConfig(model="sift", max_keypoints=20, device="cpu")
    extract_folder(images, tmp / "feats.h5", cfg)
    extract_folder(images, tmp / "npz", cfg, fmt="npz")
    match_features(tmp / "feats.h5", [("a.png", "b.png")], tmp / "matches.h5")
    return [tmp / "feats.h5", tmp / "npz" / "a.png.npz", tmp / "npz" / "descbal_features.json", tmp / "matches.h5"]


def _archive(tmp: Path) -> list[Path]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("top/x.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    (tmp / "a.tar").write_bytes(buf.getvalue())
    extract_archive(tmp / "a.tar", tmp / "unpacked")
    return [tmp / "unpacked", tmp / "unpacked" / "x.txt"]


WRITERS: dict[str, Callable[[Path], list[Path]]] = {
    "config.toml (write_text_atomic)": lambda t: (write_text_atomic(t / "config.toml", "a = 1\n"), [t / "config.toml"])[1],
    "JSON output (emit_json)": lambda t: (emit_json({"a": 1}, str(t / "out.json")), [t / "out.json"])[1],
    "model.pt (save_checkpoint)": lambda t: (save_checkpoint(t / "model.pt", build_model("tfeat")), [t / "model.pt"])[1],
    "pool / cache (write_patchset)": lambda t: (write_patchset(t / "pool.h5", PatchSet(
        np.zeros((2, 8, 8), np.uint8), np.array([0, 0]), None, "p")), [t / "pool.h5"])[1],
    "features and matches": _features,
    "unpacked archive (extract_archive)": _archive,
}


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_outputs_get_the_permissions_of_a_plain_open(writer: str, mask: int, file_mode: int, dir_mode: int,
                                                    tmp_path: Path) -> None:
    # issue 21 point 3: mkstemp's 0600 temporary files used to be renamed into place
    with umask(mask):
        outputs = WRITERS[writer](tmp_path)
        with open(tmp_path / "plain", "w"):
            pass
    assert mode(tmp_path / "plain") == file_mode
    for p in outputs:
        assert mode(p) == (dir_mode if p.is_dir() else file_mode), p
    assert not list(tmp_path.rglob(".*.tmp"))


def test_a_replaced_output_keeps_its_mode(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    with umask(0o022):
        write_text_atomic(out, "1\n")
        os.chmod(out, 0o640)
        write_text_atomic(out, "2\n")  # as open(out, "w") would, the mode stays
    assert mode(out) == 0o640 and out.read_text() == "2\n"


# ------------------------------------------------------------------------------ stale temporary files


def test_temporary_files_name_their_writer(tmp_path: Path) -> None:
    final = tmp_path / "feats.h5"
    with atomic_path(final, suffix=".h5") as tmp:
        assert tmp.name.startswith(".feats.h5.") and tmp.name.endswith(".h5.tmp")
        assert f"-{os.getpid()}-" in tmp.name
        assert tmp.is_file() and remove_stale_temps(final) == [] and tmp.is_file()  # ours: alive
    assert final.is_file() and not tmp.exists()


def test_process_alive() -> None:
    me = os.getpid()
    assert process_alive(me) and process_alive(me, process_start(me) or 0)
    assert not process_alive(dead_pid())
    if HAS_PROC:  # the PID of a writer that exited may be reused: its start time tells
        assert not process_alive(me, (process_start(me) or 0) + 1)


def test_only_stale_temporary_files_of_dead_writers_are_removed(tmp_path: Path) -> None:
    final = tmp_path / "feats.h5"
    final.write_bytes(b"")
    me = os.getpid()
    dead = tmp_name(final, dead_pid(), 12345)
    live = tmp_name(final, me, process_start(me))  # the test's own PID: a live writer
    unknown_start = tmp_name(final, me, None)  # no start time recorded: the PID alone decides
    other_host = tmp_name(final, dead_pid(), 12345, host="ffffffff" if _host_tag() != "ffffffff" else "fffffffe")
    legacy = final.parent / ".feats.h5.k2x9_qzr.h5.tmp"  # mkstemp's names, from older versions: unknown
    other_output = tmp_name(tmp_path / "other.h5", dead_pid(), 1)
    for p in (dead, live, unknown_start, other_host, legacy, other_output):
        p.write_bytes(b"x")
    assert remove_stale_temps(final) == [dead]
    assert not dead.exists()
    assert all(p.exists() for p in (live, unknown_start, other_host, legacy, other_output))
    if HAS_PROC:
        reused = tmp_name(final, me, (process_start(me) or 0) + 1)  # our PID, but another start: gone
        reused.write_bytes(b"x")
        assert remove_stale_temps(final) == [reused]
    # a new temporary file of the output removes the stale ones first
    stale = tmp_name(final, dead_pid(), 7)
    stale.write_bytes(b"x")
    write_text_atomic(final, "new\n")
    assert not stale.exists() and live.exists()


def test_sweep_removes_stale_files_in_a_tree(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    stale = tmp_name(tmp_path / "sub" / "a.png.npz", dead_pid(), 3, ".npz")
    live = tmp_name(tmp_path / "b.npz", os.getpid(), process_start(os.getpid()), ".npz")
    folder = tmp_name(tmp_path / "unpacked", dead_pid(), 3, ".extract")
    stale.write_bytes(b"x")
    live.write_bytes(b"x")
    folder.mkdir()
    (folder / "f").write_bytes(b"x")
    assert sorted(sweep_stale_temps(tmp_path)) == sorted([stale, folder])
    assert live.exists() and not stale.exists() and not folder.exists()
