"""The Ray-free parts of `mmsearch index --ray` (retrieval/distributed/): listing folders,
manifests and WebDataset shards, reading tar members, and the embedding shards that make a
killed driver resume without recomputing finished shards or keeping a record twice."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
from testdata import make_images

from retrieval.distributed.shards import ShardSet
from retrieval.distributed.sources import Record, list_records, read_records
from retrieval.errors import InputFileError


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
    assert shards.pending_positions() == list(range(4, 10))
    assert add([4, 5, 6, 7, 8, 9]) == 6
    got = list(shards)
    assert [s.positions.tolist() for s in got] == [[0, 1, 2, 3], [4, 6, 7], [8, 9]]
    assert got[1].skipped == [(5, "truncated", "")]
    np.testing.assert_array_equal(got[2].vectors, vectors[[8, 9]].astype(np.float16))
    assert got[0].keys == ["img:0", "img:1", "img:2", "img:3"]
    # Other records (or model): the old shards are never mixed in.
    other = ShardSet(tmp_path / "emb", records[:5], {"model": "m"}, shard_size=4)
    assert other.finished() == set()
