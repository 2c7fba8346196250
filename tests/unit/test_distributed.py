"""The Ray-free parts of `mmsearch index --ray` (retrieval/distributed/): listing folders,
manifests and WebDataset shards, reading tar members, and the embedding shards that make a
killed driver resume without recomputing finished shards or keeping a record twice."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
from testdata import make_images

from retrieval.config import EmbedConfig
from retrieval.distributed.pool import ActorPlan, plan_actors
from retrieval.distributed.shards import ShardSet
from retrieval.distributed.sources import Record, folder_inputs, list_records, read_records
from retrieval.errors import InputFileError, InvalidQueryError


def test_folders_manifests_and_tar_shards_list_each_image_once(tmp_path: Path) -> None:
    photos = make_images(tmp_path / "photos", 4)
    shard = tmp_path / "00000.tar"
    with tarfile.open(shard, "w") as tar:
        for number, path in enumerate(photos[:2]):
            tar.add(path, arcname=f"{number:06d}.png")
        (tmp_path / "0.txt").write_text("a caption")
        tar.add(tmp_path / "0.txt", arcname="000000.txt")  # captions are not images
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"# comment\nphotos/img_000.png\n\n{photos[1]}\n00000.tar\n")
    records = list_records([tmp_path / "photos", manifest, shard])
    expected = {Record(str(p)) for p in photos} | {
        Record(str(shard), "000000.png"),
        Record(str(shard), "000001.png"),
    }
    assert records == sorted(expected)
    assert Record(str(shard), "000001.png").label == f"{shard}#000001.png"
    asked = [
        Record(str(shard), "000001.png"),
        Record(str(photos[2])),
        Record(str(shard), "nope.png"),
        Record(str(tmp_path / "gone.png")),
    ]
    payloads = read_records(asked)
    assert payloads[0] == photos[1].read_bytes() and payloads[1] == photos[2].read_bytes()
    assert payloads[2] == "no member nope.png" and "gone.png" in payloads[3]
    (tmp_path / "notes.bin").write_bytes(b"x")
    with pytest.raises(InputFileError, match="not a folder, an image, a manifest"):
        list_records([tmp_path / "notes.bin"])
    with pytest.raises(InputFileError, match="does not exist"):
        list_records([tmp_path / "missing"])


def test_embedding_shards_resume_and_keep_each_record_once(tmp_path: Path) -> None:
    records = [Record(f"/img/{n:02d}.jpg") for n in range(10)]
    vectors = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    shards = ShardSet(tmp_path / "emb", records, {"model": "m"}, shard_size=4)
    assert shards.count == 3

    def add(positions: list[int]) -> int:
        reasons = ["truncated" if p == 5 else "" for p in positions]
        keys = [f"img:{p}" for p in positions]
        return shards.add(positions, keys, vectors[positions], reasons, [""] * len(positions))

    assert add([0, 1, 2, 4, 5]) == 5
    assert add([2, 3]) == 1  # 2 came back twice (a retried task): kept once; shard 0 done
    assert shards.finished() == {0}
    # The driver dies here. A new run over the same records keeps shard 0, redoes the rest.
    shards = ShardSet(tmp_path / "emb", records, {"model": "m"}, shard_size=4)
    assert [p for span in shards.pending_ranges() for p in span] == list(range(4, 10))
    assert shards.pending_count() == 6
    # What the driver hands Ray: the pending records only, a few per block, never a shard's
    # records split across shards' boundaries.
    blocks = list(shards.pending_blocks(3))
    assert [block["position"] for block in blocks] == [[4, 5, 6], [7], [8, 9]]
    assert blocks[2]["path"] == ["/img/08.jpg", "/img/09.jpg"]
    assert blocks[2]["member"] == ["", ""]
    assert add([4, 5, 6, 7, 8, 9]) == 6
    got = list(shards)
    assert [s.positions.tolist() for s in got] == [[0, 1, 2, 3], [4, 6, 7], [8, 9]]
    assert got[1].skipped == [(5, "truncated", "")]
    np.testing.assert_array_equal(got[2].vectors, vectors[[8, 9]].astype(np.float16))
    assert got[0].keys == ["img:0", "img:1", "img:2", "img:3"]
    # Other records (or model): the old shards are never mixed in.
    other = ShardSet(tmp_path / "emb", records[:5], {"model": "m"}, shard_size=4)
    assert other.finished() == set()


def test_the_actor_pool_follows_the_clusters_gpus_and_cpus() -> None:
    auto = EmbedConfig()
    gpu = plan_actors({"CPU": 16, "GPU": 4}, auto)
    assert gpu == ActorPlan(actors=4, num_gpus=1, num_cpus=0, device="cuda", batch_size=256,
                            threads=1)  # fmt: skip
    assert gpu.remote_args() == {"num_gpus": 1}
    cpu = plan_actors({"CPU": 16, "memory": 1e10}, auto)
    assert (cpu.actors, cpu.device, cpu.batch_size, cpu.remote_args()) == (
        16, "cpu", 32, {"num_cpus": 1},
    )  # fmt: skip
    # A cluster that reports nothing still gets one CPU actor; few records, few model copies.
    assert plan_actors({}, auto).actors == 1
    assert plan_actors({"CPU": 16, "GPU": 4}, auto, records=3).actors == 3


def test_the_actor_pool_obeys_actors_device_and_batch_size() -> None:
    resources = {"CPU": 16.0, "GPU": 4.0}
    assert plan_actors(resources, EmbedConfig(), 2).remote_args() == {"num_gpus": 1}
    # 8 model copies on 4 GPUs share them, rather than waiting for 8 GPUs that never come.
    shared = plan_actors(resources, EmbedConfig(), 8)
    assert (shared.actors, shared.num_gpus) == (8, 0.5)
    # --device cpu on a GPU cluster: CPU actors, CPU batch, no GPU reserved.
    on_cpu = plan_actors(resources, EmbedConfig(device="cpu", threads=2))
    assert (on_cpu.actors, on_cpu.device, on_cpu.batch_size, on_cpu.threads) == (16, "cpu", 32, 2)
    assert on_cpu.remote_args() == {"num_cpus": 1}
    # Ray shows each actor only its own GPU, so cuda:N means "a GPU" there.
    pinned = plan_actors(resources, EmbedConfig(device="cuda:3", batch_size=64))
    assert (pinned.device, pinned.batch_size, pinned.actors) == ("cuda", 64, 4)
    with pytest.raises(InvalidQueryError, match="no GPU"):
        plan_actors({"CPU": 8}, EmbedConfig(device="cuda"))
    with pytest.raises(InvalidQueryError, match="--ray-actors"):
        plan_actors(resources, EmbedConfig(), 0)


def test_only_local_folders_are_listed_whole(tmp_path: Path) -> None:
    """The inputs whose missing files a --ray run removes: folders, never manifests or tars."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (tmp_path / "list.txt").write_text("")
    inputs = [folder, tmp_path / "list.txt", tmp_path / "0.tar", "s3://bucket/a.jpg"]
    assert folder_inputs(inputs) == [folder]
