"""Composed queries, "more like this", min-score cutoffs with paging and collapsed duplicates:
the service, the CLI and the HTTP API against brute-force numpy search over the stored vectors."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from clirun import invoke
from fastapi.testclient import TestClient
from httpkit import cli_query, index_photos, open_app
from testdata import cpu_config

from retrieval.compose import open_for_search
from retrieval.errors import InvalidQueryError, ItemNotFoundError
from retrieval.index import exact_search
from retrieval.search.queries import QueryPart, collapse, combine, parse_weight
from retrieval.search.service import SearchRequest, SearchService
from retrieval.types import IMAGES, TEXTS


@pytest.fixture(scope="module")
def photo_index(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return index_photos(tiny_model, tmp_path_factory.mktemp("composed"))


@pytest.fixture(scope="module")
def service(photo_index: Path) -> Iterator[SearchService]:
    with open_for_search(photo_index, cpu_config()) as opened:
        yield opened


@pytest.fixture(scope="module")
def client(photo_index: Path) -> Iterator[TestClient]:
    with open_app(photo_index) as (app, _), TestClient(app) as test_client:
        yield test_client


def photo(index: Path, number: int) -> Path:
    return index.parent / "photos" / f"img_{number:03d}.png"


def stored(service: SearchService, collection: str = IMAGES) -> tuple[np.ndarray, np.ndarray]:
    return service.store.catalog.get_vectors(collection, service.store.identity.dim)


def unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    return vector / np.linalg.norm(vector)


def brute_force(service: SearchService, query: np.ndarray, collection: str = IMAGES) -> list:
    """Every item of `collection` as (id, score), best first: the exact numpy oracle."""
    ids, vectors = stored(service, collection)
    scores, found = exact_search(vectors, ids, query.reshape(1, -1).astype(np.float32), len(ids))
    return list(zip(found[0].tolist(), scores[0].tolist(), strict=True))


def hits_of(result: object) -> list[tuple[int, float]]:
    return [(hit.id, hit.score) for hit in result.hits]  # type: ignore[attr-defined]


def assert_same_ranking(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> None:
    assert [i for i, _ in got] == [i for i, _ in want]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)


# -- composition -------------------------------------------------------------------------------
def test_composed_vector_is_the_normalised_weighted_sum_and_results_equal_brute_force(
    service: SearchService, photo_index: Path
) -> None:
    image = photo(photo_index, 4)
    text_ids, _ = stored(service, TEXTS)
    item = int(text_ids[1])
    parts = (
        QueryPart(text="a red shoe"),
        QueryPart(image=image, weight=0.5),
        QueryPart(text="a blue hat", weight=-0.5),
        QueryPart(item=item, weight=0.25),
    )
    # The oracle's vector, built by hand from independently computed part vectors.
    texts = service.embed_texts(["a red shoe", "a blue hat"])
    picture = service.embed_image(image)[0]
    item_vector = service.store.catalog.get_vectors_by_id([item], service.store.identity.dim)[0]
    want_vector = unit(
        unit(texts[0]) + 0.5 * unit(picture) - 0.5 * unit(texts[1]) + 0.25 * unit(item_vector)
    )
    got_vector = service.composed_vector(parts)
    np.testing.assert_allclose(got_vector, want_vector, atol=1e-6)
    result = service.search(SearchRequest(parts=parts, target=IMAGES, k=12))
    assert_same_ranking(hits_of(result), brute_force(service, want_vector))
    assert result.query["parts"][1] == {"image": str(image.absolute()), "weight": 0.5}
    assert not result.has_more


def test_weights_and_negative_parts_change_the_ranking_as_brute_force_says(
    service: SearchService,
) -> None:
    rankings = []
    for weight in (1.0, 0.2, -0.2, -1.0):
        parts = (QueryPart(text="a mountain lake"), QueryPart(text="a cat", weight=weight))
        want = brute_force(service, service.composed_vector(parts))
        got = hits_of(service.search(SearchRequest(parts=parts, target=IMAGES, k=12)))
        assert_same_ranking(got, want)
        rankings.append([i for i, _ in got])
    # The weight of the second part matters: not every weight gives the same order.
    assert len({tuple(r) for r in rankings}) > 1


def test_cancelling_or_all_zero_parts_are_refused(service: SearchService) -> None:
    for parts in [
        (QueryPart(text="red"), QueryPart(text="red", weight=-1.0)),
        (QueryPart(text="red", weight=0.0),),
    ]:
        with pytest.raises(InvalidQueryError, match="cancel out"):
            service.search(SearchRequest(parts=parts))
    with pytest.raises(InvalidQueryError, match="exactly one"):
        service.search(SearchRequest(parts=(QueryPart(text="a", item=1),)))


def test_unknown_item_parts_are_a_clear_error(service: SearchService) -> None:
    with pytest.raises(ItemNotFoundError, match="no item with id 99999"):
        service.search(SearchRequest(parts=(QueryPart(item=99999),)))


def test_parse_weight_suffixes() -> None:
    assert parse_weight("red dress@0.5") == ("red dress", 0.5)
    assert parse_weight("stripes@0.5", sign=-1.0) == ("stripes", -0.5)
    assert parse_weight("me@home") == ("me@home", 1.0)
    assert parse_weight("plain", sign=-1.0) == ("plain", -1.0)
    with pytest.raises(InvalidQueryError):
        parse_weight("x@inf")


def test_combine_and_collapse_by_hand() -> None:
    vectors = np.array([[2.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(combine(vectors, [1.0, 1.0]), [2**-0.5, 2**-0.5], atol=1e-7)
    np.testing.assert_allclose(combine(vectors, [1.0, -3.0]), unit(np.array([1.0, -3.0])))
    ranked = np.array([[1.0, 0.0], [0.0, 1.0], [0.99, 0.1], [0.1, 0.99], [-1.0, 0.0]])
    assert collapse(ranked, 0.95) == [(0, [2]), (1, [3]), (4, [])]


# -- more like this ---------------------------------------------------------------------------
def test_like_uses_the_stored_vector_and_leaves_the_item_out(service: SearchService) -> None:
    ids, vectors = stored(service)
    item = int(ids[5])
    want = [pair for pair in brute_force(service, unit(vectors[5])) if pair[0] != item]
    result = service.search(SearchRequest(like=item, target=IMAGES, k=20))
    assert_same_ranking(hits_of(result), want)
    assert result.query["like"] == item


def test_like_runs_no_model(photo_index: Path) -> None:
    def no_model() -> object:
        raise AssertionError("a like query must not load the model")

    with open_for_search(photo_index, cpu_config()) as opened:
        plain = SearchService(opened.store, no_model)
        ids, _ = stored(plain)
        assert len(plain.search(SearchRequest(like=int(ids[0]), k=3)).hits) == 3


# -- cutoffs and paging -----------------------------------------------------------------------
@pytest.mark.parametrize("offset", [0, 2, 5])
@pytest.mark.parametrize("k", [1, 3, 12])
def test_min_score_and_offset_page_the_brute_force_list(
    service: SearchService, offset: int, k: int
) -> None:
    vector = service.embed_texts(["a green shirt"])[0]
    full = brute_force(service, vector)
    scores = sorted({round(s, 4) for _, s in full})
    for min_score in (None, scores[len(scores) // 2], scores[-1] + 0.01):
        kept = [pair for pair in full if min_score is None or pair[1] >= min_score]
        result = service.search(
            SearchRequest(text="a green shirt", target=IMAGES, k=k, offset=offset,
                          min_score=min_score)
        )  # fmt: skip
        assert_same_ranking(hits_of(result), kept[offset : offset + k])
        assert result.has_more == (len(kept) > offset + k)
        assert [hit.rank for hit in result.hits] == list(
            range(offset + 1, offset + 1 + len(result.hits))
        )


# -- collapsing -------------------------------------------------------------------------------
def test_collapse_folds_near_duplicates_into_the_better_hit(service: SearchService) -> None:
    vector = service.embed_texts(["a cat on a sofa"])[0]
    full = brute_force(service, vector)
    ids, vectors = stored(service)
    by_id = dict(zip(ids.tolist(), vectors, strict=True))
    # The tiny random model scores these noise images 0.9-0.99 against each other, so the
    # threshold is taken from the data: the median pairwise cosine splits them into groups.
    ranked = np.array([unit(by_id[i]) for i, _ in full])
    pairwise = ranked @ ranked.T
    threshold = float(np.median(pairwise[np.triu_indices(len(ranked), 1)]))
    want_groups = collapse(ranked, threshold)
    assert 1 < len(want_groups) < len(full)
    result = service.search(
        SearchRequest(parts=(QueryPart(text="a cat on a sofa"),), target=IMAGES, k=12,
                      collapse=True, duplicate_threshold=threshold)
    )  # fmt: skip
    got = [(hit.id, list(hit.duplicates or ())) for hit in result.hits]
    assert got == [(full[row][0], [full[f][0] for f in folded]) for row, folded in want_groups]
    for hit in result.hits:  # every folded item is at least `threshold` like its hit
        for other in hit.duplicates or ():
            assert unit(by_id[hit.id]) @ unit(by_id[other]) >= threshold - 1e-6


# -- the CLI ----------------------------------------------------------------------------------
def test_cli_composed_query_with_weights_equals_the_service(
    service: SearchService, photo_index: Path
) -> None:
    image = photo(photo_index, 2)
    text_ids, _ = stored(service, TEXTS)
    printed = cli_query(
        photo_index, "a red shoe@0.7", "--image", f"{image}@0.5", "--minus", "a blue hat@0.3",
        "--minus-image", photo(photo_index, 7), "--item", str(text_ids[0]), "-k", "12",
    )  # fmt: skip
    parts = (
        QueryPart(text="a red shoe", weight=0.7),
        QueryPart(text="a blue hat", weight=-0.3),
        QueryPart(image=image, weight=0.5),
        QueryPart(image=photo(photo_index, 7), weight=-1.0),
        QueryPart(item=int(text_ids[0])),
    )
    want = brute_force(service, service.composed_vector(parts))
    assert_same_ranking([(h["id"], h["score"]) for h in printed["results"]], want)
    assert [p["weight"] for p in printed["query"]["parts"]] == [0.7, -0.3, 0.5, -1.0, 1.0]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["red", "--minus", "red"], "cancel out"),
        (["--like", "99999"], "no item with id 99999"),
        (["--item", "abc"], "--item takes an item id"),
        (["--minus-image", "missing.jpg"], "does not exist"),
    ],
)
def test_cli_composed_query_errors(photo_index: Path, args: list[str], needle: str) -> None:
    result = invoke("query", *args, "--index", photo_index)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and needle in result.stderr
    assert "Traceback" not in result.output


def test_cli_like_min_score_offset_and_collapse(service: SearchService, photo_index: Path) -> None:
    ids, vectors = stored(service)
    item = int(ids[3])
    full = [pair for pair in brute_force(service, unit(vectors[3])) if pair[0] != item]
    cut = full[4][1]
    printed = cli_query(photo_index, "--like", item, "--min-score", cut, "--offset", 2, "-k", 2)
    kept = [pair for pair in full if pair[1] >= cut]
    assert [h["id"] for h in printed["results"]] == [i for i, _ in kept[2:4]]
    assert printed["has_more"] == (len(kept) > 4)
    collapsed = cli_query(photo_index, "--like", item, "--collapse-duplicates", "-k", 12)
    seen = [h["id"] for h in collapsed["results"]]
    seen += [d for h in collapsed["results"] for d in h["duplicates"]]
    assert sorted(seen) == sorted(i for i, _ in full)  # folded, never lost


# -- HTTP -------------------------------------------------------------------------------------
def test_http_parts_equal_the_service(
    client: TestClient, service: SearchService, photo_index: Path
) -> None:
    image = photo(photo_index, 9)
    text_ids, _ = stored(service, TEXTS)
    body = {
        "parts": [
            {"text": "a red shoe"},
            {"image_b64": base64.b64encode(image.read_bytes()).decode(), "weight": 0.5},
            {"text": "stripes", "weight": -0.5},
            {"item": int(text_ids[2])},
        ],
        "k": 12,
        "target": "images",
    }
    answer = client.post("/search", json=body)
    assert answer.status_code == 200, answer.text
    parts = (
        QueryPart(text="a red shoe"),
        QueryPart(image=image, weight=0.5),
        QueryPart(text="stripes", weight=-0.5),
        QueryPart(item=int(text_ids[2])),
    )
    want = brute_force(service, service.composed_vector(parts))
    assert_same_ranking([(h["id"], h["score"]) for h in answer.json()["results"]], want)
    assert answer.json()["query"]["parts"][1] == {"image": "base64", "weight": 0.5}
    assert answer.json()["has_more"] is False


def test_http_errors_for_composed_queries(client: TestClient) -> None:
    cancel = client.post("/search", json={"parts": [{"text": "a"}, {"text": "a", "weight": -1}]})
    assert cancel.status_code == 422 and "cancel out" in cancel.json()["message"]
    unknown = client.post("/search", json={"parts": [{"item": 99999}]})
    assert unknown.status_code == 404 and "99999" in unknown.json()["message"]
    two = client.post("/search", json={"parts": [{"text": "a", "item": 1}]})
    assert two.status_code == 422 and "exactly one" in two.json()["message"]
    assert client.get("/items/99999/similar").status_code == 404


def test_http_similar_min_score_and_collapse_equal_the_cli(
    client: TestClient, service: SearchService, photo_index: Path
) -> None:
    item = int(stored(service)[0][6])
    for params, args in [
        ({"k": 4}, ["-k", 4]),
        ({"k": 3, "offset": 2, "min_score": -0.5}, ["-k", 3, "--offset", 2, "--min-score", -0.5]),
        ({"k": 5, "collapse": "true"}, ["-k", 5, "--collapse-duplicates"]),
    ]:
        answer = client.get(f"/items/{item}/similar", params=params)
        assert answer.status_code == 200, answer.text
        want = cli_query(photo_index, "--like", item, *args)
        assert answer.json()["results"] == want["results"]
        assert answer.json()["has_more"] == want["has_more"]
    searched = client.get("/search", params={"q": "a lake", "min_score": 1.0}).json()
    assert searched["results"] == [] and searched["has_more"] is False


def test_openapi_documents_parts_and_paging(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    assert {"text", "image_b64", "item", "weight"} <= set(components["PartIn"]["properties"])
    assert "has_more" in components["SearchOut"]["required"]
    assert "/items/{item_id}/similar" in schema["paths"]
    names = {p["name"] for p in schema["paths"]["/search"]["get"]["parameters"]}
    assert {"min_score", "collapse"} <= names
