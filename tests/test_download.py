"""Downloader, archive extraction and source registry, against a local fault-injecting HTTP server."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import stat
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
from local_server import LocalServer as _Server

from descbal.data import archive as archive_mod
from descbal.data.archive import detect_format, extract_archive
from descbal.data.download import MARKER_NAME, Manifest, download_file, fetch
from descbal.data.sources import (
    BROWN_NAMES,
    DATASETS,
    HPATCHES_BENCHMARK_COMMIT,
    Mirror,
    RemoteFile,
    brown_files,
    hpatches_files,
    parse_checksum,
)
from descbal.errors import BadInputError, DataMissingError

FAST = {"timeout": 0.5, "retries": 1, "backoff": 0.01}


def _body(n: int = 50_000, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed * 7 + (i >> 8)) % 251 for i in range(n))


def _md5(b: bytes) -> str:
    return "md5:" + hashlib.md5(b).hexdigest()


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _no_leftovers(dest: Path) -> None:
    assert not dest.exists()
    assert not dest.with_name(dest.name + ".part").exists()
    assert not dest.with_name(dest.name + ".part.json").exists()


# --------------------------------------------------------------------------------------------
# download_file
# --------------------------------------------------------------------------------------------


def test_plain_download_verified(server: _Server, tmp_path: Path) -> None:
    body = _body()
    url = server.add("/f.bin", body)
    seen: list[tuple[str, int, int | None]] = []
    res = download_file([Mirror(url, _md5(body))], tmp_path / "f.bin", progress=lambda *a: seen.append(a), **FAST)
    assert (tmp_path / "f.bin").read_bytes() == body
    assert (res.url, res.size, res.sha256) == (url, len(body), _sha(body))
    assert (res.resumed, res.skipped, res.verified) == (False, False, True)
    assert res.md5 == hashlib.md5(body).hexdigest()
    assert seen[-1] == ("f.bin", len(body), len(body))
    assert not (tmp_path / "f.bin.part").exists()


def test_cut_connection_resumes_with_range(server: _Server, tmp_path: Path) -> None:
    body = _body()
    url = server.add("/cut.bin", body, faults=["cut:12345"])
    res = download_file([Mirror(url, "sha256:" + _sha(body))], tmp_path / "cut.bin", **FAST)
    assert res.resumed and res.sha256 == _sha(body)
    assert server.hits("/cut.bin") == [None, "bytes=12345-"]
    assert (tmp_path / "cut.bin").read_bytes() == body


def test_repeated_cuts_with_progress_do_not_use_up_retries(server: _Server, tmp_path: Path) -> None:
    body = _body()
    url = server.add("/cuts.bin", body, faults=["cut:5000"] * 6)
    res = download_file([Mirror(url, _md5(body))], tmp_path / "cuts.bin", **FAST)  # retries=1
    assert res.resumed and res.sha256 == _sha(body) and len(server.hits("/cuts.bin")) == 7


def test_stall_in_body_resumes(server: _Server, tmp_path: Path) -> None:
    body = _body()
    url = server.add("/sb.bin", body, faults=["stallbody:2000"])
    res = download_file([Mirror(url, _md5(body))], tmp_path / "sb.bin", **FAST)
    assert res.resumed and res.sha256 == _sha(body)
    assert server.hits("/sb.bin")[1] == "bytes=2000-"


def test_server_ignoring_range_restarts(server: _Server, tmp_path: Path) -> None:
    body = _body()
    url = server.add("/nr.bin", body, faults=["cut:1000", "norange"])
    res = download_file([Mirror(url, _md5(body))], tmp_path / "nr.bin", **FAST)
    assert not res.resumed and res.sha256 == _sha(body)
    assert server.hits("/nr.bin") == [None, "bytes=1000-"]
    assert (tmp_path / "nr.bin").read_bytes() == body


def test_complete_part_answered_416(server: _Server, tmp_path: Path) -> None:
    body = _body(3000)
    url = server.add("/w.bin", body)
    (tmp_path / "w.bin.part").write_bytes(body)
    (tmp_path / "w.bin.part.json").write_text(json.dumps({"url": url}))
    res = download_file([Mirror(url, _md5(body))], tmp_path / "w.bin", **FAST)
    assert res.resumed and res.sha256 == _sha(body)
    assert server.hits("/w.bin") == ["bytes=3000-"]


def test_stale_part_from_same_url_is_redownloaded(server: _Server, tmp_path: Path) -> None:
    body = _body()
    url = server.add("/s.bin", body)
    (tmp_path / "s.bin.part").write_bytes(b"garbage" * 10)
    (tmp_path / "s.bin.part.json").write_text(json.dumps({"url": url}))
    res = download_file([Mirror(url, _md5(body))], tmp_path / "s.bin", **FAST)
    assert not res.resumed and res.sha256 == _sha(body)
    assert server.hits("/s.bin") == ["bytes=70-", None]
    assert not (tmp_path / "s.bin.corrupt").exists()


def test_part_from_other_url_is_not_resumed(server: _Server, tmp_path: Path) -> None:
    body = _body()
    url = server.add("/o.bin", body)
    (tmp_path / "o.bin.part").write_bytes(body[:500])
    (tmp_path / "o.bin.part.json").write_text(json.dumps({"url": "http://elsewhere/o.bin"}))
    res = download_file([Mirror(url, _md5(body))], tmp_path / "o.bin", **FAST)
    assert not res.resumed and server.hits("/o.bin") == [None]


def test_404_falls_back_to_next_mirror(server: _Server, tmp_path: Path) -> None:
    body = _body()
    dead = server.add("/dead.bin", b"", status=404)
    good = server.add("/good.bin", body)
    res = download_file([Mirror(dead, _md5(b"other")), Mirror(good, _md5(body))], tmp_path / "x.bin", **FAST)
    assert res.url == good and res.sha256 == _sha(body)
    assert server.hits("/dead.bin") == [None]  # 404 is not retried


def test_500_then_ok_retries_same_mirror(server: _Server, tmp_path: Path) -> None:
    body = _body()
    url = server.add("/flaky.bin", body, faults=["500"])
    other = server.add("/other.bin", body)
    res = download_file([Mirror(url, _md5(body)), Mirror(other, _md5(body))], tmp_path / "x.bin", **FAST)
    assert res.url == url and len(server.hits("/flaky.bin")) == 2 and server.hits("/other.bin") == []


def test_stalled_server_times_out_then_falls_back(server: _Server, tmp_path: Path) -> None:
    body = _body()
    slow = server.add("/slow.bin", body, faults=["stall:5"] * 5)
    good = server.add("/good.bin", body)
    t0 = time.monotonic()
    res = download_file([Mirror(slow), Mirror(good, _md5(body))], tmp_path / "x.bin", **FAST)
    assert res.url == good
    assert len(server.hits("/slow.bin")) == 2  # first try + 1 retry
    assert time.monotonic() - t0 < 4


def test_connection_refused_falls_back(server: _Server, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    body = _body(1000)
    good = server.add("/good.bin", body)
    res = download_file([Mirror(f"http://127.0.0.1:{port}/x.bin"), Mirror(good)], tmp_path / "x.bin", **FAST)
    assert res.url == good


def test_wrong_checksum_raises_and_quarantines(server: _Server, tmp_path: Path) -> None:
    body = _body()
    url = server.add("/bad.bin", body)
    dest = tmp_path / "bad.bin"
    want = hashlib.md5(b"something else").hexdigest()
    with pytest.raises(DataMissingError) as err:
        download_file([Mirror(url, "md5:" + want)], dest, **FAST)
    msg = str(err.value)
    assert err.value.exit_code == 3
    assert "bad.bin" in msg and want in msg and hashlib.md5(body).hexdigest() in msg
    assert (tmp_path / "bad.bin.corrupt").read_bytes() == body
    _no_leftovers(dest)


def test_wrong_checksum_on_first_mirror_uses_second(server: _Server, tmp_path: Path) -> None:
    body = _body()
    a = server.add("/a.bin", b"tampered")
    b = server.add("/b.bin", body)
    res = download_file([Mirror(a, _md5(body)), Mirror(b, _md5(body))], tmp_path / "x.bin", **FAST)
    assert res.url == b and (tmp_path / "x.bin.corrupt").read_bytes() == b"tampered"


def test_every_mirror_failing_names_them_all(server: _Server, tmp_path: Path) -> None:
    a = server.add("/a.bin", b"", status=404)
    b = server.add("/b.bin", b"", status=503)
    with pytest.raises(DataMissingError) as err:
        download_file([Mirror(a), Mirror(b)], tmp_path / "x.bin", **FAST)
    assert a in str(err.value) and b in str(err.value) and "HTTP 503" in str(err.value)
    assert not (tmp_path / "x.bin").exists()


def test_unknown_checksum_recorded_then_enforced(server: _Server, tmp_path: Path) -> None:
    body = _body()
    url = server.add("/u.bin", body)
    manifest = Manifest(tmp_path)
    dest = tmp_path / "sub" / "u.bin"
    res = download_file([Mirror(url)], dest, manifest=manifest, **FAST)
    assert not res.verified
    entry = json.loads((tmp_path / "manifest.json").read_text())["files"]["sub/u.bin"]
    assert (entry["sha256"], entry["size"], entry["url"]) == (_sha(body), len(body), url)
    again = download_file([Mirror(url)], dest, manifest=manifest, **FAST)
    assert again.skipped and again.verified and len(server.hits("/u.bin")) == 1
    dest.unlink()
    server.routes["/u.bin"].body = _body(seed=1)
    with pytest.raises(DataMissingError, match="checksum mismatch.*manifest"):
        download_file([Mirror(url)], dest, manifest=manifest, **FAST)
    _no_leftovers(dest)
    assert dest.with_name("u.bin.corrupt").exists()


def test_no_mirror_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInputError):
        download_file([], tmp_path / "x")


# --------------------------------------------------------------------------------------------
# extract_archive
# --------------------------------------------------------------------------------------------


def _zip(path: Path, entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def _tar(path: Path, entries: dict[str, bytes], mode: str = "w:gz", extra: list[tarfile.TarInfo] | None = None) -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tf.addfile(info)
    return path


def _siblings(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


BROWN_LIKE = {
    "liberty/": b"",
    "liberty/liberty/": b"",
    "liberty/liberty/patches0000.bmp": b"BM..",
    "liberty/liberty/info.txt": b"0 0\n",
}


def test_nested_single_top_folder_is_flattened(tmp_path: Path) -> None:
    arc = _zip(tmp_path / "liberty.zip", BROWN_LIKE)
    out = extract_archive(arc, tmp_path / "brown" / "liberty")
    dest = tmp_path / "brown" / "liberty"
    assert sorted(p.name for p in out) == ["info.txt", "patches0000.bmp"]
    assert (dest / "patches0000.bmp").read_bytes() == b"BM.." and (dest / "info.txt").is_file()
    assert _siblings(dest.parent) == {"liberty"}


def test_no_flatten_when_several_tops_or_flatten_off(tmp_path: Path) -> None:
    arc = _zip(tmp_path / "a.zip", {"a/x.txt": b"1", "b/y.txt": b"2"})
    extract_archive(arc, tmp_path / "o1")
    assert (tmp_path / "o1" / "a" / "x.txt").is_file()
    arc2 = _zip(tmp_path / "b.zip", {"top/x.txt": b"1", "__MACOSX/top/._x.txt": b"junk"})
    extract_archive(arc2, tmp_path / "o2", flatten=False)
    assert (tmp_path / "o2" / "top" / "x.txt").is_file() and not (tmp_path / "o2" / "__MACOSX").exists()
    extract_archive(arc2, tmp_path / "o3")
    assert _siblings(tmp_path / "o3") == {"x.txt"}


def test_tar_detected_by_magic_not_extension(tmp_path: Path) -> None:
    for mode in ("w", "w:gz", "w:bz2", "w:xz"):
        entries = {"hpatches-release/i_x/ref.png": b"png", "hpatches-release/v_y/ref.png": b"png"}
        arc = _tar(tmp_path / f"misnamed-{mode[-2:]}.zip", entries, mode=mode)
        assert detect_format(arc) == "tar"
        out = extract_archive(arc, tmp_path / f"out-{mode[-2:]}")
        assert out == [tmp_path / f"out-{mode[-2:]}" / s / "ref.png" for s in ("i_x", "v_y")]
    (tmp_path / "not.zip").write_bytes(b"hello world" * 100)
    with pytest.raises(BadInputError, match="not a zip or tar"):
        extract_archive(tmp_path / "not.zip", tmp_path / "nope")


@pytest.mark.parametrize(
    ("kind", "bad"),
    [("zip", "../evil"), ("zip", "/abs/evil"), ("zip", "ok/../../evil"), ("zip", "C:/evil"), ("zip-symlink", "link")],
)
def test_unsafe_zip_entries_refused(tmp_path: Path, kind: str, bad: str) -> None:
    entries = {"good/a.txt": b"a"}
    if kind == "zip":
        arc = _zip(tmp_path / "x.zip", {**entries, bad: b"evil"})
    else:
        arc = _zip(tmp_path / "x.zip", entries, symlinks={bad: "/etc/passwd"})
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(BadInputError) as err:
        extract_archive(arc, work / "dest")
    assert "x.zip" in str(err.value) and bad in str(err.value)
    assert _siblings(work) == set()
    assert not (tmp_path / "evil").exists()


def _link(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = "/etc/passwd"
    return info


@pytest.mark.parametrize(
    "extra",
    [
        {"name": "/tmp/evil-abs"},
        {"link": _link("sym", tarfile.SYMTYPE)},
        {"link": _link("hard", tarfile.LNKTYPE)},
        {"link": _link("dev", tarfile.CHRTYPE)},
    ],
)
def test_unsafe_tar_entries_refused(tmp_path: Path, extra: dict[str, object]) -> None:
    entries = {"good/a.txt": b"a"}
    links: list[tarfile.TarInfo] = []
    if "name" in extra:
        entries[str(extra["name"])] = b"evil"
    else:
        links.append(extra["link"])  # type: ignore[arg-type]
    arc = _tar(tmp_path / "x.tar.gz", entries, extra=links)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(BadInputError, match="x.tar.gz.*refusing entry"):
        extract_archive(arc, work / "dest")
    assert _siblings(work) == set()


def test_interrupted_extraction_leaves_no_dest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arc = _zip(tmp_path / "x.zip", {f"top/{i}.txt": b"x" for i in range(5)})
    calls = {"n": 0}
    real = archive_mod.shutil.copyfileobj

    def flaky(*args: object, **kw: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(archive_mod.shutil, "copyfileobj", flaky)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(KeyboardInterrupt):
        extract_archive(arc, work / "dest")
    assert _siblings(work) == set()


def test_existing_dest_is_replaced(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "stale.txt").write_text("old")
    extract_archive(_zip(tmp_path / "x.zip", {"new.txt": b"n"}), dest)
    assert _siblings(dest) == {"new.txt"} and _siblings(tmp_path) == {"dest", "x.zip"}


# --------------------------------------------------------------------------------------------
# fetch
# --------------------------------------------------------------------------------------------


def _zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _remote(url: str, checksum: str | None, *, archive: bool = True, name: str = "liberty") -> RemoteFile:
    if archive:
        return RemoteFile(f"brown/{name}", f"{name}.zip", (Mirror(url, checksum),), True, f"brown/{name}")
    return RemoteFile(f"hpatches/tasks/{name}", name, (Mirror(url, checksum),), False, "hpatches/tasks")


def test_fetch_archive_then_skip(server: _Server, tmp_path: Path) -> None:
    data = _zip_bytes(BROWN_LIKE)
    url = server.add("/liberty.zip", data, faults=["cut:300"])
    rf = _remote(url, _md5(data))
    [s] = fetch([rf], tmp_path, **FAST).files
    dest = tmp_path / "brown" / "liberty"
    assert s.to_json() == {
        "key": "brown/liberty",
        "path": str(dest),
        "url": url,
        "size": len(data),
        "sha256": _sha(data),
        "skipped": False,
        "resumed": True,
        "verified": True,
    }
    assert _siblings(dest) == {"patches0000.bmp", "info.txt", MARKER_NAME}
    assert json.loads((dest / MARKER_NAME).read_text())["sha256"] == _sha(data)
    assert _siblings(tmp_path / "brown") == {"liberty"}  # archive deleted, no .part
    assert "brown/liberty.zip" in json.loads((tmp_path / "manifest.json").read_text())["files"]
    n = len(server.log)
    [again] = fetch([rf], tmp_path, **FAST).files
    assert again.skipped and again.sha256 == _sha(data) and len(server.log) == n


def test_fetch_corrupt_archive_quarantined_and_forgotten(server: _Server, tmp_path: Path) -> None:
    url = server.add("/broken.zip", b"PK\x03\x04 this is not really a zip")
    rf = _remote(url, None, name="broken")
    with pytest.raises(DataMissingError, match="cannot be extracted"):
        fetch([rf], tmp_path, **FAST)
    assert _siblings(tmp_path / "brown") == {"broken.zip.corrupt"}
    assert "brown/broken.zip" not in json.loads((tmp_path / "manifest.json").read_text())["files"]
    server.routes["/broken.zip"].body = _zip_bytes({"a.txt": b"a"})
    [s] = fetch([rf], tmp_path, **FAST).files
    assert not s.skipped and (tmp_path / "brown" / "broken" / "a.txt").is_file()


def test_fetch_keep_archive(server: _Server, tmp_path: Path) -> None:
    data = _zip_bytes({"x/a.txt": b"a"})
    url = server.add("/y.zip", data)
    fetch([_remote(url, None, name="y")], tmp_path, keep_archive=True, **FAST)
    assert (tmp_path / "brown" / "y.zip").read_bytes() == data
    assert (tmp_path / "brown" / "y" / "a.txt").is_file()


def test_fetch_plain_files_and_skip(server: _Server, tmp_path: Path) -> None:
    known, unknown = b"s,idx\nv_a,1\n", b"s1,t1\n"
    u1 = server.add("/tasks/retr_queries_split-a.csv", known)
    u2 = server.add("/tasks/verif_pos_split-a.csv", unknown)
    files = [
        _remote(u1, "sha256:" + _sha(known), archive=False, name="retr_queries_split-a.csv"),
        _remote(u2, None, archive=False, name="verif_pos_split-a.csv"),
    ]
    first = fetch(files, tmp_path, **FAST).files
    assert [s.skipped for s in first] == [False, False] and [s.verified for s in first] == [True, False]
    assert (tmp_path / "hpatches" / "tasks" / "retr_queries_split-a.csv").read_bytes() == known
    n = len(server.log)
    second = fetch(files, tmp_path, **FAST).files
    assert [s.skipped for s in second] == [True, True] and len(server.log) == n


def test_extra_mirrors_tried_first(server: _Server, tmp_path: Path) -> None:
    data = _zip_bytes({"a.txt": b"a"})
    builtin = server.add("/builtin/z.zip", data)
    mine = server.add("/mine/z.zip", data)
    rf = _remote(builtin, _md5(data), name="z")
    [s] = fetch([rf], tmp_path, extra_mirrors=[server.url("/mine/")], **FAST).files
    assert s.url == mine and server.hits("/builtin/z.zip") == []
    rf2 = _remote(builtin, _md5(data), name="z2")
    [s2] = fetch([rf2], tmp_path, extra_mirrors=[server.url("/missing.zip")], checksum=_md5(data), **FAST).files
    assert s2.url == builtin


def test_checksum_override_applies_to_builtin(server: _Server, tmp_path: Path) -> None:
    data = _zip_bytes({"a.txt": b"a"})
    url = server.add("/c.zip", data)
    rf = _remote(url, _md5(b"registry value is stale"), name="c")
    with pytest.raises(DataMissingError):
        fetch([rf], tmp_path, **FAST)
    [s] = fetch([rf], tmp_path, checksum="sha256:" + _sha(data), **FAST).files
    assert s.verified and (tmp_path / "brown" / "c" / "a.txt").is_file()


def test_fetch_from_file(server: _Server, tmp_path: Path) -> None:
    data = _zip_bytes(BROWN_LIKE)
    local = tmp_path / "dl" / "liberty.zip"
    local.parent.mkdir()
    local.write_bytes(data)
    root = tmp_path / "root"
    rf = _remote(server.url("/never.zip"), _md5(data))
    [s] = fetch([rf], root, from_file=local).files
    assert s.verified and not s.skipped and local.exists() and server.log == []
    assert (root / "brown" / "liberty" / "patches0000.bmp").is_file()
    [again] = fetch([rf], root, from_file=local).files
    assert again.skipped
    # unknown copy: accepted and recorded
    rf_other = _remote(server.url("/never.zip"), _md5(b"x"), name="other")
    [s2] = fetch([rf_other], root, from_file=local).files
    assert not s2.verified
    [s2_again] = fetch([rf_other], root, from_file=local).files
    assert s2_again.skipped and not s2_again.verified
    assert json.loads((root / "manifest.json").read_text())["files"]["brown/other.zip"]["sha256"] == _sha(data)
    # explicit wrong checksum: refused
    with pytest.raises(DataMissingError, match="checksum mismatch"):
        fetch([_remote("http://x/y.zip", None, name="third")], root, from_file=local, checksum=_md5(b"nope"))
    assert not (root / "brown" / "third").exists()


def test_fetch_option_errors(tmp_path: Path) -> None:
    two = brown_files(["liberty", "yosemite"])
    with pytest.raises(BadInputError, match="exactly one"):
        fetch(two, tmp_path, from_file=tmp_path / "x.zip")
    with pytest.raises(BadInputError, match="exactly one"):
        fetch(two, tmp_path, checksum=_md5(b""))
    with pytest.raises(BadInputError, match="folder URL"):
        fetch(two, tmp_path, extra_mirrors=["http://h/liberty.zip"])
    with pytest.raises(BadInputError, match="checksum"):
        fetch(two[:1], tmp_path, checksum="crc32:1234")
    with pytest.raises(DataMissingError, match="no such file"):
        fetch(two[:1], tmp_path, from_file=tmp_path / "missing.zip")


# --------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------


def test_brown_registry() -> None:
    every = brown_files(["all"])
    assert [f.key for f in every] == [f"brown/{n}" for n in BROWN_NAMES] and len(every) == 6
    assert [f.key for f in brown_files(["yosemite", "all", "yosemite"])][0] == "brown/yosemite"
    lib = brown_files(["liberty"])[0]
    assert lib.archive and lib.dest == "brown/liberty" and lib.mirrors[0].url.startswith("https://cmp.felk.cvut.cz/")
    assert lib.mirrors[0].checksum == "md5:abb7b7e7c8f58b953f9d10dce2cb5e9c" and lib.mirrors[2].checksum is None
    nd = brown_files(["notredame"])[0]
    assert nd.mirrors[0].url.endswith("/BrownPhotoTour/notredame/notredame.zip")
    assert len(brown_files(["liberty_harris"])[0].mirrors) == 2
    with pytest.raises(BadInputError, match="liberty_harris"):
        brown_files(["lberty"])


def test_hpatches_registry(shared_data: Path) -> None:
    tasks = hpatches_files("tasks")
    assert len(tasks) == 31 and not any(f.archive for f in tasks)
    assert all(HPATCHES_BENCHMARK_COMMIT in f.mirrors[0].url for f in tasks)
    by_name = {f.filename: f for f in tasks}
    assert by_name["splits.json"].dest == "hpatches/tasks/splits"
    assert by_name["verif_neg_inter_split-view.csv"].mirrors[0].checksum is None
    assert len(hpatches_files("all")) == 33 and hpatches_files("patches")[0].dest == "hpatches/hpatches-release"
    with pytest.raises(BadInputError, match="sequences"):
        hpatches_files("everything")
    # the registry's sha256 values match the real copies beside the checkout
    real = shared_data / "hpatches-tasks"
    for path in [real / "splits" / "splits.json", *sorted(real.glob("retr_*.csv"))]:
        algo, digest = parse_checksum(str(by_name[path.name].mirrors[0].checksum))
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, path.name


def test_every_registered_checksum_parses() -> None:
    for files in DATASETS.values():
        for rf in files:
            for m in rf.mirrors:
                if m.checksum:
                    parse_checksum(m.checksum)
    with pytest.raises(BadInputError):
        Mirror("http://x", "md5:123")
