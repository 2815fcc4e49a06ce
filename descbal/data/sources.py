"""Where every downloadable dataset lives: the one registry of URLs and checksums.

Each dataset is a list of :class:`RemoteFile` entries. A remote file has an ordered tuple of
:class:`Mirror` objects (tried first to last) and a ``dest`` folder relative to the data root
(see :func:`descbal.data.paths.default_root`) where it is extracted (archives) or placed
(plain files).

Checksums are strings ``"md5:HEX"`` or ``"sha256:HEX"``; ``None`` means unknown, in which case
the downloader records the first copy it gets in the manifest and checks later copies against
that record.

Facts: Brown/UBC PhotoTour, ``spec/protocols.md`` §4.1-4.2 (the CTU mirror holds re-packed zips
whose md5s differ from the historic ones); HPatches, §1.1 and §1.3-1.4 (tasks and splits come
from the benchmark repository, pinned to one commit).
"""

from __future__ import annotations

from dataclasses import dataclass

from descbal.errors import BadInputError

CHECKSUM_ALGORITHMS: tuple[str, ...] = ("md5", "sha256")


@dataclass(frozen=True)
class Mirror:
    """One URL for a remote file and, where known, its checksum.

    Attributes:
        url: HTTP(S) URL of the file.
        checksum: ``"md5:HEX"``, ``"sha256:HEX"`` or ``None`` when unknown.
    """

    url: str
    checksum: str | None = None

    def __post_init__(self) -> None:
        if self.checksum is not None:
            parse_checksum(self.checksum)


@dataclass(frozen=True)
class RemoteFile:
    """A file to download, with its mirrors and where it goes under the data root.

    Attributes:
        key: Stable identifier, e.g. ``"brown/liberty"`` or ``"hpatches/tasks/retr_queries_split-a.csv"``.
        filename: Name the download is saved under (inside ``dest`` for plain files).
        mirrors: Mirrors in the order they are tried.
        archive: ``True`` if the file is an archive to extract into ``dest``.
        dest: Folder under the data root where the content ends up, e.g. ``"brown/liberty"``.
    """

    key: str
    filename: str
    mirrors: tuple[Mirror, ...]
    archive: bool
    dest: str


def parse_checksum(checksum: str) -> tuple[str, str]:
    """Split ``"algo:HEX"`` into ``(algo, hex)`` after validating it.

    Args:
        checksum: A checksum string such as ``"md5:abb7..."``.

    Returns:
        ``(algorithm, lowercase hex digest)``.

    Raises:
        BadInputError: unknown algorithm or a digest of the wrong length / not hexadecimal.
    """
    algo, sep, digest = checksum.partition(":")
    algo = algo.strip().lower()
    digest = digest.strip().lower()
    lengths = {"md5": 32, "sha256": 64}
    if not sep or algo not in lengths:
        raise BadInputError(f"checksum {checksum!r} must look like 'md5:HEX' or 'sha256:HEX'")
    if len(digest) != lengths[algo] or any(c not in "0123456789abcdef" for c in digest):
        raise BadInputError(f"checksum {checksum!r}: expected {lengths[algo]} hexadecimal digits for {algo}")
    return algo, digest


# --------------------------------------------------------------------------------------------
# Brown / UBC PhotoTour
# --------------------------------------------------------------------------------------------

_CTU = "https://cmp.felk.cvut.cz/~mishkdmy/datasets/BrownPhotoTour/"
_ICVL = "http://icvl.ee.ic.ac.uk/vbalnt/"
_MBROWN = "http://matthewalunbrown.com/patchdata/"

#: Brown set name -> ordered (url, checksum) mirrors.
_BROWN_MIRRORS: dict[str, tuple[Mirror, ...]] = {
    "liberty": (
        Mirror(_CTU + "liberty.zip", "md5:abb7b7e7c8f58b953f9d10dce2cb5e9c"),
        Mirror(_ICVL + "liberty.zip", "md5:fdd9152f138ea5ef2091746689176414"),
        Mirror(_MBROWN + "liberty.zip", None),
    ),
    "notredame": (
        Mirror(_CTU + "notredame/notredame.zip", "md5:3fd38e77cd32a43051525532c83460ef"),
        Mirror(_ICVL + "notredame.zip", "md5:509eda8535847b8c0a90bbb210c83484"),
        Mirror(_MBROWN + "notredame.zip", None),
    ),
    "yosemite": (
        Mirror(_CTU + "yosemite.zip", "md5:97f1ecc08928cdf2dba220939778779e"),
        Mirror(_ICVL + "yosemite.zip", "md5:533b2e8eb7ede31be40abc317b2fd4f0"),
        Mirror(_MBROWN + "yosemite.zip", None),
    ),
    "liberty_harris": (
        Mirror(_CTU + "liberty_harris.zip", "md5:01c32c4d98493a95f23159923ff0ca39"),
        Mirror(_MBROWN + "liberty_harris.zip", "md5:c731fcfb3abb4091110d0ae8c7ba182c"),
    ),
    "notredame_harris": (
        Mirror(_CTU + "notredame_harris.zip", "md5:f139ca4e4101d558c31c3233233c2a06"),
        Mirror(_MBROWN + "notredame_harris.zip", "md5:69f8c90f78e171349abdf0307afefe4d"),
    ),
    "yosemite_harris": (
        Mirror(_CTU + "yosemite_harris.zip", "md5:a9f8a48c96dbe9e5703f21c1de764173"),
        Mirror(_MBROWN + "yosemite_harris.zip", "md5:a73253d1c6fbd3ba2613c45065c00d46"),
    ),
}

BROWN_NAMES: tuple[str, ...] = tuple(_BROWN_MIRRORS)


def _brown_file(name: str) -> RemoteFile:
    """The archive of one Brown set, extracted (flattened) to ``brown/<name>``."""
    mirrors = _BROWN_MIRRORS[name]
    return RemoteFile(key=f"brown/{name}", filename=f"{name}.zip", mirrors=mirrors, archive=True, dest=f"brown/{name}")


# --------------------------------------------------------------------------------------------
# HPatches
# --------------------------------------------------------------------------------------------

_HF = "https://huggingface.co/datasets/vbalnt/hpatches/resolve/main/"
HPATCHES_BENCHMARK_COMMIT = "e0c993c7756d26129fef47f752f79e4cfe6681aa"
_TASKS = f"https://raw.githubusercontent.com/hpatches/hpatches-benchmark/{HPATCHES_BENCHMARK_COMMIT}/tasks/"

HPATCHES_SPLITS: tuple[str, ...] = ("a", "b", "c", "full", "illum", "view")
HPATCHES_PARTS: tuple[str, ...] = ("patches", "sequences", "tasks", "all")

_SPLITS_JSON_SHA256 = "sha256:75d4272eb8872f5444d34c00b4111f317432b5fe7550e74749cb1354d972fa83"

#: (task kind, split) -> sha256 of the file at the pinned commit; kinds absent here are unknown.
_TASK_SHA256: dict[tuple[str, str], str] = {
    ("retr_distractors", "a"): "e4d0a3154d170b8d54aec05c0296cc289b042a8addf5b36351cf2c56602fbc85",
    ("retr_distractors", "b"): "0cfc0e1b075ee97dad845aba66215eabc02aa37bc2540d66049355c471e54e8f",
    ("retr_distractors", "c"): "7876980a1ab106b3deebef2a2966df4b5921d31bc09df54aeb82c03544257735",
    ("retr_distractors", "full"): "a913f9196185dac05555686fd22fad19048c56920bf5cbd81688fa41770dc6e2",
    ("retr_distractors", "illum"): "ec9ea07576660a449f9ba4bd564fa53b906c36e3603896382ca320f43324def3",
    ("retr_distractors", "view"): "5d92e43fda28f4f3d0c18b59414fb907d704f397579eac73079ee910aaab8d2f",
    ("retr_queries", "a"): "9a1cc25469f672da4a642b02360dc563a2c8af8080ec9841376c6843e8f7ea3a",
    ("retr_queries", "b"): "1bb0554498cfdbce6e16afa2aec4b9527c0387c9df2e36ca68eef0a1e9a566f3",
    ("retr_queries", "c"): "1ac37b424fe69b4d3140e46672d336e1dbf99a8c9aab35a3724ee53f9d173791",
    ("retr_queries", "full"): "d34f4ee6530f791b796a9a2d78b0153e4a8d31ce0ecd3263686b0411e265c072",
    ("retr_queries", "illum"): "a3294d801eefa0579eb543a379343ca772dca71498db768173806e32b5bfc6dc",
    ("retr_queries", "view"): "9f22b14c47a177de13fece48c7aa58527a84a8459964d94cd35a3ab41509adee",
}

_TASK_KINDS: tuple[str, ...] = ("verif_pos", "verif_neg_intra", "verif_neg_inter", "retr_queries", "retr_distractors")


def _hf_release(name: str) -> list[RemoteFile]:
    """A release zip of the Hugging Face dataset, extracted to ``hpatches/<name>``."""
    return [RemoteFile(key=f"hpatches/{name}", filename=f"{name}.zip", mirrors=(Mirror(_HF + f"{name}.zip", None),),
                       archive=True, dest=f"hpatches/{name}")]


def _hpatches_patches() -> list[RemoteFile]:
    """The patch release (about 4.2 GB zip), extracted to ``hpatches/hpatches-release``."""
    return _hf_release("hpatches-release")


def _hpatches_sequences() -> list[RemoteFile]:
    """The full-image sequence release, extracted to ``hpatches/hpatches-sequences-release``."""
    return _hf_release("hpatches-sequences-release")


def _hpatches_tasks() -> list[RemoteFile]:
    """``splits.json`` and the 30 task CSVs of the benchmark repository at the pinned commit."""
    files = [
        RemoteFile(
            key="hpatches/tasks/splits/splits.json",
            filename="splits.json",
            mirrors=(Mirror(_TASKS + "splits/splits.json", _SPLITS_JSON_SHA256),),
            archive=False,
            dest="hpatches/tasks/splits",
        )
    ]
    for split in HPATCHES_SPLITS:
        for kind in _TASK_KINDS:
            name = f"{kind}_split-{split}.csv"
            sha = _TASK_SHA256.get((kind, split))
            files.append(
                RemoteFile(
                    key=f"hpatches/tasks/{name}",
                    filename=name,
                    mirrors=(Mirror(_TASKS + name, None if sha is None else f"sha256:{sha}"),),
                    archive=False,
                    dest="hpatches/tasks",
                )
            )
    return files


#: Dataset name -> every remote file it is made of.
DATASETS: dict[str, list[RemoteFile]] = {
    **{f"brown/{name}": [_brown_file(name)] for name in BROWN_NAMES},
    "hpatches/patches": _hpatches_patches(),
    "hpatches/sequences": _hpatches_sequences(),
    "hpatches/tasks": _hpatches_tasks(),
}


def brown_files(names: list[str]) -> list[RemoteFile]:
    """The Brown/UBC PhotoTour archives for the given set names.

    Args:
        names: Any of ``liberty``, ``notredame``, ``yosemite``, ``liberty_harris``,
            ``notredame_harris``, ``yosemite_harris``, or ``"all"`` (every set). Duplicates are
            dropped; order is kept.

    Returns:
        One :class:`RemoteFile` per set.

    Raises:
        BadInputError: an unknown name or an empty list.
    """
    if not names:
        raise BadInputError(f"no Brown set given; valid: {', '.join(BROWN_NAMES)}, all")
    chosen: list[str] = []
    for name in names:
        if name == "all":
            wanted: tuple[str, ...] = BROWN_NAMES
        elif name in _BROWN_MIRRORS:
            wanted = (name,)
        else:
            raise BadInputError(f"unknown Brown set {name!r}; valid: {', '.join(BROWN_NAMES)}, all")
        chosen.extend(n for n in wanted if n not in chosen)
    return [DATASETS[f"brown/{n}"][0] for n in chosen]


def hpatches_files(part: str) -> list[RemoteFile]:
    """The HPatches files for one part of the benchmark.

    Args:
        part: ``"patches"`` (patch release), ``"sequences"`` (full images and homographies),
            ``"tasks"`` (``splits.json`` and task CSVs) or ``"all"``.

    Returns:
        The remote files of that part, in download order.

    Raises:
        BadInputError: an unknown part.
    """
    if part == "all":
        return [f for p in ("patches", "sequences", "tasks") for f in DATASETS[f"hpatches/{p}"]]
    if part not in HPATCHES_PARTS:
        raise BadInputError(f"unknown HPatches part {part!r}; valid: {', '.join(HPATCHES_PARTS)}")
    return list(DATASETS[f"hpatches/{part}"])
