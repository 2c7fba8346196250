"""`mmsearch eval`: metrics against hand-computed answers, pairs parsing, an end-to-end CLI run
with the tiny model (the user's index untouched), and the HTML report in a real browser."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from clirun import invoke
from testdata import make_images

from retrieval.errors import InputFileError, InvalidQueryError
from retrieval.eval.pairs import (
    PERTURBATIONS,
    exact_ranks,
    load_pairs,
    overlap_at_k,
    parse_ks,
    ranks_from_results,
    recall_metrics,
)

S = np.float32(1 / np.sqrt(2))
# Three orthogonal images and five captions whose ranks are worked out by hand below.
IMAGES = np.eye(3, dtype=np.float32)
CAPTIONS = np.array(
    [
        [1, 0, 0],  # c0 -> I0: exact match, rank 1
        [0.6, 0.8, 0],  # c1 -> I1: I1 0.8 beats I0 0.6, rank 1
        [0.8, 0, 0.6],  # c2 -> I2: I0 0.8 beats I2 0.6, rank 2
        [S, S, 0],  # c3 -> I1: I0 ties I1 exactly; worst case puts I0 first, rank 2
        [0, 1, 0],  # c4 -> I2: I1 scores 1, I0 ties I2 at 0, rank 3
    ],
    dtype=np.float32,
)
CAPTION_IMAGE = [0, 1, 2, 1, 2]


def test_text_to_image_ranks_break_ties_against_the_query() -> None:
    ranks = exact_ranks(CAPTIONS, IMAGES, [np.array([i]) for i in CAPTION_IMAGE])
    assert ranks.tolist() == [1, 1, 2, 2, 3]
    metrics = recall_metrics(ranks, [1, 2, 5])
    assert metrics == {
        "queries": 5,
        "recall@1": pytest.approx(0.4),
        "recall@2": pytest.approx(0.8),
        "recall@5": 1.0,
        "median_rank": 2.0,
        "mean_rank": pytest.approx(1.8),
    }


def test_image_to_text_counts_any_of_the_images_captions() -> None:
    # I0: c0 scores 1, rank 1. I1: best own caption c1 (0.8), only c4 (1.0) above it, rank 2.
    # I2: best own caption c2 (0.6), every other caption scores 0, rank 1.
    truth = [np.array([0]), np.array([1, 3]), np.array([2, 4])]
    ranks = exact_ranks(IMAGES, CAPTIONS, truth)
    assert ranks.tolist() == [1, 2, 1]
    metrics = recall_metrics(ranks, [1, 5])
    assert metrics["recall@1"] == pytest.approx(2 / 3)
    assert metrics["median_rank"] == 1.0 and metrics["mean_rank"] == pytest.approx(4 / 3)


def test_ranks_from_result_lists_are_worst_case_and_cap_misses() -> None:
    scores = np.array([[0.9, 0.9, 0.5], [0.8, 0.7, 0.6], [0.9, 0.8, -np.inf]], dtype=np.float32)
    ids = np.array([[4, 7, 1], [2, 3, 5], [1, 2, -1]])
    # q0: its answer 4 ties with wrong 7 -> rank 2; q1: 5 is third -> 3; q2: 9 absent -> 4.
    ranks = ranks_from_results(scores, ids, [np.array([4]), np.array([5]), np.array([9])])
    assert ranks.tolist() == [2, 3, 4]


def test_overlap_counts_equal_scoring_duplicates_as_found() -> None:
    items = np.array([[1, 0], [1, 0], [0, 1], [S, S]], dtype=np.float32)
    query = np.array([[1, 0]], dtype=np.float32)
    # Exact top-2 is {0, 1} (both score 1); returning {1, 0} or {0, 1} is perfect, {0, 3} half.
    assert overlap_at_k(query, items, np.array([[1, 0]]), 2) == 1.0
    assert overlap_at_k(query, items, np.array([[0, 3]]), 2) == 0.5


def test_parse_ks_sorts_and_rejects_nonsense() -> None:
    assert parse_ks("10,1,5,5") == [1, 5, 10]
    for bad in ("", "0,1", "a"):
        with pytest.raises(InvalidQueryError, match="-k takes"):
            parse_ks(bad)


def test_pairs_csv_resolves_relative_and_absolute_paths_and_shares_images(tmp_path: Path) -> None:
    a, b = make_images(tmp_path / "pics", 2)
    pairs_file = tmp_path / "pairs.csv"
    pairs_file.write_text(
        f"image,label,caption\npics/{a.name},x,a red thing\n{b},y,blue\npics/{a.name},z,crimson\n"
    )
    pairs = load_pairs(pairs_file)
    assert pairs.images == [a.absolute(), b.absolute()]
    assert pairs.captions == ["a red thing", "blue", "crimson"]
    assert pairs.caption_image.tolist() == [0, 1, 0]
    assert [c.tolist() for c in pairs.image_captions] == [[0, 2], [1]]


def test_pairs_jsonl_takes_a_caption_or_a_captions_list(tmp_path: Path) -> None:
    (a,) = make_images(tmp_path / "pics", 1)
    pairs_file = tmp_path / "sub" / "pairs.jsonl"
    pairs_file.parent.mkdir()
    rows = [
        {"image": f"../pics/{a.name}", "captions": ["one", "two"]},
        {"image": str(a), "caption": "three"},
    ]
    pairs_file.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    pairs = load_pairs(pairs_file)
    assert pairs.images == [a.absolute()]
    assert pairs.captions == ["one", "two", "three"]


def test_missing_images_are_listed_with_their_lines(tmp_path: Path) -> None:
    (tmp_path / "pairs.csv").write_text("image,caption\nnope.jpg,x\ngone/also.png,y\n")
    with pytest.raises(InputFileError, match=r"2 image\(s\).*pairs.csv:2: .*nope.jpg.*pairs.csv:3"):
        load_pairs(tmp_path / "pairs.csv")


def test_pairs_without_the_needed_columns_say_which_exist(tmp_path: Path) -> None:
    (tmp_path / "pairs.csv").write_text("file_name,words\na.jpg,x\n")
    with pytest.raises(InputFileError, match="columns are: file_name, words"):
        load_pairs(tmp_path / "pairs.csv")


def test_every_perturbation_keeps_an_rgb_image() -> None:
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), np.uint8))
    sizes = {name: f(image).size for name, f in PERTURBATIONS.items()}
    assert sizes["half_resolution"] == (30, 20) and sizes["center_crop_80"] == (48, 32)
    assert all(f(image).mode == "RGB" for f in PERTURBATIONS.values())


# -- end to end -------------------------------------------------------------------------------
def _snapshot(directory: Path) -> dict[str, tuple[int, int, str]]:
    """Size, mtime and sha256 of each file of the index. SQLite's -wal/-shm sidecars are left
    out: any read-only reader (`mmsearch query` too) makes SQLite create them, empty of data."""
    import hashlib

    return {
        p.name: (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in directory.iterdir()
        if not p.name.endswith(("-wal", "-shm"))
    }


@pytest.fixture
def eval_setup(tiny_model: str, image_folder: Path, tmp_path: Path) -> tuple[Path, Path]:
    """An index of 12 photos, and pairs over 4 of them, a byte-identical copy of a fifth (found
    by hash) and 2 new images: 7 images, 2 captions each."""
    result = invoke("index", str(image_folder), "--model", tiny_model, "-q")
    assert result.exit_code == 0, result.output
    indexed = sorted(image_folder.iterdir())
    extra = tmp_path / "extra"
    new = make_images(extra, 2, seed=7)
    copy = extra / "copy.png"
    shutil.copy(indexed[4], copy)
    lines = ["image,caption"]
    for number, path in enumerate([*indexed[:4], copy, *new]):
        lines += [f"{path},photo number {number}", f"{path},noise {number % 2}"]
    pairs_file = tmp_path / "pairs.csv"
    pairs_file.write_text("\n".join(lines) + "\n")
    return pairs_file, tmp_path / "indexes" / "default"


def test_eval_json_reports_metrics_in_range_and_leaves_the_index_untouched(
    eval_setup: tuple[Path, Path],
) -> None:
    pairs_file, index_dir = eval_setup
    before = _snapshot(index_dir)
    result = invoke("eval", str(pairs_file), "--json", "-q", "--robustness")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["pairs"], out["images"], out["captions"]) == (14, 7, 14)
    assert out["vectors"] == {"reused": 5, "embedded": 2}
    assert "worst case" in out["ties"] and out["search"] == "exact"
    for direction in ("text_to_image", "image_to_text"):
        section = out[direction]
        assert 0 <= section["recall@1"] <= section["recall@5"] <= section["recall@10"] <= 1
        assert section["recall@10"] == 1.0  # 7 images: everything is within 10
        assert 1 <= section["median_rank"] <= 14 and 1 <= section["mean_rank"] <= 14
        assert out["index"][direction]["recall@10_vs_exact"] == 1.0  # Flat at this size
    eff = out["efficiency"]
    for kind in ("text_query", "image_query_stored_vector", "image_query_from_file"):
        assert 0 < eff[kind]["p50_ms"] <= eff[kind]["p99_ms"] and eff[kind]["qps"] > 0
    assert eff["index_memory_bytes"] > 0 and eff["user_index_disk_bytes"] > 0
    robust = out["robustness"]
    assert robust["images"] == 7 and len(robust) == 7
    assert all(0 <= v["recall@1"] <= 1 for k, v in robust.items() if k != "images")
    assert _snapshot(index_dir) == before
    assert all(p.stat().st_size == 0 for p in index_dir.glob("*-wal"))  # nothing was written


def test_eval_table_and_report_without_an_index(
    tiny_model: str, eval_setup: tuple[Path, Path], tmp_path: Path
) -> None:
    pairs_file, _ = eval_setup
    empty = tmp_path / "no-index"
    report = tmp_path / "report.html"
    args = ["eval", str(pairs_file), "--index", str(empty), "--model", tiny_model, "-q"]
    result = invoke(*args, "--report", str(report), "-k", "1,3")
    assert result.exit_code == 0, result.output
    assert "worst case" in result.stdout and "R@3" in result.stdout
    assert not empty.exists()  # no index created
    page = report.read_text()
    assert page.count('src="data:image/png;base64,') == 2 and "<table>" in page


def test_eval_reports_missing_images_as_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "pairs.csv").write_text("image,caption\nmissing.jpg,x\n")
    result = invoke("eval", str(tmp_path / "pairs.csv"))
    assert result.exit_code == 2
    assert "missing.jpg" in result.output and "do not exist" in result.output
