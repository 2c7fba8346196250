"""`mmsearch index --ray` on a real two-node Ray cluster on this machine (ray's own
cluster_utils.Cluster: a head and a second node, each its own raylet and worker processes):
the distributed build answers exactly as the single-process build with the same index
parameters, and a Ray worker killed mid-job costs no image and duplicates none."""

from __future__ import annotations

import json
import os
import signal
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from clirun import run_ok
from testdata import SHARED_IMAGES, cpu_config

ray = pytest.importorskip(
    "ray", reason="ray is not installed: pip install -e '.[ray]' (the dev extra includes it)"
)
pytest.importorskip("ray.data", reason="Ray Data is missing: pip install 'ray[data]'")

from ray.cluster_utils import Cluster  # noqa: E402

from retrieval.distributed.ingest import RayOptions, index_with_ray  # noqa: E402
from retrieval.distributed.ray_embed import connect  # noqa: E402
from retrieval.ingest.indexer import Indexer  # noqa: E402
from retrieval.storage.store import IndexStore  # noqa: E402
from retrieval.types import IMAGES  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (SHARED_IMAGES / "images").is_dir(), reason=f"sample images not at {SHARED_IMAGES}"
    ),
]
SAMPLE = 24  # images: 6 batches of 4 over 2 actors, so a kill lands while work is left
BATCH = "4"
INDEX_TYPE = "IVF4,Flat"


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A head node and a second node, one CPU each (2 cores are shared on this machine)."""
    nodes = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": 80 << 20, "include_dashboard": False},
    )
    nodes.add_node(num_cpus=1, object_store_memory=80 << 20)
    os.environ["MMSEARCH_BACKEND"] = "torch"  # what conftest pins; the CLI passes it to workers
    connect(nodes.address)  # one driver connection for the module: workers are reused
    try:
        yield nodes.address
    finally:
        ray.shutdown()
        nodes.shutdown()


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of links to the first SAMPLE sample images (never copies of them)."""
    folder = tmp_path_factory.mktemp("sample") / "images"
    folder.mkdir()
    for path in sorted((SHARED_IMAGES / "images").glob("*.JPEG"))[:SAMPLE]:
        (folder / path.name).symlink_to(path)
    return folder


def embedding_actor_pids() -> list[int]:
    """Worker processes running mmsearch's Ray Data actor (ray titles them by class name)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"ImageEmbedActor" in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return sorted(pids)


def results(index: Path, *args: str) -> list[tuple[str, float]]:
    out = json.loads(run_ok("query", *args, "--index", index, "--json", "-k", "8"))
    return [(hit["path"], hit["score"]) for hit in out["results"]]


def test_ray_build_returns_the_single_process_top_k(
    cluster: str, sample: Path, tiny_model: str, tmp_path: Path
) -> None:
    common = ("--model", tiny_model, "--index-type", INDEX_TYPE, "--batch-size", BATCH, "-q")
    run_ok("index", sample, "--index", tmp_path / "single", *common)
    manifest = tmp_path / "images.txt"  # a manifest input: one path per line
    manifest.write_text("\n".join(str(p) for p in sorted(sample.iterdir())) + "\n")
    report = json.loads(run_ok("index", manifest, "--index", tmp_path / "ray", *common,
                               "--ray", cluster, "--ondisk", "--json"))  # fmt: skip
    assert report["indexed"] == SAMPLE and not report["skipped"]
    assert list((tmp_path / "ray").glob("images.*.ivfdata")), "the ray build is on disk"
    assert not (tmp_path / "ray" / "embeddings").exists(), "shards are dropped once committed"
    query_image = str(next(sample.iterdir()))
    for args in (("a fish",), ("a bird of prey",), ("--image", query_image)):
        single, distributed = results(tmp_path / "single", *args), results(tmp_path / "ray", *args)
        assert [path for path, _ in distributed] == [path for path, _ in single]
        np.testing.assert_allclose([s for _, s in distributed], [s for _, s in single], atol=1e-6)
    # A rerun over the same inputs embeds nothing.
    again = json.loads(run_ok("index", manifest, "--index", tmp_path / "ray", *common,
                              "--ray", cluster, "--json"))  # fmt: skip
    assert (again["indexed"], again["unchanged"]) == (0, SAMPLE)


def test_a_folder_rerun_drops_deleted_files_and_answers_as_the_single_process_build(
    cluster: str, sample: Path, tiny_model: str, tmp_path: Path
) -> None:
    common = ("--model", tiny_model, "--index-type", INDEX_TYPE, "--batch-size", BATCH, "-q")
    folder = tmp_path / "images"  # links of our own: this test deletes one
    folder.mkdir()
    for path in sorted(sample.iterdir()):
        (folder / path.name).symlink_to(path.resolve())
    run_ok("index", folder, "--index", tmp_path / "ray", *common, "--ray", cluster)
    deleted = sorted(folder.iterdir())[3]
    deleted.unlink()
    left = sorted(str(p) for p in folder.iterdir())
    # A manifest says what to index, not what was deleted: it only adds and updates.
    manifest = tmp_path / "left.txt"
    manifest.write_text("\n".join(left) + "\n")
    kept = json.loads(run_ok("index", manifest, "--index", tmp_path / "ray", *common,
                             "--ray", cluster, "--json"))  # fmt: skip
    assert (kept["removed"], kept["indexed"]) == (0, 0)
    # The folder itself is listed whole, so its missing file is removed (no embedding needed).
    again = json.loads(run_ok("index", folder, "--index", tmp_path / "ray", *common,
                              "--ray", cluster, "--json"))  # fmt: skip
    assert (again["removed"], again["indexed"], again["unchanged"]) == (1, 0, SAMPLE - 1)
    with IndexStore.open(tmp_path / "ray") as store:
        assert sorted(item.path for item in store.catalog.iter_items(IMAGES)) == left
    run_ok("index", folder, "--index", tmp_path / "single", *common)
    for args in (("a fish",), ("a bird of prey",), ("--image", left[0])):
        single, distributed = results(tmp_path / "single", *args), results(tmp_path / "ray", *args)
        assert str(deleted) not in [path for path, _ in distributed]
        assert [path for path, _ in distributed] == [path for path, _ in single]
        np.testing.assert_allclose([s for _, s in distributed], [s for _, s in single], atol=1e-6)


def test_a_killed_worker_costs_no_image_and_duplicates_none(
    cluster: str, sample: Path, tiny_model: str, tmp_path: Path
) -> None:
    run_ok("index", sample, "--index", tmp_path / "single", "--model", tiny_model, "-q",
           "--batch-size", BATCH)  # fmt: skip
    # The same images inside a WebDataset shard, the format LAION-style collections ship in.
    shard = tmp_path / "00000.tar"
    with tarfile.open(shard, "w") as tar:
        for number, path in enumerate(sorted(sample.iterdir())):
            tar.add(path.resolve(), arcname=f"{number:06d}.jpg")
    store = IndexStore.open(tmp_path / "single")
    store.close()
    killed: list[int] = []

    def kill_a_worker(done: int) -> None:
        """After the first batch is back: SIGKILL one embedding actor's worker process."""
        if not killed:
            workers = embedding_actor_pids()
            os.kill(workers[-1], signal.SIGKILL)
            killed.append(workers[-1])

    directory = tmp_path / "ray"
    with IndexStore.create(directory, store.identity) as target, Indexer(target) as indexer:
        report = index_with_ray(
            indexer, [shard], cpu_config(batch_size=int(BATCH)),
            RayOptions(address=cluster, shard_size=8), on_batch=kill_a_worker,
        )  # fmt: skip
    assert killed, "a worker was killed mid-job"
    assert report.indexed == SAMPLE and not report.skipped
    with IndexStore.open(directory) as store_ray, IndexStore.open(tmp_path / "single") as single:
        paths = [item.path for item in store_ray.catalog.iter_items(IMAGES)]
        assert sorted(paths) == [f"{shard}#{n:06d}.jpg" for n in range(SAMPLE)]  # once each
        # each member's vector is the single-process vector of the same file
        got = store_ray.catalog.get_vectors(IMAGES, store.identity.dim)[1]
        want = single.catalog.get_vectors(IMAGES, store.identity.dim)[1]
        order = np.argsort(paths)
        np.testing.assert_allclose(got[order], want, atol=2e-3)
