"""Reading HPatches descriptor trees, task files and splits, with clear errors.

Descriptor tree (the official layout): ``DIR/<sequence>/<type>.csv`` for the 16 types
``ref, e1..e5, h1..h5, t1..t5``; row i is patch i, one descriptor per row, no header. ``.npy``
files in the same layout are accepted too. CSVs are parsed once and kept in a one-file binary
cache (``DIR/.descbal-cache.h5``) keyed by each file's size and modification time, so repeated
evaluations skip the parsing.

Task folder (the benchmark's ``tasks/``): ``splits/splits.json`` (or ``splits.json``),
``verif_{pos,neg_intra,neg_inter}_split-X.csv`` (header ``s1,t1,idx1,s2,t2,idx2``) and
``retr_{queries,distractors}_split-X.csv`` (header ``s,idx``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from numpy.typing import NDArray

from descbal.data.hpatches_layout import NOISE_LEVELS, TYPES
from descbal.errors import BadInputError, DataMissingError
from descbal.fileio import atomic_path

CACHE_NAME = ".descbal-cache.h5"
_CACHE_FORMAT = 1


def type_index(noise: str, image: int) -> int:
    """Row of :data:`TYPES` for a task-file image id (0 = ref, 1..5) at a noise level."""
    if image == 0:
        return 0
    return 1 + NOISE_LEVELS.index(noise) * 5 + (image - 1)


# --------------------------------------------------------------------------------------------
# Descriptors
# --------------------------------------------------------------------------------------------


def _fingerprint(paths: Iterable[Path]) -> str:
    parts = []
    for p in paths:
        st = p.stat()
        parts.append(f"{p.name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def parse_descriptor_csv(path: Path, delimiter: str = ",") -> NDArray[np.float32]:
    """Parse one descriptor CSV to float32 (parsed as float64 first, like the official pandas
    reader followed by ``astype(float32)``). Shape: (N, D)."""
    try:
        with open(path, "rb") as f:
            first = f.readline()
    except OSError as e:
        raise BadInputError(f"cannot read: {e.strerror}", path) from None
    if not first.strip():
        raise BadInputError("empty descriptor file or blank first line", path)
    if delimiter.strip() and delimiter.encode() not in first:
        raise BadInputError(
            f"one column per row: wrong delimiter? (expected {delimiter!r}-separated values)", path
        )
    try:
        arr = np.loadtxt(path, delimiter=delimiter if delimiter.strip() else None,
                         dtype=np.float64, ndmin=2, comments=None)
    except ValueError as e:
        # numpy numbers rows from 0 in some messages and from 1 in others: find the line ourselves
        msg = _first_bad_csv_line(path, delimiter) or str(e).split(";")[0].replace("float64", "a number")
        raise BadInputError(msg, path) from None
    if arr.shape[1] == 1:
        raise BadInputError("one column per row: wrong delimiter?", path)
    finite = np.all(np.isfinite(arr), axis=1)
    if not finite.all():
        raise BadInputError(f"line {_csv_line_of_row(path, int(np.flatnonzero(~finite)[0]))}: NaN or inf", path)
    return arr.astype(np.float32)


def _csv_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number from 1, text)`` of the non-blank lines (the rows ``np.loadtxt`` reads)."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    return [(i, ln) for i, ln in enumerate(text.splitlines(), start=1) if ln.strip()]


def _csv_line_of_row(path: Path, row: int) -> int:
    """The line (from 1, as in an editor) holding descriptor row ``row`` (from 0)."""
    return _csv_lines(path)[row][0]


def _first_bad_csv_line(path: Path, delimiter: str) -> str | None:
    """What is wrong with the first malformed line of a descriptor CSV, as ``line N: ...``
    (N from 1, as in an editor); None when every line parses."""
    ncols = None
    for i, ln in _csv_lines(path):
        fields = ln.split(delimiter) if delimiter.strip() else ln.split()
        if ncols is None:
            ncols = len(fields)
        elif len(fields) != ncols:
            return f"line {i} does not have {ncols} columns (it has {len(fields)})"
        for f in fields:
            try:
                float(f)
            except ValueError:
                return f"line {i}: {f.strip()!r} is not a number"
    return None


def _load_npy(path: Path) -> NDArray[np.float32]:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise BadInputError(f"not a readable .npy array ({e})", path) from None
    if arr.ndim != 2:
        raise BadInputError(f"expected a 2-D (N, D) array, got shape {arr.shape}", path)
    if arr.shape[1] == 1:
        raise BadInputError("descriptors of dimension 1", path)
    if not np.issubdtype(arr.dtype, np.number):
        raise BadInputError(f"non-numeric dtype {arr.dtype}", path)
    return arr.astype(np.float32)


def _sequence_files(root: Path, seq: str) -> tuple[list[Path], str]:
    folder = root / seq
    if not folder.is_dir():
        raise DataMissingError(f"missing sequence folder {seq!r}", folder)
    for ext in (".csv", ".npy"):
        files = [folder / f"{t}{ext}" for t in TYPES]
        if all(f.is_file() for f in files):
            return files, ext
    missing = [f"{t}.csv" for t in TYPES if not (folder / f"{t}.csv").is_file()]
    raise DataMissingError(f"missing descriptor file(s) {', '.join(missing)}", folder)


def _validate_sequence(seq: str, files: Sequence[Path], arrays: Sequence[np.ndarray]) -> np.ndarray:
    n, d = arrays[0].shape
    for f, a in zip(files, arrays, strict=True):
        if a.shape[1] != d:
            raise BadInputError(f"descriptor dimension {a.shape[1]} differs from ref's {d}", f)
        if a.shape[0] != n:
            raise BadInputError(f"{a.shape[0]} rows, but ref of {seq} has {n}", f)
        if not np.all(np.isfinite(a)):
            row = int(np.flatnonzero(~np.all(np.isfinite(a), axis=1))[0])
            raise BadInputError(f"NaN or inf in row {row + 1}", f)
    return np.stack(arrays)


@dataclass
class HPatchesDescriptors:
    """Descriptors of a set of HPatches sequences.

    ``data[seq]`` has shape (16, N_seq, D), float32, indexed by :data:`TYPES`.
    """

    data: dict[str, NDArray[np.float32]]

    @property
    def dim(self) -> int:
        return next(iter(self.data.values())).shape[2]

    def __contains__(self, seq: str) -> bool:
        return seq in self.data

    def num_patches(self, seq: str) -> int:
        return self.data[seq].shape[1]


def load_descriptors(
    root: str | Path,
    sequences: Sequence[str],
    delimiter: str = ",",
    use_cache: bool = True,
) -> HPatchesDescriptors:
    """Load the descriptors of ``sequences`` from an official-layout tree.

    CSVs are parsed once; afterwards they are read from ``root/.descbal-cache.h5`` while their
    sizes and modification times are unchanged. A read-only tree simply is not cached.

    Raises:
        DataMissingError: a missing folder or file.
        BadInputError: differing row counts within a sequence, a one-column CSV (wrong
            delimiter), NaN/inf, or mixed dimensions.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataMissingError("descriptor folder does not exist", root)
    cache_path = root / CACHE_NAME
    cached: dict[str, np.ndarray] = {}
    fresh: dict[str, tuple[str, np.ndarray]] = {}
    cache_index: dict[str, str] = {}
    if use_cache and cache_path.is_file():
        try:
            with h5py.File(cache_path, "r", locking=False) as h5:
                if h5.attrs.get("format") == _CACHE_FORMAT:
                    cache_index = {k: str(h5[k].attrs["fingerprint"]) for k in h5}
        except (OSError, KeyError):
            cache_index = {}
    out: dict[str, np.ndarray] = {}
    to_read_from_cache = []
    for seq in sequences:
        files, ext = _sequence_files(root, seq)
        fp = ext + "|" + _fingerprint(files)
        if ext == ".csv" and cache_index.get(seq) == fp:
            to_read_from_cache.append(seq)
            continue
        if ext == ".csv":
            arrays = [parse_descriptor_csv(f, delimiter) for f in files]
        else:
            arrays = [_load_npy(f) for f in files]
        stacked = _validate_sequence(seq, files, arrays)
        out[seq] = stacked
        if ext == ".csv":
            fresh[seq] = (fp, stacked)
    if to_read_from_cache:
        with h5py.File(cache_path, "r", locking=False) as h5:
            for seq in to_read_from_cache:
                cached[seq] = h5[seq][...]
        out.update(cached)
    if use_cache and fresh:
        _write_cache(cache_path, fresh)
    dims = {a.shape[2] for a in out.values()}
    if len(dims) > 1:
        raise BadInputError(f"sequences have different descriptor dimensions {sorted(dims)}", root)
    return HPatchesDescriptors({seq: out[seq] for seq in sequences})


def _write_cache(cache_path: Path, fresh: dict[str, tuple[str, np.ndarray]]) -> None:
    """Merge newly parsed sequences into the cache file (atomically); silently skip on a
    read-only folder."""
    try:
        with atomic_path(cache_path) as tmp:
            with h5py.File(tmp, "w", locking=False) as out:
                out.attrs["format"] = _CACHE_FORMAT
                if cache_path.is_file():
                    try:
                        with h5py.File(cache_path, "r", locking=False) as old:
                            if old.attrs.get("format") == _CACHE_FORMAT:
                                for k in old:
                                    if k not in fresh:
                                        old.copy(old[k], out, name=k)
                    except OSError:
                        pass
                for seq, (fp, arr) in fresh.items():
                    ds = out.create_dataset(seq, data=arr)
                    ds.attrs["fingerprint"] = fp
    except OSError:
        return


# --------------------------------------------------------------------------------------------
# Splits and task files
# --------------------------------------------------------------------------------------------


def find_splits_file(tasks_dir: str | Path) -> Path:
    """``tasks_dir/splits/splits.json`` or ``tasks_dir/splits.json``."""
    tasks_dir = Path(tasks_dir)
    if not tasks_dir.is_dir():
        raise DataMissingError("task folder not found", tasks_dir)
    for p in (tasks_dir / "splits" / "splits.json", tasks_dir / "splits.json"):
        if p.is_file():
            return p
    raise DataMissingError("no splits/splits.json or splits.json", tasks_dir)


def load_splits(tasks_dir: str | Path) -> dict[str, dict]:
    """The split definitions: ``{name: {"name": ..., "test": [...], "train": [...]?}}``."""
    path = find_splits_file(tasks_dir)
    try:
        splits = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BadInputError(f"not valid JSON ({e})", path) from None
    if not isinstance(splits, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("test"), list) for v in splits.values()
    ):
        raise BadInputError("expected {split: {'test': [sequence, ...]}}", path)
    return splits


#: The split evaluated when none is named and the task folder has several (HPatches' first split).
DEFAULT_SPLIT = "a"


def default_split(tasks_dir: str | Path) -> tuple[str, str]:
    """The split to evaluate when none is named, and why (one phrase, for a log line): the task
    folder's only split (``descbal make-benchmark`` writes just one, ``full``), else
    :data:`DEFAULT_SPLIT`.

    Raises:
        BadInputError: several splits and none of them is :data:`DEFAULT_SPLIT` (listing them).
    """
    splits = load_splits(tasks_dir)
    where = find_splits_file(tasks_dir)
    if len(splits) == 1:
        return next(iter(splits)), f"the only split in {where}"
    if DEFAULT_SPLIT in splits:
        others = ", ".join(sorted(k for k in splits if k != DEFAULT_SPLIT))
        return DEFAULT_SPLIT, f"the default; {where} also has {others} (--split)"
    raise BadInputError(f"several splits ({', '.join(sorted(splits))}): choose one with --split", where)


def get_split(tasks_dir: str | Path, name: str | None = None) -> dict:
    """One split by name (None: :func:`default_split`); BadInputError naming the known splits
    when absent."""
    if name is None:
        name = default_split(tasks_dir)[0]
    splits = load_splits(tasks_dir)
    if name not in splits:
        raise BadInputError(
            f"unknown split {name!r}; known: {', '.join(sorted(splits))}", find_splits_file(tasks_dir)
        )
    split = dict(splits[name])
    split.setdefault("name", name)
    return split


@dataclass
class PatchRefs:
    """Rows of a task file resolved against a list of sequences.

    ``seq`` (M,) int64 indices into the sequence list, ``image`` (M,) image ids 0..5 (all zeros
    for retrieval files), ``idx`` (M,) 0-based patch indices.
    """

    seq: NDArray[np.int64]
    image: NDArray[np.int64]
    idx: NDArray[np.int64]


class _Columns:
    """The fields of a regular comma-separated file, located by vectorised byte scanning.

    ``starts[c]``/``ends[c]`` are (M,) byte offsets of column c's fields in ``buf``.
    """

    def __init__(self, path: Path, ncols: int) -> None:
        self.path = path
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise DataMissingError("task file not found", path) from None
        except OSError as e:
            raise BadInputError(f"cannot read: {e.strerror}", path) from None
        if b"\r" in raw:
            raw = raw.replace(b"\r", b"")
        # line numbers (from 1, as in an editor) of the header and the data rows kept, for messages
        self._lines: list[int] | None = None
        lines_blank = raw.startswith(b"\n") or b"\n\n" in raw
        if lines_blank:  # blank lines are skipped, as pandas skips them
            split = raw.split(b"\n")
            self._lines = [i for i, ln in enumerate(split, start=1) if ln.strip()]
            raw = b"\n".join(ln for ln in split if ln.strip())
        if not raw.strip():
            raise BadInputError("empty task file", path)
        if not raw.endswith(b"\n"):
            raw += b"\n"
        head_end = raw.index(b"\n")
        header = raw[:head_end].split(b",")
        if len(header) != ncols:
            raise BadInputError(f"header has {len(header)} columns, expected {ncols}", path)
        buf = np.frombuffer(raw, dtype=np.uint8)
        seps = np.flatnonzero((buf == ord(",")) | (buf == ord("\n")))
        seps = seps[seps > head_end]
        nrows = len(seps) // ncols
        is_nl = buf[seps] == ord("\n")
        expected = np.zeros(len(seps), dtype=bool)
        expected[ncols - 1 :: ncols] = True
        if len(seps) != nrows * ncols or not np.array_equal(is_nl, expected):
            bad_line = self._first_irregular_line(raw, ncols)
            raise BadInputError(f"line {self._editor_line(bad_line - 1) if bad_line else 0} does not have {ncols} columns",
                                path)
        grid = seps.reshape(nrows, ncols)
        self.buf = buf
        self.nrows = nrows
        if nrows == 0:
            self.starts = self.ends = [np.zeros(0, np.int64)] * ncols
            return
        prev = np.empty_like(grid)
        prev[:, 1:] = grid[:, :-1] + 1
        prev[0, 0] = head_end + 1
        prev[1:, 0] = grid[:-1, -1] + 1
        self.starts = [prev[:, c] for c in range(ncols)]
        self.ends = [grid[:, c] for c in range(ncols)]

    def _editor_line(self, k: int) -> int:
        """The file's line number (from 1) of line ``k`` (from 0, the header) of the text parsed."""
        return k + 1 if self._lines is None else self._lines[k]

    def line(self, row: int) -> int:
        """The file's line number (from 1, as in an editor) of data row ``row`` (from 0)."""
        return self._editor_line(row + 1)

    @staticmethod
    def _first_irregular_line(raw: bytes, ncols: int) -> int:
        for i, ln in enumerate(raw.split(b"\n")[1:], start=2):
            if ln.count(b",") != ncols - 1 and ln.strip():
                return i
        return 0

    def _byte(self, c: int, k: int) -> NDArray[np.uint8]:
        """Byte k of every field of column c (0 past the field's end). Shape: (M,)."""
        pos = self.starts[c] + k
        return np.where(pos < self.ends[c], self.buf[np.minimum(pos, len(self.buf) - 1)], 0).astype(np.uint8)

    def ints(self, c: int) -> NDArray[np.int64]:
        """Column c as non-negative integers; BadInputError naming the first bad line."""
        if self.nrows == 0:
            return np.zeros(0, np.int64)
        length = self.ends[c] - self.starts[c]
        out = np.zeros(self.nrows, dtype=np.int64)
        bad_mask = (length == 0) | (length > 18)
        for k in range(min(int(length.max()), 19)):  # Horner's rule over the digit columns
            valid = k < length
            d = self._byte(c, k).astype(np.int64) - ord("0")
            bad_mask |= valid & ((d < 0) | (d > 9))
            out = np.where(valid, out * 10 + d, out)
        bad = np.flatnonzero(bad_mask)
        if len(bad):
            # Python's int() also accepts surrounding spaces; anything else is an error.
            fields = [bytes(self.buf[self.starts[c][i] : self.ends[c][i]]) for i in bad]
            for i, f in zip(bad, fields, strict=True):
                try:
                    out[i] = int(f)
                except ValueError:
                    raise BadInputError(f"line {self.line(int(i))}: not an integer", self.path) from None
        return out

    def names(self, c: int) -> tuple[NDArray[np.int64], list[bytes]]:
        """Column c as codes into a list of distinct byte strings."""
        if self.nrows == 0:
            return np.zeros(0, np.int64), []
        length = self.ends[c] - self.starts[c]
        width = max(int(length.max()), 1)
        # The field's bytes packed into 8-byte words, hashed to one 64-bit key; equal keys are
        # then checked to hold equal words.
        words = np.zeros((self.nrows, -(-width // 8)), dtype=np.uint64)
        for k in range(width):
            words[:, k // 8] |= self._byte(c, k).astype(np.uint64) << np.uint64(8 * (k % 8))
        h = length.astype(np.uint64)
        for j in range(words.shape[1]):
            h = h * np.uint64(1099511628211) + words[:, j]
        _, first, codes = np.unique(h, return_index=True, return_inverse=True)
        codes = codes.reshape(-1).astype(np.int64)
        if np.array_equal(words, words[first][codes]):
            return codes, [bytes(self.buf[self.starts[c][i] : self.ends[c][i]]) for i in first]
        full = [bytes(self.buf[a:b]) for a, b in zip(self.starts[c], self.ends[c], strict=True)]
        table = {v: i for i, v in enumerate(dict.fromkeys(full))}
        return np.array([table[v] for v in full], np.int64), list(table)


def _resolve(path: Path, cols: _Columns, name_col: int, idx_col: int, image_col: int | None,
             seq_index: dict[str, int], lengths: Sequence[int]) -> PatchRefs:
    codes, uniq = cols.names(name_col)
    lookup = np.array([seq_index.get(u.decode(errors="replace"), -1) for u in uniq], dtype=np.int64)
    seq = lookup[codes] if len(codes) else np.zeros(0, np.int64)
    missing = np.flatnonzero(seq < 0)
    if len(missing):
        b = int(missing[0])
        name = uniq[codes[b]].decode(errors="replace")
        raise BadInputError(f"line {cols.line(b)}: sequence {name!r} is not in the split's test set", path)
    ix = cols.ints(idx_col)
    im = cols.ints(image_col) if image_col is not None else np.zeros(len(seq), np.int64)
    n = np.asarray(lengths, dtype=np.int64)[seq]
    bad = np.flatnonzero((ix < 0) | (ix >= n))
    if len(bad):
        b = int(bad[0])
        raise BadInputError(
            f"line {cols.line(b)}: patch index {ix[b]} is beyond the {n[b]} patches of "
            f"{list(seq_index)[seq[b]]}", path)
    bad = np.flatnonzero((im < 0) | (im > 5))
    if len(bad):
        b = int(bad[0])
        raise BadInputError(f"line {cols.line(b)}: image id {im[b]} is not in 0..5", path)
    return PatchRefs(seq, im, ix)


def read_pair_file(path: str | Path, seq_index: dict[str, int], lengths: Sequence[int]) -> tuple[PatchRefs, PatchRefs]:
    """A verification file (``s1,t1,idx1,s2,t2,idx2``) as two row-aligned :class:`PatchRefs`.

    Duplicate rows are kept, as the official code keeps them."""
    path = Path(path)
    cols = _Columns(path, 6)
    return (_resolve(path, cols, 0, 2, 1, seq_index, lengths),
            _resolve(path, cols, 3, 5, 4, seq_index, lengths))


def read_patch_list(path: str | Path, seq_index: dict[str, int], lengths: Sequence[int]) -> PatchRefs:
    """A retrieval file (``s,idx``, reference patches) as :class:`PatchRefs`."""
    path = Path(path)
    return _resolve(path, _Columns(path, 2), 0, 1, None, seq_index, lengths)


def task_file(tasks_dir: str | Path, kind: str, split: str) -> Path:
    """Path of a task file, e.g. ``kind='verif_pos'`` -> ``verif_pos_split-a.csv``."""
    return Path(tasks_dir) / f"{kind}_split-{split}.csv"


def write_descriptor_csv(path: str | Path, arr: NDArray[np.floating]) -> None:
    """Write one descriptor CSV in the format of the official extraction scripts
    (``%10.5f``, comma-separated), atomically. Shape: (N, D)."""
    with atomic_path(path) as tmp:
        np.savetxt(tmp, np.asarray(arr), fmt="%10.5f", delimiter=",")


def write_descriptor_tree(root: str | Path, descriptors: HPatchesDescriptors) -> None:
    """Write the official layout ``root/<seq>/<type>.csv`` (``%10.5f``) for every sequence."""
    for seq, arr in descriptors.data.items():
        for t, d in zip(TYPES, arr, strict=True):
            write_descriptor_csv(Path(root) / seq / f"{t}.csv", d)
