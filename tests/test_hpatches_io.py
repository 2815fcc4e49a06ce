"""HPatches file readers: the real split and retrieval files, descriptor CSV parsing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from descbal.errors import BadInputError
from descbal.eval.hpatches_io import (
    TYPES,
    get_split,
    load_splits,
    parse_descriptor_csv,
    read_patch_list,
    task_file,
    type_index,
    write_descriptor_csv,
)


def test_types_and_type_index() -> None:
    assert len(TYPES) == 16 and TYPES[0] == "ref" and TYPES[1] == "e1" and TYPES[15] == "t5"
    assert type_index("e", 0) == type_index("t", 0) == 0
    assert TYPES[type_index("h", 3)] == "h3"


def test_real_splits(shared_data: Path) -> None:
    tasks = shared_data / "hpatches-tasks"
    splits = load_splits(tasks)
    assert set(splits) == {"a", "b", "c", "full", "illum", "view"}
    assert len(splits["full"]["test"]) == 116
    assert sum(s.startswith("i_") for s in splits["full"]["test"]) == 57
    a = get_split(tasks, "a")
    assert len(a["test"]) == 40 and len(a["train"]) == 76
    assert sum(s.startswith("i_") for s in a["test"]) == 20
    assert "v_woman" in a["test"] and "i_ajuntament" in a["test"]
    with pytest.raises(BadInputError, match="unknown split 'x'"):
        get_split(tasks, "x")


def test_real_split_a_retrieval_files_index(shared_data: Path) -> None:
    tasks = shared_data / "hpatches-tasks"
    seqs = get_split(tasks, "a")["test"]
    index = {s: i for i, s in enumerate(seqs)}
    big = [2000] * len(seqs)
    q = read_patch_list(task_file(tasks, "retr_queries", "a"), index, big)
    d = read_patch_list(task_file(tasks, "retr_distractors", "a"), index, big)
    assert len(q.idx) == 10_000 and len(d.idx) == 20_000
    assert np.all(q.image == 0) and np.all(d.image == 0)
    qs = set(zip(q.seq.tolist(), q.idx.tolist(), strict=True))
    ds = set(zip(d.seq.tolist(), d.idx.tolist(), strict=True))
    assert len(qs) == 10_000 and len(ds) == 20_000 and not qs & ds
    assert set(q.seq.tolist()) == set(d.seq.tolist()) == set(range(40))
    per_seq = np.bincount(d.seq, minlength=40)
    assert per_seq.min() == 82 and per_seq.max() == 685
    # protocols.md: the patch-count lower bounds (max idx + 1) sum to 59,494 for split a.
    both = np.concatenate([q.seq, d.seq]), np.concatenate([q.idx, d.idx])
    lower = np.zeros(40, np.int64)
    np.maximum.at(lower, both[0], both[1] + 1)
    assert lower.sum() == 59_494
    # A sequence that really has fewer patches than an index is a clear error.
    small = list(big)
    small[index["v_colors"] if "v_colors" in index else 0] = 5
    with pytest.raises(BadInputError, match="beyond the 5 patches"):
        read_patch_list(task_file(tasks, "retr_queries", "a"), index, small)


def test_csv_parse_matches_official_float32(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 7))
    f = tmp_path / "d.csv"
    write_descriptor_csv(f, x)
    text = f.read_text().splitlines()[0]
    assert text.split(",")[0] == f"{x[0, 0]:10.5f}"
    got = parse_descriptor_csv(f)
    assert got.dtype == np.float32
    # parsed as float64, then cast: the official reader's float32 values
    expected = np.array([[float(v) for v in ln.split(",")] for ln in f.read_text().splitlines()]).astype(np.float32)
    np.testing.assert_array_equal(got, expected)


def test_csv_errors(tmp_path: Path) -> None:
    f = tmp_path / "x.csv"
    f.write_text("1,2\n3,abc\n")
    with pytest.raises(BadInputError, match="x.csv"):
        parse_descriptor_csv(f)
    f.write_text("1,2\n3,4,5\n")
    with pytest.raises(BadInputError, match="x.csv"):
        parse_descriptor_csv(f)
    f.write_text("")
    with pytest.raises(BadInputError, match="empty"):
        parse_descriptor_csv(f)


def test_csv_errors_number_lines_from_one_like_an_editor(tmp_path: Path) -> None:
    """Issue 21: a non-numeric value was reported one row lower than a wrong column count."""
    f = tmp_path / "x.csv"
    f.write_text("1,2\n3,4\n5,abc\n")
    with pytest.raises(BadInputError) as e:
        parse_descriptor_csv(f)
    assert str(e.value) == f"{f}: line 3: 'abc' is not a number"
    f.write_text("1,2\n3,4\n5,6,7\n")
    with pytest.raises(BadInputError) as e:
        parse_descriptor_csv(f)
    assert str(e.value) == f"{f}: line 3 does not have 2 columns (it has 3)"
    f.write_text("1,2\n\n3,4\n5,nan\n")  # a blank line is skipped but still counts as a line
    with pytest.raises(BadInputError) as e:
        parse_descriptor_csv(f)
    assert str(e.value) == f"{f}: line 4: NaN or inf"


def test_task_file_lines_count_blank_lines(tmp_path: Path) -> None:
    f = tmp_path / "retr_queries_split-a.csv"
    f.write_text("s,idx\nseq,0\n\nseq,1\nseq,x\n")  # blank lines are skipped, as pandas does
    with pytest.raises(BadInputError) as e:
        read_patch_list(f, {"seq": 0}, [5])
    assert str(e.value) == f"{f}: line 5: not an integer"
    f.write_text("s,idx\n\nseq,0\nseq,9\n")
    with pytest.raises(BadInputError, match="line 4: patch index 9"):
        read_patch_list(f, {"seq": 0}, [5])
    f.write_text("s,idx\n\nseq,0\nseq,1,2\n")
    with pytest.raises(BadInputError, match="line 4 does not have 2 columns"):
        read_patch_list(f, {"seq": 0}, [5])
