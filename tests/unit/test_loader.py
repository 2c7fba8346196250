"""The worker-process image loader, fed through a real open_clip preprocess (no weights)."""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image

from retrieval.embedders import loader
from retrieval.embedders.loader import (
    Batch,
    ImageDataset,
    Preprocess,
    collate_items,
    create_image_loader,
    default_num_workers,
)
from retrieval.images import walk_images
from retrieval.types import Skipped
from tests.imagezoo import IGNORED, make_image_zoo

SIZE = 32


@pytest.fixture(scope="module")
def preprocess() -> Preprocess:
    transform: Preprocess = open_clip.image_transform(SIZE, is_train=False)
    return transform


@pytest.fixture(scope="module")
def zoo_paths(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[str | None]]:
    """The zoo's paths in walk order, and the expected skip reason at each position."""
    directory = tmp_path_factory.mktemp("zoo")
    expected = make_image_zoo(directory)
    paths = list(walk_images(directory))
    return paths, [expected[path.name] for path in paths]


def _run(
    paths: list[Path], preprocess: Preprocess, *, batch_size: int = 4, num_workers: int = 0
) -> list[Batch]:
    batches = create_image_loader(
        paths, preprocess, batch_size=batch_size, num_workers=num_workers, pin_memory=False
    )
    return list(batches)


def test_good_images_stack_into_n_3_h_w(
    zoo_paths: tuple[list[Path], list[str | None]], preprocess: Preprocess
) -> None:
    paths, expected = zoo_paths
    good = [path for path, reason in zip(paths, expected, strict=True) if reason is None]
    batches = _run(good, preprocess, batch_size=4)
    assert [len(batch.positions) for batch in batches[:-1]] == [4] * (len(batches) - 1)
    for batch in batches:
        assert batch.skipped == []
        assert batch.pixels is not None and batch.pixels.dtype == torch.float32
        assert batch.pixels.shape == (len(batch.positions), 3, SIZE, SIZE)
    positions = [position for batch in batches for position in batch.positions]
    assert positions == list(range(len(good)))


def test_skips_are_reported_at_their_positions(
    zoo_paths: tuple[list[Path], list[str | None]], preprocess: Preprocess
) -> None:
    paths, expected = zoo_paths
    assert IGNORED not in expected
    batches = _run(paths, preprocess, batch_size=5)
    reasons: dict[int, str | None] = {}
    for batch in batches:
        reasons.update({position: None for position in batch.positions})
        for position, skipped in batch.skipped:
            assert skipped.path == str(paths[position])
            reasons[position] = skipped.reason
    assert reasons == dict(enumerate(expected))


def test_in_process_and_two_workers_give_identical_batches(
    zoo_paths: tuple[list[Path], list[str | None]], preprocess: Preprocess
) -> None:
    paths, _ = zoo_paths
    # Use torch's intra-op threads in the parent first: forked workers must still not hang.
    torch.set_num_threads(2)
    torch.randn(256, 256) @ torch.randn(256, 256)
    in_process = _run(paths, preprocess, batch_size=3, num_workers=0)
    workers = _run(paths, preprocess, batch_size=3, num_workers=2)
    assert len(in_process) == len(workers) == -(-len(paths) // 3)
    for ours, theirs in zip(in_process, workers, strict=True):
        assert ours.positions == theirs.positions
        assert ours.skipped == theirs.skipped
        if ours.pixels is None or theirs.pixels is None:
            assert ours.pixels is None and theirs.pixels is None
        else:
            assert torch.equal(ours.pixels, theirs.pixels)


def test_batch_of_only_broken_files_has_no_pixels(
    zoo_paths: tuple[list[Path], list[str | None]], preprocess: Preprocess
) -> None:
    paths, expected = zoo_paths
    broken = [path for path, reason in zip(paths, expected, strict=True) if reason is not None]
    (batch,) = _run(broken, preprocess, batch_size=len(broken))
    assert batch.pixels is None and batch.positions == []
    assert [position for position, _ in batch.skipped] == list(range(len(broken)))


def test_preprocess_failure_is_a_corrupt_skip(tmp_path: Path, preprocess: Preprocess) -> None:
    paths = [tmp_path / "fine.png", tmp_path / "odd.png"]
    Image.new("RGB", (8, 8)).save(paths[0])
    Image.new("RGB", (9, 8)).save(paths[1])

    def picky(image: Image.Image) -> torch.Tensor:
        if image.width == 9:
            raise RuntimeError("cannot handle odd widths")
        return preprocess(image)

    (batch,) = _run(paths, picky, batch_size=2)
    assert batch.positions == [0]
    ((position, skipped),) = batch.skipped
    assert position == 1 and skipped.reason == "corrupt"
    assert "cannot handle odd widths" in skipped.detail


def test_max_pixels_reaches_the_workers(tmp_path: Path, preprocess: Preprocess) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (20, 20)).save(path)
    dataset = ImageDataset([path], preprocess, max_pixels=399)
    position, skipped = dataset[0]
    assert position == 0 and isinstance(skipped, Skipped)
    assert skipped.reason == "decompression-bomb"


def test_collate_keeps_order_and_separates_skips() -> None:
    broken = Skipped("/x/broken.jpg", "truncated")
    items = [(7, torch.zeros(3, 2, 2)), (8, broken), (9, torch.ones(3, 2, 2))]
    batch = collate_items(items)  # type: ignore[arg-type]
    assert batch.positions == [7, 9] and batch.skipped == [(8, broken)]
    assert batch.pixels is not None
    assert batch.pixels.shape == (2, 3, 2, 2) and batch.pixels[1].sum() == 12


def test_paths_survive_packing_including_odd_names() -> None:
    names = ["/a/b.jpg", "/ü/日本.png", "/bad/\udcff.png", "", "rel/x.gif"]
    table = loader._PathTable(names)
    assert len(table) == len(names)
    assert [table[i] for i in range(len(names))] == names
    assert len(loader._PathTable([])) == 0


def test_dataset_pickles_for_spawn_and_forkserver(preprocess: Preprocess, tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(path)
    dataset = pickle.loads(pickle.dumps(ImageDataset([path], preprocess)))
    position, pixels = dataset[0]
    assert position == 0 and isinstance(pixels, torch.Tensor) and pixels.shape == (3, SIZE, SIZE)


def test_abandoned_loader_leaves_no_worker_processes(
    zoo_paths: tuple[list[Path], list[str | None]], preprocess: Preprocess
) -> None:
    paths, _ = zoo_paths
    batches = iter(
        create_image_loader(paths, preprocess, batch_size=2, num_workers=2, pin_memory=False)
    )
    next(batches)
    assert multiprocessing.active_children()
    del batches
    gc.collect()
    assert multiprocessing.active_children() == []


def test_a_worker_pass_gives_sigchld_back_to_the_handler_it_had(
    zoo_paths: tuple[list[Path], list[str | None]], preprocess: Preprocess
) -> None:
    # torch's SIGCHLD handler, left installed, killed AMX-using processes (OpenVINO bf16/int8)
    # with SIGSEGV at their next child exit (loader._OnePassLoader)
    paths, _ = zoo_paths
    before = signal.getsignal(signal.SIGCHLD)
    for _ in range(2):  # a second pass installs torch's handler again, and gives it back again
        seen = [
            signal.getsignal(signal.SIGCHLD)
            for _batch in create_image_loader(
                paths, preprocess, batch_size=2, num_workers=1, pin_memory=False
            )
        ]
        assert seen and seen[0] is not before  # torch's, while the workers ran
        assert signal.getsignal(signal.SIGCHLD) is before
    abandoned = iter(create_image_loader(paths, preprocess, batch_size=2, num_workers=1,
                                         pin_memory=False))  # fmt: skip
    next(abandoned)
    del abandoned
    gc.collect()
    assert signal.getsignal(signal.SIGCHLD) is before


def test_process_exits_promptly_after_abandoning_a_loader(tmp_path: Path) -> None:
    for index in range(8):
        Image.new("RGB", (16, 16), (index * 30, 0, 0)).save(tmp_path / f"{index}.png")
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        import torch
        from retrieval.embedders.loader import create_image_loader
        from retrieval.images import walk_images
        paths = list(walk_images(Path({str(tmp_path)!r})))
        batches = iter(create_image_loader(
            paths, lambda image: torch.zeros(3, 4, 4),  # open_clip would only add import time
            batch_size=1, num_workers=2, pin_memory=False,
        ))
        print(next(batches).positions)
        """
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0]"


@pytest.mark.parametrize(
    ("cores", "accelerator", "workers"),
    [
        (1, False, 0),
        (2, False, 1),
        (8, False, 2),
        (64, False, 4),
        (2, True, 1),
        (16, True, 15),
        (64, True, 16),
    ],
)
def test_default_worker_count(
    monkeypatch: pytest.MonkeyPatch, cores: int, accelerator: bool, workers: int
) -> None:
    monkeypatch.setattr(loader, "_usable_cores", lambda: cores)
    assert default_num_workers(for_accelerator=accelerator) == workers


def test_default_worker_count_fits_this_machine() -> None:
    assert 0 <= default_num_workers() < max(2, loader._usable_cores())


@pytest.mark.parametrize(("batch_size", "num_workers"), [(0, 0), (4, -1)])
def test_bad_loader_settings_are_value_errors(
    preprocess: Preprocess, batch_size: int, num_workers: int
) -> None:
    with pytest.raises(ValueError, match="try --"):
        create_image_loader(
            [], preprocess, batch_size=batch_size, num_workers=num_workers, pin_memory=False
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinning needs an accelerator")
def test_pinned_batches_are_page_locked(
    zoo_paths: tuple[list[Path], list[str | None]], preprocess: Preprocess
) -> None:
    paths, _ = zoo_paths
    batches = create_image_loader(paths, preprocess, batch_size=4, num_workers=0, pin_memory=True)
    pinned = [batch.pixels for batch in batches if batch.pixels is not None]
    assert pinned and all(pixels.is_pinned() for pixels in pinned)
