"""End to end through the Typer app (CliRunner): index, query, info, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from clirun import invoke, json_lines, run_ok
from testdata import cpu_config, make_images, shared_images_or_skip, write_tiny_model

from retrieval.index import exact_search
from retrieval.storage.store import IndexStore


def index_ok(*args: object) -> dict:
    return json_lines("index", *args, "--quiet", "--json")[-1]


def query_json(*args: object) -> dict:
    return json.loads(run_ok("query", *args, "--json"))


def stored(
    directory: Path, collection: str = "images"
) -> tuple[np.ndarray, np.ndarray, IndexStore]:
    store = IndexStore.open(directory, readonly=True)
    ids, vectors = store.catalog.get_vectors(collection, store.identity.dim)
    return ids, vectors, store


def test_every_indexed_image_finds_itself_first(tiny_model: str, image_folder: Path) -> None:
    report = index_ok(image_folder, "--model", tiny_model)
    assert report["indexed"] == report["embedded"] == 12
    for path in sorted(image_folder.iterdir()):
        hits = query_json("--image", path, "-k", "3")["results"]
        assert hits[0]["path"] == str(path.absolute())
        assert hits[0]["score"] == pytest.approx(1.0, abs=2e-3)
        assert [h["rank"] for h in hits] == [1, 2, 3]


def test_text_query_equals_brute_force_over_stored_vectors(
    tiny_model: str, image_folder: Path, tmp_path: Path
) -> None:
    index_ok(image_folder, "--model", tiny_model)
    from retrieval.compose import load_embedder
    from retrieval.types import ModelSpec

    ids, vectors, store = stored(tmp_path / "indexes" / "default")
    embedder = load_embedder(ModelSpec(tiny_model, None), cpu_config())
    for text in ["a cat on a sofa", "red shoes", "x"]:
        result = query_json(text, "-k", "5")
        query = embedder.encode_texts([text])
        _, want = exact_search(vectors, ids, query, 5)
        got = [store.catalog.get_item(h["id"]).id for h in result["results"]]
        assert got == want[0].tolist()
        assert result["query"]["text"] == text


def test_embeddings_equal_open_clip_reference(
    tiny_model_dir: Path, tiny_model: str, tmp_path: Path
) -> None:
    import open_clip
    import torch
    from PIL import Image

    folder = tmp_path / "real"
    paths = shared_images_or_skip(24)
    folder.mkdir()
    for path in paths:
        (folder / path.name).symlink_to(path)
    # --decode full: every pixel decoded, as open_clip's reference does; the default scaled
    # decoding is held to this path by tests/test_scaled_decode.py (cosine >= 0.995).
    report = index_ok(folder, "--model", tiny_model, "--batch-size", "5", "--decode", "full")
    assert report["embedded"] == len(paths)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_model_dir}")
    model.eval()
    store = IndexStore.open(tmp_path / "indexes" / "default", readonly=True)
    by_path = {item.path: item.id for item in store.catalog.iter_items("images")}
    for path in paths:
        with torch.no_grad(), Image.open(path) as image:
            ref = model.encode_image(preprocess(image.convert("RGB")).unsqueeze(0), normalize=True)[
                0
            ]
        ours = store.catalog.get_vectors_by_id(
            [by_path[str(folder / path.name)]], store.identity.dim
        )[0]
        # Stored as float16: agreement to ~1e-3 is the storage precision, not a model difference.
        np.testing.assert_allclose(ours, ref.numpy(), atol=2e-3)


def test_real_images_find_themselves(tiny_model: str, tmp_path: Path) -> None:
    paths = shared_images_or_skip(40)
    folder = tmp_path / "real"
    folder.mkdir()
    for path in paths:
        (folder / path.name).symlink_to(path)
    index_ok(folder, "--model", tiny_model)
    for path in paths[::7]:
        hits = query_json("--image", path, "-k", "1")["results"]
        assert Path(hits[0]["path"]).name == path.name


def test_incremental_add_modify_delete_rename(
    tiny_model: str, image_folder: Path, tmp_path: Path
) -> None:
    first = index_ok(image_folder, "--model", tiny_model)
    assert first["embedded"] == 12
    again = index_ok(image_folder)
    assert (again["embedded"], again["indexed"], again["unchanged"]) == (0, 0, 12)

    make_images(tmp_path / "extra", 1, seed=99)
    (tmp_path / "extra" / "img_000.png").rename(image_folder / "new.png")
    (image_folder / "img_001.png").unlink()
    (image_folder / "img_002.png").rename(image_folder / "renamed.png")
    make_images(tmp_path / "mod", 1, seed=7)
    (tmp_path / "mod" / "img_000.png").replace(image_folder / "img_003.png")
    report = index_ok(image_folder)
    assert report["embedded"] == 2  # new.png and the modified img_003.png
    assert report["reused"] == 1  # renamed.png reuses img_002's vector
    assert report["removed"] == 2  # img_001 deleted, img_002 renamed away
    assert report["unchanged"] == 9

    ids, vectors, store = stored(tmp_path / "indexes" / "default")
    paths = {Path(item.path).name for item in store.catalog.iter_items("images")}
    assert paths == {p.name for p in image_folder.iterdir()}
    assert len(ids) == 12
    hits = query_json("--image", image_folder / "img_003.png", "-k", "1")["results"]
    assert Path(hits[0]["path"]).name == "img_003.png"
    assert hits[0]["score"] == pytest.approx(1.0, abs=2e-3)


def test_unchanged_rerun_never_loads_the_model(
    tiny_model: str, image_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index_ok(image_folder, "--model", tiny_model)
    import retrieval.compose

    calls: list[object] = []
    real = retrieval.compose.load_embedder
    monkeypatch.setattr(
        retrieval.compose, "load_embedder", lambda *a, **k: calls.append(a) or real(*a, **k)
    )
    report = index_ok(image_folder)
    assert report["embedded"] == 0
    assert calls == []


def test_texts_enable_image_to_text_and_text_to_text(
    tiny_model: str, image_folder: Path, tmp_path: Path
) -> None:
    captions = tmp_path / "captions.csv"
    captions.write_text("image,caption\na.jpg,a photo of a cat\nb.jpg,a red shoe\nc.jpg,a tench\n")
    report = index_ok(image_folder, "--model", tiny_model, "--texts", captions)
    assert report["texts_indexed"] == 3
    hits = query_json("a red shoe", "--target", "texts", "-k", "3")["results"]
    assert hits[0]["text"] == "a red shoe"
    assert "path" not in hits[0]
    hits = query_json("--image", image_folder / "img_000.png", "--target", "texts", "-k", "2")[
        "results"
    ]
    assert {h["text"] for h in hits} <= {"a photo of a cat", "a red shoe", "a tench"}
    assert len(hits) == 2

    lines = tmp_path / "titles.txt"
    lines.write_text("a red shoe\nblue jeans\n")
    report = index_ok(image_folder, "--texts", lines)
    assert (report["texts_indexed"], report["texts_removed"]) == (1, 2)
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"text": "blue jeans"}\n')
    assert index_ok(image_folder, "--texts", jsonl)["texts_removed"] == 1


def test_query_table_output(tiny_model: str, image_folder: Path) -> None:
    index_ok(image_folder, "--model", tiny_model)
    result = invoke("query", "anything", "-k", "2")
    assert result.exit_code == 0
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["rank", "score", "path"]
    assert len(lines) == 3 and lines[1].split()[0] == "1"


def test_info_reports_model_and_counts(tiny_model: str, image_folder: Path) -> None:
    index_ok(image_folder, "--model", tiny_model)
    result = invoke("info", "--json")
    assert result.exit_code == 0, result.output
    details = json.loads(result.stdout)
    assert details["model"]["name"] == tiny_model
    assert details["model"]["dim"] == 32
    assert details["collections"]["images"]["count"] == 12
    assert details["size_bytes"] > 0
    text = invoke("info").stdout
    assert "images:" in text and "12" in text
    lines = dict(line.split(":", 1) for line in text.splitlines())
    assert lines["images"].strip() == "12 (Flat; type auto)"
    assert lines["texts"].strip() == "0 (empty; type auto)"
    assert lines["dim"].strip() == "32"


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "HNSW16,Flat"])
def test_index_type_option(tiny_model: str, image_folder: Path, index_type: str) -> None:
    index_ok(image_folder, "--model", tiny_model, "--index-type", index_type)
    details = json.loads(invoke("info", "--json").stdout)
    assert details["collections"]["images"]["index_type"] == index_type
    hits = query_json("--image", image_folder / "img_004.png", "-k", "1")["results"]
    assert Path(hits[0]["path"]).name == "img_004.png"


def test_named_indexes_live_side_by_side(
    tiny_model: str, image_folder: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    make_images(other, 3, seed=5)
    index_ok(image_folder, "--model", tiny_model, "--index", tmp_path / "a")
    index_ok(other, "--model", tiny_model, "--index", tmp_path / "b")
    assert len(query_json("x", "-k", "50", "--index", tmp_path / "a")["results"]) == 12
    assert len(query_json("x", "-k", "50", "--index", tmp_path / "b")["results"]) == 3


# -- errors -------------------------------------------------------------------------------------


def test_query_without_index_says_how_to_create_one() -> None:
    result = invoke("query", "a cat")
    assert result.exit_code == 1
    assert "mmsearch index" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["   "], "empty"),
        (["a", "-k", "0"], "k must be"),
        (["a", "-k", "100000"], "k must be"),
        (["--image", "missing.jpg"], "does not exist"),
        (["a", "--target", "videos"], "--target"),
        ([], "either"),
    ],
)
def test_bad_queries_get_clear_errors(
    tiny_model: str, image_folder: Path, args: list[str], needle: str
) -> None:
    index_ok(image_folder, "--model", tiny_model)
    result = invoke("query", *args)
    assert result.exit_code == 2
    assert needle in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--index-type", "hnws"], "error: unknown --index-type 'hnws' for dim 32: use one of"),
        (["--device", "gpu"], "error: unknown --device 'gpu'; use auto, cpu, cuda or cuda:N"),
        (["--precision", "fp8"], "error: unknown --precision 'fp8'; use one of auto, fp32,"),
    ],
)
def test_bad_index_options_fail_before_any_work(
    tiny_model: str, image_folder: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    directory = tmp_path / "indexes" / "default"
    result = invoke("index", image_folder, "--model", tiny_model, *args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(message)
    assert not directory.exists()  # nothing written, nothing embedded
    # On an existing index too: new files are not embedded, the index stays as it was.
    index_ok(image_folder, "--model", tiny_model)
    make_images(image_folder / "more", 3, seed=9)
    result = invoke("index", image_folder, *args)
    assert result.exit_code == 2 and result.stderr.startswith(message)
    with IndexStore.open(directory, readonly=True) as store:
        assert store.catalog.count("images") == 12
        assert len(store.catalog.get_vectors("images", 32)[0]) == 12


def test_offline_pretrained_tag_fails_fast_with_help(image_folder: Path) -> None:
    result = invoke(
        "index", image_folder, "--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k"
    )
    assert result.exit_code == 2
    assert "ViT-B-32" in result.stderr and "laion2b_s34b_b79k" in result.stderr
    assert "local-dir:" in result.stderr and "HF_HOME" in result.stderr
    assert "Traceback" not in result.output
    assert not (Path("indexes") / "default" / "manifest.json").exists()


@pytest.mark.parametrize(
    ("model", "pretrained", "needle"),
    [
        ("No-Such-Model", "x", "unknown model"),
        ("ViT-B-32", "no_such_tag", "Known tags"),
        ("hf-hub:someone/some-clip", None, "not cached"),
        ("local-dir:/nonexistent/folder", None, "open_clip_config.json"),
    ],
)
def test_model_errors_are_actionable(
    image_folder: Path, model: str, pretrained: str | None, needle: str
) -> None:
    args = ["index", image_folder, "--model", model] + (
        ["--pretrained", pretrained] if pretrained else []
    )
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert needle in result.stderr
    assert "Traceback" not in result.output


def test_local_dir_without_weights_is_refused(tmp_path: Path, image_folder: Path) -> None:
    folder = write_tiny_model(tmp_path / "noweights")
    (folder / "open_clip_model.safetensors").unlink()
    result = invoke("index", image_folder, "--model", f"local-dir:{folder}")
    assert result.exit_code == 2
    assert "no weights file" in result.stderr


def test_other_model_is_refused_naming_both(
    tiny_model: str, image_folder: Path, tmp_path: Path
) -> None:
    index_ok(image_folder, "--model", tiny_model)
    other = write_tiny_model(tmp_path / "other-model", seed=1)
    result = invoke("index", image_folder, "--model", f"local-dir:{other}")
    assert result.exit_code == 2
    assert tiny_model in result.stderr and str(other) in result.stderr


def test_missing_index_path_and_texts_file(
    tiny_model: str, tmp_path: Path, image_folder: Path
) -> None:
    result = invoke("index", tmp_path / "nope", "--model", tiny_model)
    assert result.exit_code == 2 and "does not exist" in result.stderr
    result = invoke("index", image_folder, "--model", tiny_model, "--texts", tmp_path / "none.csv")
    assert result.exit_code == 2 and "does not exist" in result.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    result = invoke("index", image_folder, "--model", tiny_model, "--texts", bad)
    assert result.exit_code == 2 and "caption" in result.stderr
