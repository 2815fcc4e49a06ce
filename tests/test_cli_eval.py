"""CLI tests for ``descbal eval``: success paths, JSON schema, cache, and every bad-input case."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hpatches_fixtures import make_hpatches_case
from typer.testing import CliRunner

from descbal.cli import app

runner = CliRunner()
SEQS = {"i_one": 30, "i_two": 24, "v_three": 36, "v_four": 28}


@pytest.fixture(scope="module")
def case_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("case")
    make_hpatches_case(root, seed=5, sequences=SEQS, dim=16, n_pairs=300, n_queries=20)
    return root


@pytest.fixture
def case(case_root: Path, tmp_path: Path) -> Path:
    """A private copy that a test may damage."""
    dst = tmp_path / "case"
    shutil.copytree(case_root, dst)
    return dst


def run(*args: str):
    return runner.invoke(app, list(args))


def hp(case: Path, *extra: str):
    return run("eval", "hpatches", "-d", str(case / "descriptors"), "-t", str(case / "tasks"), "--quiet", *extra)


def one_line_error(res, *needles: str, code: int = 2) -> None:
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    err = res.output.strip()
    assert err.startswith("error:"), err
    for n in needles:
        assert n in err, err


def test_help_lists_all_groups() -> None:
    res = run("--help")
    assert res.exit_code == 0
    for group in ("download", "cache", "train", "eval", "extract"):
        assert group in res.output


def test_json_schema_to_stdout(case: Path) -> None:
    res = hp(case, "--json", "-")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert set(doc) == {"split", "distance", "sequences", "verification", "matching", "retrieval", "headline"}
    assert doc["split"] == "a" and doc["distance"] == "L2"
    assert doc["sequences"] == sorted(SEQS)
    for t in "eht":
        for k in ("intra", "inter"):
            assert set(doc["verification"][t][k]) == {"balanced_auc", "imbalanced_ap"}
    per = doc["matching"]["per_image"]
    assert len(per) == len(SEQS) * 15
    assert set(per[0]) == {"sequence", "noise", "image", "ap", "sr"}
    assert {r["image"] for r in per} == {1, 2, 3, 4, 5}
    assert doc["retrieval"]["pool_sizes"] == [100, 500, 1000, 5000, 10000, 15000, 20000]
    assert set(doc["retrieval"]["map"]["e"]) == {"100", "500", "1000", "5000", "10000", "15000", "20000"}
    assert set(doc["headline"]) == {"verification", "matching", "retrieval"}
    values = [r["ap"] for r in per] + [r["sr"] for r in per] + list(doc["headline"].values())
    assert all(0.0 <= v <= 1.0 for v in values)


def test_task_subset_and_json_file(case: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    res = hp(case, "--task", "matching", "--dist", "L1", "--json", str(out))
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert "verification" not in doc and "retrieval" not in doc
    assert doc["distance"] == "L1"
    assert set(doc["headline"]) == {"matching"}


def test_tables_on_stderr_without_quiet(case: Path) -> None:
    res = run("eval", "hpatches", "-d", str(case / "descriptors"), "-t", str(case / "tasks"))
    assert res.exit_code == 0
    assert "HPatches headline" in res.output
    assert res.stdout.strip() == "" or "HPatches headline" in res.stderr


def test_binary_cache_written_reused_and_invalidated(case: Path) -> None:
    cache = case / "descriptors" / ".descbal-cache.h5"
    first = json.loads(hp(case, "--json", "-").stdout)
    assert cache.is_file()
    second = json.loads(hp(case, "--json", "-").stdout)
    assert first == second
    # Editing a CSV (new size) invalidates that sequence's cached copy.
    f = case / "descriptors" / "i_one" / "e1.csv"
    arr = np.loadtxt(f, delimiter=",")
    np.savetxt(f, arr[::-1], fmt="%10.5f", delimiter=",")
    third = json.loads(hp(case, "--json", "-").stdout)
    assert third["matching"] != first["matching"]
    no_cache = json.loads(hp(case, "--no-cache", "--json", "-").stdout)
    assert no_cache == third


def test_missing_sequence_folder(case: Path) -> None:
    shutil.rmtree(case / "descriptors" / "v_three")
    one_line_error(hp(case), "v_three", "missing sequence folder", code=3)


def test_missing_csv(case: Path) -> None:
    (case / "descriptors" / "i_two" / "h3.csv").unlink()
    one_line_error(hp(case), "i_two", "h3.csv", code=3)


def test_row_counts_differ(case: Path) -> None:
    f = case / "descriptors" / "v_four" / "t2.csv"
    f.write_text("".join(f.read_text().splitlines(keepends=True)[:-1]))
    one_line_error(hp(case), "t2.csv", "27 rows", "28")


def test_wrong_delimiter_one_column(case: Path) -> None:
    f = case / "descriptors" / "i_one" / "ref.csv"
    np.savetxt(f, np.loadtxt(f, delimiter=","), fmt="%10.5f", delimiter=";")
    one_line_error(hp(case), "ref.csv", "delimiter")


def test_delimiter_option_accepts_other_separators(case: Path) -> None:
    for f in (case / "descriptors").glob("*/*.csv"):
        np.savetxt(f, np.loadtxt(f, delimiter=","), fmt="%10.5f", delimiter=" ")
    res = hp(case, "--delimiter", " ", "--task", "matching")
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_nan_or_inf(case: Path, bad: str) -> None:
    f = case / "descriptors" / "v_three" / "e4.csv"
    lines = f.read_text().splitlines()
    fields = lines[3].split(",")
    fields[2] = bad
    lines[3] = ",".join(fields)
    f.write_text("\n".join(lines) + "\n")
    one_line_error(hp(case), "e4.csv", "line 4")


def test_mixed_dimensions_within_sequence(case: Path) -> None:
    f = case / "descriptors" / "i_one" / "t5.csv"
    np.savetxt(f, np.loadtxt(f, delimiter=",")[:, :-1], fmt="%10.5f", delimiter=",")
    one_line_error(hp(case), "t5.csv", "dimension 15")


def test_mixed_dimensions_across_sequences(case: Path) -> None:
    for f in (case / "descriptors" / "v_four").glob("*.csv"):
        np.savetxt(f, np.loadtxt(f, delimiter=",")[:, :-2], fmt="%10.5f", delimiter=",")
    one_line_error(hp(case), "different descriptor dimensions")


def test_task_index_beyond_n(case: Path) -> None:
    f = case / "tasks" / "verif_neg_intra_split-a.csv"
    lines = f.read_text().splitlines()
    lines[5] = "i_two,0,0,i_two,1,24"
    f.write_text("\n".join(lines) + "\n")
    one_line_error(hp(case), "verif_neg_intra_split-a.csv", "line 6", "24", "i_two")


def test_retrieval_index_beyond_n(case: Path) -> None:
    f = case / "tasks" / "retr_distractors_split-a.csv"
    lines = f.read_text().splitlines()
    lines[2] = "v_three,36"
    f.write_text("\n".join(lines) + "\n")
    one_line_error(hp(case), "retr_distractors_split-a.csv", "line 3")


def test_unknown_split(case: Path) -> None:
    one_line_error(hp(case, "--split", "zz"), "unknown split 'zz'", "known: a")


def test_no_splits_file(case: Path) -> None:
    shutil.rmtree(case / "tasks" / "splits")
    one_line_error(hp(case), "splits.json", code=3)


def test_misaligned_verification_files(case: Path) -> None:
    f = case / "tasks" / "verif_neg_inter_split-a.csv"
    f.write_text("".join(f.read_text().splitlines(keepends=True)[:-3]))
    one_line_error(hp(case), "verif_neg_inter_split-a.csv", "row-aligned")


def test_missing_task_file_is_data_missing(case: Path) -> None:
    (case / "tasks" / "retr_queries_split-a.csv").unlink()
    res = hp(case)
    assert res.exit_code == 3
    assert "retr_queries_split-a.csv" in res.output and "Traceback" not in res.output


def test_descriptor_folder_missing(tmp_path: Path, case: Path) -> None:
    res = run("eval", "hpatches", "-d", str(tmp_path / "nope"), "-t", str(case / "tasks"))
    one_line_error(res, "nope", "does not exist", code=3)


def test_unknown_distance_is_usage_error(case: Path) -> None:
    res = hp(case, "--dist", "cosine")
    assert res.exit_code == 2


def test_npy_tree_equals_csv_tree(case: Path, tmp_path: Path) -> None:
    npy = tmp_path / "npy"
    for f in (case / "descriptors").glob("*/*.csv"):
        (npy / f.parent.name).mkdir(parents=True, exist_ok=True)
        np.save(npy / f.parent.name / (f.stem + ".npy"), np.loadtxt(f, delimiter=",").astype(np.float32))
    a = json.loads(hp(case, "--json", "-").stdout)
    b = json.loads(run("eval", "hpatches", "-d", str(npy), "-t", str(case / "tasks"), "-q", "--json", "-").stdout)
    assert a == b


def _rename_split(case: Path, splits: dict[str, str]) -> None:
    """Give the case's split ``a`` (and its task files) other names; ``splits`` maps new -> old."""
    path = case / "tasks" / "splits" / "splits.json"
    old = json.loads(path.read_text())
    path.write_text(json.dumps({new: {**old[src], "name": new} for new, src in splits.items()}))
    for new, src in splits.items():
        for f in [] if new == src else (case / "tasks").glob(f"*_split-{src}.csv"):
            shutil.copy(f, f.parent / f.name.replace(f"_split-{src}.csv", f"_split-{new}.csv"))


def test_a_single_split_is_used_without_split(case: Path) -> None:
    """Issue 21: ``make-benchmark`` writes only split ``full``, but ``eval hpatches`` defaulted to ``a``."""
    _rename_split(case, {"full": "a"})
    res = run("eval", "hpatches", "-d", str(case / "descriptors"), "-t", str(case / "tasks"), "--json", "-")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["split"] == "full"
    assert f"split full: the only split in {case / 'tasks' / 'splits' / 'splits.json'}" in res.stderr


def test_split_a_is_the_default_among_several(case: Path) -> None:
    _rename_split(case, {"a": "a", "view": "a"})
    res = run("eval", "hpatches", "-d", str(case / "descriptors"), "-t", str(case / "tasks"), "--json", "-")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["split"] == "a"
    assert "split a: the default;" in res.stderr and "also has view" in res.stderr


def test_several_splits_without_a_need_split(case: Path) -> None:
    _rename_split(case, {"full": "a", "view": "a"})
    res = hp(case)
    one_line_error(res, "several splits (full, view): choose one with --split", "splits.json")
    assert hp(case, "--split", "view").exit_code == 0
