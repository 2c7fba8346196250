"""Image captions from an open_clip CoCa model (`coca_ViT-B-32`, `coca_ViT-L-14`, or any CoCa
config through `hf-hub:` / `local-dir:`), decoded in stacked batches.

Decoding: open_clip's `CoCa.generate` needs `transformers` (its logits processors and
BeamSearchScorer; open_clip 3.3.0 failed to import them from transformers 5.24 and from 4.57.6,
and an older transformers would pin huggingface_hub<1 for the whole project). When open_clip can
import them we call `model.generate` (beam search, open_clip's default); otherwise we run
greedy decoding over the same CoCa forward pass that `generate` calls (`model(image, text,
image_latent=..., image_embs=...)["logits"]`), with the same start/end tokens and minimum
length, so captions work without the extra dependency. Both are deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import open_clip
import torch
from open_clip import coca_model

from ..config import default_batch_size
from ..errors import ModelUnavailableError
from ..types import ModelSpec, Skipped
from .loader import create_image_loader, default_num_workers
from .open_clip import _check_weights_available, _offline_help, resolve_device
from .spec import HF_HUB, LOCAL_DIR

# open_clip's SimpleTokenizer ids, the ones CoCa.generate defaults to.
START_TOKEN = 49406
END_TOKEN = 49407
# generate's defaults: captions of 5..30 tokens (30 covers COCO-style sentences).
MIN_TOKENS = 5
MAX_TOKENS = 30
CPU_BATCH_SIZE = default_batch_size("caption", on_gpu=False)  # config.BATCH_SIZES says why
GPU_BATCH_SIZE = default_batch_size("caption", on_gpu=True)


def use_generate() -> bool:
    """Whether open_clip's own `generate` can run here (it needs transformers<5)."""
    return bool(getattr(coca_model, "_has_transformers", False))


class CocaCaptioner:
    """Turns images into caption strings with a CoCa model."""

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[..., torch.Tensor],
        *,
        device: str = "cpu",
        batch_size: int | None = None,
        num_workers: int | None = None,
    ) -> None:
        self.model = model
        self.preprocess = preprocess
        self.device = device
        on_gpu = device.startswith("cuda")
        self.batch_size = batch_size or (GPU_BATCH_SIZE if on_gpu else CPU_BATCH_SIZE)
        self.num_workers = (
            default_num_workers(for_accelerator=on_gpu) if num_workers is None else num_workers
        )

    @classmethod
    def load(
        cls,
        spec: ModelSpec,
        *,
        device: str = "auto",
        batch_size: int | None = None,
        num_workers: int | None = None,
    ) -> CocaCaptioner:
        """Load a CoCa model by name + pretrained tag or checkpoint, hf-hub id or local-dir.

        Raises:
            ModelUnavailableError: weights unavailable, or the model is not a CoCa model.
        """
        device = resolve_device(device)
        _check_weights_available(spec)
        pretrained = None if spec.name.startswith((LOCAL_DIR, HF_HUB)) else spec.pretrained
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.name, pretrained=pretrained, device=device
            )
        except (RuntimeError, OSError, ValueError) as err:
            raise ModelUnavailableError(
                f"cannot load caption model {spec.name}: {err}. {_offline_help(spec)}"
            ) from err
        if not isinstance(model, open_clip.CoCa):
            raise ModelUnavailableError(
                f"{spec.name} is a {type(model).__name__}, not a CoCa model, so it cannot write "
                "captions; use --caption-model coca_ViT-B-32 (or another coca_* config)"
            )
        model.eval()
        return cls(model, preprocess, device=device, batch_size=batch_size, num_workers=num_workers)

    @torch.inference_mode()
    def caption_pixels(self, pixels: torch.Tensor) -> list[str]:
        """Captions for one stacked (n, 3, H, W) batch."""
        pixels = pixels.to(self.device)
        if use_generate():
            tokens = self.model.generate(pixels, seq_len=MAX_TOKENS, min_seq_len=MIN_TOKENS)
        else:
            tokens = self._greedy(pixels)
        return [decode(row) for row in tokens.tolist()]

    def _greedy(self, pixels: torch.Tensor) -> torch.Tensor:
        """Most likely next token each step, for the whole batch, until every row ended."""
        model = self.model
        image_latent, image_embs = model._encode_image(pixels)
        out = torch.full((len(pixels), 1), START_TOKEN, dtype=torch.long, device=pixels.device)
        done = torch.zeros(len(pixels), dtype=torch.bool, device=pixels.device)
        for step in range(1, MAX_TOKENS):
            logits = model(
                pixels, out, image_latent=image_latent, image_embs=image_embs, output_labels=False
            )["logits"][:, -1]
            if step < MIN_TOKENS:
                logits[:, END_TOKEN] = float("-inf")
            chosen = logits.argmax(dim=-1)
            if step == MAX_TOKENS - 1:  # generate ends a caption that reached the limit too
                chosen = torch.full_like(chosen, END_TOKEN)
            chosen = torch.where(done, torch.zeros_like(chosen), chosen)  # 0 pads ended rows
            out = torch.cat([out, chosen[:, None]], dim=1)
            done |= chosen == END_TOKEN
            if bool(done.all()):
                break
        return out

    def caption_files(
        self,
        paths: Sequence[Path],
        on_batch: Callable[[list[int], list[str], list[tuple[int, Skipped]]], None],
    ) -> None:
        """Decode in worker processes, caption one stacked batch at a time, and hand each
        batch's captions (by position in `paths`) and skipped files to `on_batch`."""
        loader = create_image_loader(
            list(paths),
            self.preprocess,
            batch_size=self.batch_size,
            num_workers=min(self.num_workers, len(paths)),
            pin_memory=self.device.startswith("cuda"),
        )
        for batch in loader:
            captions = [] if batch.pixels is None else self.caption_pixels(batch.pixels)
            on_batch(batch.positions, captions, batch.skipped)


def decode(tokens: list[int]) -> str:
    """Token ids -> text: up to the end token, without start/end markers or padding."""
    if END_TOKEN in tokens:
        tokens = tokens[: tokens.index(END_TOKEN)]
    text = open_clip.decode(torch.tensor([t for t in tokens if t not in (0, START_TOKEN)]))
    return " ".join(text.split())
