"""Model-based test of product writes: random PUT / PATCH / DELETE / bulk sequences through
ProductWriter against a dict oracle. After every step each product reads back as the oracle
says, an image keeps its item id while it stays in its product's row, and the faiss files agree
with the catalog (opening them verifies counts and checksums)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from httpkit import index_shop
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from testdata import cpu_config

from benchmarks.harness import png_data_url as data_url
from retrieval.compose import load_embedder
from retrieval.ingest.product_api import ProductWriter
from retrieval.storage.store import IndexStore
from retrieval.types import IMAGES, TEXTS, ModelSpec

SKUS = st.sampled_from(["A", "B", "C/1", "SKU-000"])
TITLES = st.sampled_from(["red shoe", "blue hat", "green shirt"])
IMAGE_SETS = st.lists(st.integers(0, 3), max_size=3, unique=True)


IMAGES_BY_SEED = {seed: data_url(seed) for seed in range(4)}


def machine_for(template: Path, model: str) -> type[RuleBasedStateMachine]:
    embedder = load_embedder(ModelSpec(model, None), cpu_config(num_workers=0))

    class ProductWrites(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.tmp = Path(tempfile.mkdtemp())
            self.directory = self.tmp / "index"
            shutil.copytree(template, self.directory)
            self.writer = ProductWriter(self.directory, lambda: embedder)
            self.oracle: dict[str, dict[str, Any]] = {}
            self.ids: dict[str, dict[str, int]] = {}
            for sku in self.writer.store.catalog.get_product_ids():  # the template's products
                view = self.writer.get(sku)
                self.oracle[sku] = {"title": view["title"], "price": view["price"], "images": None}
                self.ids[sku] = self._image_ids(sku)

        def _image_ids(self, sku: str) -> dict[str, int]:
            view = self.writer.get(sku)
            return {image["source"]: image["item_id"] for image in view["images"]}

        def _after_write(self, sku: str, images_changed: bool) -> None:
            now = self._image_ids(sku)
            if not images_changed and sku in self.ids:
                assert now == self.ids[sku]  # ids stable while the images stay
            self.ids[sku] = now

        @rule(sku=SKUS, title=TITLES, seeds=IMAGE_SETS, price=st.integers(0, 99))
        def put(self, sku: str, title: str, seeds: list[int], price: int) -> None:
            images = [IMAGES_BY_SEED[s] for s in seeds]
            before = self.oracle.get(sku)
            self.writer.put(sku, {"title": title, "images": images, "price": price})
            changed = before is None or before["images"] != seeds
            self.oracle[sku] = {"title": title, "price": price, "images": seeds}
            self._after_write(sku, changed)

        @rule(sku=SKUS, price=st.integers(0, 99))
        def patch_price(self, sku: str, price: int) -> None:
            if sku not in self.oracle:
                with pytest.raises(Exception, match="no product"):
                    self.writer.patch(sku, {"price": price})
                return
            self.writer.patch(sku, {"price": price})
            self.oracle[sku]["price"] = price
            self._after_write(sku, False)

        @rule(sku=SKUS)
        def delete(self, sku: str) -> None:
            if sku not in self.oracle:
                with pytest.raises(Exception, match="no product"):
                    self.writer.delete(sku)
                return
            self.writer.delete(sku)
            del self.oracle[sku]
            self.ids.pop(sku, None)

        @rule(sku=SKUS, title=TITLES, sync=st.booleans())
        def bulk(self, sku: str, title: str, sync: bool) -> None:
            report = self.writer.bulk([(1, {"id": sku, "title": title})], sync=sync)
            assert report.count("failed") == 0
            before = self.oracle.get(sku)
            if sync:
                for other in [s for s in self.oracle if s != sku]:
                    del self.oracle[other]
                    self.ids.pop(other, None)
            self.oracle[sku] = {"title": title, "price": None, "images": []}
            self._after_write(sku, before is None or before["images"] != [])

        @invariant()
        def reads_back_as_the_oracle_says(self) -> None:
            catalog = self.writer.store.catalog
            assert sorted(catalog.get_product_ids()) == sorted(self.oracle)
            for sku, want in self.oracle.items():
                view = self.writer.get(sku)
                assert view["title"] == want["title"] and view.get("price") == want["price"]
                if want["images"] is not None:
                    assert len(view["images"]) == len(want["images"])
                    assert all(image["status"] == "embedded" for image in view["images"])
            with IndexStore.open(self.directory, readonly=True) as reader:
                for collection in (IMAGES, TEXTS):
                    index = reader.get_index(collection)  # verifies checksum and count
                    assert (index.ntotal if index else 0) == reader.catalog.count(collection)

        def teardown(self) -> None:
            self.writer.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    return ProductWrites


def test_random_product_writes_match_a_dict_oracle(tiny_model: str, tmp_path: Path) -> None:
    template = index_shop(tiny_model, tmp_path)
    machine = machine_for(template, tiny_model)
    run_state_machine_as_test(
        machine,
        settings=settings(max_examples=8, stateful_step_count=12, deadline=None, database=None,
                          derandomize=True),
    )  # fmt: skip
