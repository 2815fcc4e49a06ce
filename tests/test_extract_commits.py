"""Extraction that fails or is killed (issue 21, points 1-2): nothing left when nothing was
extracted, an empty output never blocks, progress committed by work done, a kill -9 keeps what
was committed and the next run removes the dead run's temporary file and resumes to the same
features as an uninterrupted run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

import descbal
from descbal.cli import app
from descbal.errors import BadInputError
from descbal.extract import ExtractConfig, FeatureExtractor, extract_folder, list_features
from descbal.extract.writers import COMMIT_EVERY_IMAGES, COMMIT_EVERY_S, AtomicH5
from descbal.fileio import _host_tag, process_start

runner = CliRunner()
CFG = ExtractConfig(model="sift", max_keypoints=15, device="cpu")


def textured(seed: int, h: int = 64, w: int = 80) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (h, w)).astype(np.float32), (0, 0), 1.5).astype(np.uint8)


def image_folder(root: Path, n: int) -> Path:
    d = root / "images"
    d.mkdir()
    for i in range(n):
        cv2.imwrite(str(d / f"{i:02d}.png"), textured(i))
    return d


def temps(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".*.tmp"))


def contents(path: Path) -> dict[str, object]:
    """Every dataset and attribute of an HDF5 file (what 'the same file' means for features)."""
    out: dict[str, object] = {}
    with h5py.File(path, "r") as h5:
        out.update({f"@{k}": v for k, v in h5.attrs.items() if k != "descbal_provenance"})
        h5.visititems(lambda name, obj: out.__setitem__(name, obj[...].tobytes()) if isinstance(obj, h5py.Dataset)
                      else None)
    return out


# ------------------------------------------------------------------------------ point 1


def test_the_commit_defaults_are_documented_config() -> None:
    assert (CFG.commit_every, CFG.commit_every_s) == (COMMIT_EVERY_IMAGES, COMMIT_EVERY_S) == (50, 60.0)


@pytest.mark.parametrize("fmt", ["hloc", "npz", "colmap"])
def test_nothing_is_left_when_every_image_is_unreadable(tmp_path: Path, fmt: str) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"junk")
    (images / "b.png").write_bytes(b"")
    out = tmp_path / ("f.h5" if fmt == "hloc" else "f")
    r = runner.invoke(app, ["extract", str(images), "-m", "sift", "-o", str(out), "--format", fmt])
    assert r.exit_code == 2 and "no image could be extracted" in r.output and "a.jpg" in r.output
    assert not out.exists() and temps(tmp_path) == []
    cv2.imwrite(str(images / "a.jpg"), textured(1))  # the corrected command, another detector
    r = runner.invoke(app, ["extract", str(images), "-m", "sift", "-o", str(out), "--format", fmt,
                            "--detector", "orb", "-q"])
    assert r.exit_code == 0, r.output
    assert list_features(out) == ["a.jpg"]


def test_a_failure_before_the_first_image_leaves_nothing(tmp_path: Path) -> None:
    images = image_folder(tmp_path, 2)
    out = tmp_path / "f.h5"

    class Fails:
        provenance = FeatureExtractor("sift", max_keypoints=5, device="cpu").provenance

        def __call__(self, img: np.ndarray) -> None:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        extract_folder(images, out, CFG, extractor=Fails())  # type: ignore[arg-type]
    assert not out.exists() and temps(tmp_path) == []


@pytest.mark.parametrize("fmt", ["hloc", "npz"])
def test_an_output_holding_no_image_never_blocks(tmp_path: Path, fmt: str) -> None:
    images = image_folder(tmp_path, 2)
    out = tmp_path / ("f.h5" if fmt == "hloc" else "f")
    if fmt == "hloc":  # as older versions left it: provenance of another extraction, no image
        with h5py.File(out, "w") as h5:
            h5.attrs["descbal_provenance"] = '{"model": "rootsift"}'
    else:
        out.mkdir()
        (out / "descbal_features.json").write_text('{"model": "rootsift"}')
    res = extract_folder(images, out, CFG, fmt=fmt)
    assert res.extracted == 2 and sorted(list_features(out)) == ["00.png", "01.png"]
    # one holding images still refuses a different extraction
    with pytest.raises(BadInputError, match="different extraction"):
        extract_folder(images, out, ExtractConfig(model="rootsift", max_keypoints=15, device="cpu"), fmt=fmt)


# ------------------------------------------------------------------------------ point 2


def committed(path: Path) -> list[str]:
    if not path.exists():
        return []
    with h5py.File(path, "r") as f:
        return sorted(f)


def test_commits_every_n_units_or_s_seconds_whichever_first(tmp_path: Path) -> None:
    out = tmp_path / "m.h5"
    tx = AtomicH5(out, fresh=True, commit_every=3, commit_every_s=3600, max_share=1.0)  # no spacing by cost
    tx.open()
    for i in range(7):
        assert tx.h5 is not None
        tx.h5.create_dataset(f"d{i}", data=np.arange(3))
        tx.did_work()
        assert committed(out) == [f"d{j}" for j in range(3 * ((i + 1) // 3))]  # after units 3 and 6
    tx.commit()
    tx = AtomicH5(out, commit_every=1000, commit_every_s=0.05, max_share=1.0)
    tx.open()
    time.sleep(0.06)
    assert tx.h5 is not None
    tx.h5.create_dataset("late", data=np.arange(1))
    tx.did_work()  # one unit, but the seconds have passed
    assert "late" in committed(out)
    tx.discard()
    with pytest.raises(ValueError):
        AtomicH5(out, commit_every=0)


def test_commits_are_spaced_when_they_are_costly(tmp_path: Path) -> None:
    # a commit copies the file: one that took 1 s waits until it is at most 10 % of the time
    tx = AtomicH5(tmp_path / "m.h5", fresh=True, commit_every=1)
    tx.open()
    tx._commit_cost = 1.0
    tx.did_work()
    assert tx.pending == 1 and not (tmp_path / "m.h5").exists()
    tx._commit_cost = 0.0
    tx.did_work()
    assert tx.pending == 0 and (tmp_path / "m.h5").exists()
    tx.discard()


def test_stale_temporary_file_of_a_dead_run_is_removed_not_a_live_one(tmp_path: Path) -> None:
    images = image_folder(tmp_path, 2)
    out = tmp_path / "f.h5"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    me = os.getpid()
    stale = tmp_path / f".f.h5.{_host_tag()}-{dead.pid}-1-0123abcd.h5.tmp"
    live = tmp_path / f".f.h5.{_host_tag()}-{me}-{process_start(me) or 0}-0123abcd.h5.tmp"
    stale.write_bytes(b"x" * 1000)
    live.write_bytes(b"x")
    assert extract_folder(images, out, CFG).extracted == 2
    assert not stale.exists() and live.exists()
    assert temps(tmp_path) == [live]


KILLED_RUN = """
import sys, time
from descbal.extract import ExtractConfig, extract_folder

def slow(task, done, total, info=None):
    time.sleep(0.25)  # an image takes a while: the parent kills the run between two commits

extract_folder(sys.argv[1], sys.argv[2], ExtractConfig(model="sift", max_keypoints=15, device="cpu",
               commit_every=2), progress=slow)
"""


def test_kill_9_after_a_commit_keeps_it_and_the_resumed_file_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    images = image_folder(tmp_path, 12)
    out = tmp_path / "killed.h5"
    env = {**os.environ, "PYTHONPATH": str(Path(descbal.__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(images), str(out)], env=env)
    try:
        deadline = time.monotonic() + 120
        # after a commit and once the run has its next working copy (a commit renames the copy
        # into place and then starts a new one: a kill between the two leaves no copy)
        while not (out.exists() and temps(tmp_path)) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.kill()  # SIGKILL: nothing runs on the way out
    finally:
        proc.wait()
    assert proc.returncode == -9, "the run finished or failed before its first commit"
    kept = list_features(out)
    assert 2 <= len(kept) < 12  # what the commits before the kill held
    assert len(temps(tmp_path)) == 1  # the dead run's copy
    res = extract_folder(images, out, CFG)
    assert res.skipped_existing == len(kept) and res.extracted == 12 - len(kept)
    assert temps(tmp_path) == []
    whole = tmp_path / "whole.h5"
    extract_folder(images, whole, CFG)
    assert contents(out) == contents(whole)


def test_a_resume_that_adds_nothing_leaves_the_files_untouched(tmp_path: Path) -> None:
    """Rerunning a finished extraction or matching changes neither file (not even its
    modification time), so caches fingerprinted on them (``cache sfm``) stay current."""
    from descbal.match import match_features

    images = image_folder(tmp_path, 3)
    feats = tmp_path / "f.h5"
    extract_folder(images, feats, CFG)
    names = list_features(feats)
    pairs = [(names[0], names[1]), (names[1], names[2])]
    matches = tmp_path / "m.h5"
    match_features(feats, pairs, matches)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (feats, matches)}
    time.sleep(0.02)
    assert extract_folder(images, feats, CFG).skipped_existing == 3
    assert match_features(feats, pairs, matches).skipped_existing == 2
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (feats, matches)} == before
    assert temps(tmp_path) == []
    # one more image: the file is rewritten with it
    cv2.imwrite(str(images / "extra.png"), cv2.imread(str(images / names[0]), cv2.IMREAD_GRAYSCALE)[::-1])
    assert extract_folder(images, feats, CFG).extracted == 1 and feats.stat().st_mtime_ns != before[feats][0]
