"""Train a small open_clip ViT on the sample's 1,000 image/caption pairs and save it as a
`local-dir:` folder, so agreement benchmarks (precision.py, photo_library.py --model) measure
rankings that mean something: a random model's scores are near-ties, which any tiny bf16 or
decode difference reorders, so its top-10 overlap says nothing about a real model.

The model keeps the real preprocessing (224 px, bicubic resize, CLIP's mean/std) and a ViT-B-32
layout scaled down (patch 32, 2 layers of width 128), trained with the CLIP loss for 120-150
steps of 128 pairs. It learns these pairs only (no weights can be downloaded here): it ranks the
sample's own captions, which is what the agreement figures need. An existing folder with the
same settings is reused. One torch thread by default: on the shared 2-core machine two threads'
spinning barriers ran each step ~10x slower.

    python -m benchmarks.train_sample /tmp/mmsearch-trained-vit            # 150 steps
    python -m benchmarks.train_sample /tmp/mmsearch-trained-vit --steps 120
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "datasets" / "imagenet-sample"
DEFAULT_DIR = Path("/tmp/mmsearch-trained-vit")
# ViT-B-32's layout (224 px, patch 32, CLIP preprocessing) at a width and depth that trains in
# minutes on two shared cores (~25 GFLOP a step at batch 128); 16 tokens hold every caption.
CONFIG = {
    "model_cfg": {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 128, "patch_size": 32},
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 49408,
            "width": 128,
            "heads": 2,
            "layers": 2,
        },
    },
    "preprocess_cfg": {},
}
MARKER = "trained.json"


def read_pairs(sample: Path = SAMPLE) -> list[tuple[Path, str]]:
    """(image path, caption) of every sample image, in captions.csv order."""
    with open(sample / "captions.csv", newline="") as handle:
        return [(sample / row["image"], row["caption"]) for row in csv.DictReader(handle)]


def train(
    folder: Path, *, steps: int = 150, batch: int = 128, lr: float = 5e-4, seed: int = 0
) -> Path:
    """Write the trained model into `folder` (reused when already trained with these settings)
    and return it."""
    settings = {"config": CONFIG, "steps": steps, "batch": batch, "lr": lr, "seed": seed}
    marker = folder / MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("settings") == settings:
        return folder
    import open_clip
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(CONFIG, indent=2))
    torch.manual_seed(seed)
    name = f"local-dir:{folder}"
    model, _, preprocess = open_clip.create_model_and_transforms(name, load_weights=False)
    tokenizer = open_clip.get_tokenizer(name)
    pairs = read_pairs()
    start = time.perf_counter()
    pixels = torch.stack([preprocess(Image.open(p).convert("RGB")) for p, _ in pairs]).half()
    tokens = tokenizer([caption for _, caption in pairs])
    loss_fn = open_clip.ClipLoss()
    # 2e-3 collapsed to chance (loss ln(batch)) within 50 steps; 5e-4 learns
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=steps, pct_start=0.1
    )
    generator = torch.Generator().manual_seed(seed)
    model.train()
    loss = torch.tensor(0.0)
    for step in range(steps):
        rows = torch.randperm(len(pairs), generator=generator)[:batch]
        images = model.encode_image(pixels[rows].float(), normalize=True)
        texts = model.encode_text(tokens[rows], normalize=True)
        loss = loss_fn(images, texts, model.logit_scale.exp())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 25 == 0:
            print(f"step {step}: loss {float(loss.detach()):.3f}", flush=True)
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    result = {"loss": float(loss.detach()), "seconds": round(time.perf_counter() - start, 1)}
    marker.write_text(json.dumps({"settings": settings, **result}, indent=2))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path, nargs="?", default=DEFAULT_DIR)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-4)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    folder = train(args.folder, steps=args.steps, batch=args.batch, lr=args.lr)
    print(json.loads((folder / MARKER).read_text()))
    print(f"--model local-dir:{folder}")


if __name__ == "__main__":
    main()
