"""End to end through the CLI: download from a local mirror (with a cut connection), cache,
evaluate; and the failure exits (checksum mismatch 3, unknown names 2)."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
from test_data_brown import make_brown
from test_data_hpatches import make_release, make_tasks
from typer.testing import CliRunner

from descbal.cli import app
from descbal.data.hpatches_data import load_hpatches_cache
from descbal.data.patchset import load_patchset

runner = CliRunner()


def zip_folder(folder: Path, top: str) -> bytes:
    """A zip of ``folder`` under a nested top folder, as the mirrors pack them."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, f"{top}/{f.relative_to(folder).as_posix()}")
    return buf.getvalue()


def test_brown_download_cache_eval(server, tmp_path: Path) -> None:
    raw = tmp_path / "src" / "liberty"
    expected = make_brown(raw, 700)
    data = zip_folder(raw, "liberty/liberty")
    url = server.add("/liberty.zip", data, faults=["cut:5000"])
    root = tmp_path / "data"
    sha = "sha256:" + hashlib.sha256(data).hexdigest()
    res = runner.invoke(app, ["download", "brown", "liberty", "--root", str(root), "--mirror", url,
                              "--checksum", sha, "-q", "--json", "-", "--timeout", "2"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["files"][0]["sha256"] == sha.split(":")[1] and doc["files"][0]["resumed"] is True
    assert (root / "brown" / "liberty" / "info.txt").is_file()
    again = runner.invoke(app, ["download", "brown", "liberty", "--root", str(root), "--mirror", url, "--json", "-"])
    assert again.exit_code == 0 and json.loads(again.stdout)["files"][0]["skipped"] is True
    assert "already downloaded" in again.output

    res = runner.invoke(app, ["cache", "brown", "liberty", "--root", str(root), "-q", "--json", "-"])
    assert res.exit_code == 0, res.output
    h5 = root / "brown" / "liberty.h5"
    ps = load_patchset(h5)
    np.testing.assert_array_equal(ps.patches, expected)
    assert json.loads(runner.invoke(app, ["cache", "brown", "liberty", "--root", str(root), "-q",
                                          "--json", "-"]).stdout)["skipped"] is True

    desc = tmp_path / "desc.npy"
    np.save(desc, ps.patches.reshape(len(ps.patches), -1)[:, :64].astype(np.float32))
    res = runner.invoke(app, ["eval", "brown", "--pairs", str(h5), "--descriptors", str(desc), "-q", "--json", "-"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["pairs"] == len(ps.pairs)


def test_download_checksum_mismatch_exits_3(server, tmp_path: Path) -> None:
    url = server.add("/liberty.zip", b"PK\x03\x04 not the archive")
    root = tmp_path / "data"
    res = runner.invoke(app, ["download", "brown", "liberty", "--root", str(root), "--mirror", url,
                              "--checksum", "md5:" + "0" * 32, "--timeout", "1"])
    assert res.exit_code == 3, res.output
    assert "Traceback" not in res.output
    assert not (root / "brown" / "liberty").exists()
    assert (root / "brown" / "liberty.zip.corrupt").exists()


def test_download_usage_errors(tmp_path: Path) -> None:
    res = runner.invoke(app, ["download", "brown", "atlantis", "--root", str(tmp_path)])
    assert res.exit_code == 2 and "atlantis" in res.output
    res = runner.invoke(app, ["download", "hpatches", "--part", "everything", "--root", str(tmp_path)])
    assert res.exit_code == 2
    res = runner.invoke(app, ["download", "brown", "liberty", "--root", str(tmp_path), "--checksum", "crc:12"])
    assert res.exit_code == 2 and "checksum" in res.output.lower()


def test_hpatches_download_cache(server, tmp_path: Path) -> None:
    src = tmp_path / "src"
    release = make_release(src / "hpatches-release")
    data = zip_folder(src / "hpatches-release", "hpatches-release")
    url = server.add("/hpatches-release.zip", data)
    root = tmp_path / "data"
    res = runner.invoke(app, ["download", "hpatches", "--part", "patches", "--root", str(root), "--mirror", url, "-q"])
    assert res.exit_code == 0, res.output
    make_tasks(root / "hpatches" / "tasks")
    res = runner.invoke(app, ["cache", "hpatches", "--root", str(root), "-q", "--json", "-"])
    assert res.exit_code == 0, res.output
    cache = load_hpatches_cache(root / "hpatches" / "hpatches.h5")
    assert set(cache) == set(release)
    for seq, arr in cache.items():
        assert arr.shape[0] == 16 and arr.shape[2:] == (65, 65)
        np.testing.assert_array_equal(arr, release[seq])


def test_cache_sequences_real_data(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "seq.h5"
    res = runner.invoke(app, ["cache", "sequences", str(shared_data / "hpatches-sequences"), "--out", str(out),
                              "-q", "--json", "-"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["num_sequences"] == 3
    res = runner.invoke(app, ["cache", "sequences", str(tmp_path / "none"), "--out", str(out)])
    assert res.exit_code in (2, 3) and "Traceback" not in res.output


def test_sequences_download_cache(server, tmp_path: Path) -> None:
    import cv2

    from descbal.data.sequences import load_sequences

    src = tmp_path / "src" / "hpatches-sequences-release"
    rng = np.random.default_rng(0)
    for name in ("i_one", "v_two"):
        (src / name).mkdir(parents=True)
        for k in range(1, 7):
            cv2.imwrite(str(src / name / f"{k}.ppm"), rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
            if k > 1:
                (src / name / f"H_1_{k}").write_text(f"1 0 {k}\n0 1 0\n0 0 1\n")
    url = server.add("/seq.zip", zip_folder(src, "hpatches-sequences-release"))
    root = tmp_path / "data"
    res = runner.invoke(app, ["download", "hpatches", "--part", "sequences", "--root", str(root), "--mirror", url, "-q"])
    assert res.exit_code == 0, res.output
    seq_dir = root / "hpatches" / "hpatches-sequences-release"
    out = tmp_path / "seq.h5"
    res = runner.invoke(app, ["cache", "sequences", str(seq_dir), "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    seqs = {s.name: s for s in load_sequences(out)}
    assert set(seqs) == {"i_one", "v_two"}
    assert seqs["v_two"].homographies[4][0, 2] == 4.0 and len(seqs["i_one"].images) == 6
