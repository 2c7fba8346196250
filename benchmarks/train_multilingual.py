"""Train a tiny multilingual model on sample image/caption pairs in English and Chinese, then
measure with `mmsearch eval` whether Chinese queries retrieve as well as English ones.

The first N sample images (ImageNet classes: fish, birds, amphibians, reptiles, spiders) get two
captions each: the sample's own ("a photo of a goldfish") and a Chinese one written for this
benchmark ("一张金鱼的照片"). A tiny XLM-R-style open_clip model (tests/multilingual.py: its
tokenizer trained on these captions, 32 px ViT) is trained with the CLIP loss on both languages
at once, saved as a local-dir folder, the images are indexed with it (default backend: the
exported runtime), and `mmsearch eval` runs over the same index once per language with the
trained captions and once with the bare class names ("goldfish", "金鱼").

No weights can be downloaded here, so the model learns from these N pairs only and is evaluated
on the same pairs: the table shows that the multilingual path (tokenizer, text tower, export,
eval) treats Chinese as it treats English, not how well a real model generalises.

    python -m benchmarks.train_multilingual                 # 100 pairs, 400 steps
    python -m benchmarks.train_multilingual --pairs 50 --steps 200
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import cpu_model

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "datasets" / "imagenet-sample"
# Chinese names of the sample's first 100 classes, in captions.csv order.
# fmt: off
CHINESE = [
    "丁鲷", "金鱼", "大白鲨", "虎鲨", "双髻鲨", "电鳐", "黄貂鱼", "公鸡", "母鸡", "鸵鸟", "燕雀",
    "金翅雀", "家朱雀", "灯草鹀", "靛蓝彩鹀", "知更鸟", "鹎", "松鸦", "喜鹊", "山雀", "河乌",
    "鸢", "白头海雕", "秃鹫", "乌林鸮", "火蝾螈", "普通欧螈", "水蜥", "斑点钝口螈", "美西螈",
    "牛蛙", "树蛙", "尾蟾", "红海龟", "棱皮龟", "泥龟", "水龟", "箱龟", "带纹壁虎", "绿鬣蜥",
    "安乐蜥", "鞭尾蜥", "飞蜥", "伞蜥", "鳄蜥", "毒蜥", "绿蜥蜴", "非洲变色龙", "科莫多巨蜥",
    "非洲鳄", "美洲短吻鳄", "三角龙", "雷蛇", "环颈蛇", "猪鼻蛇", "绿蛇", "王蛇", "束带蛇",
    "水蛇", "藤蛇", "夜蛇", "红尾蚺", "岩蟒", "印度眼镜蛇", "绿曼巴蛇", "海蛇", "角蝰",
    "菱斑响尾蛇", "角响尾蛇", "三叶虫", "盲蛛", "蝎子", "黄金圆蛛", "谷仓蜘蛛", "园蛛",
    "黑寡妇蜘蛛", "捕鸟蛛", "狼蛛", "蜱虫", "蜈蚣", "黑琴鸡", "雷鸟", "披肩榛鸡", "草原松鸡",
    "孔雀", "鹌鹑", "山鹑", "非洲灰鹦鹉", "金刚鹦鹉", "葵花鹦鹉", "吸蜜鹦鹉", "鸦鹃", "蜂虎",
    "犀鸟", "蜂鸟", "鹟䴕", "巨嘴鸟", "公鸭", "红胸秋沙鸭", "鹅",
]
# fmt: on


def read_pairs(count: int) -> list[tuple[Path, str, str]]:
    """(image, English caption, Chinese caption) of the first `count` sample images."""
    with open(SAMPLE / "captions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:count]
    return [
        (SAMPLE / row["image"], row["caption"], f"一张{name}的照片")
        for row, name in zip(rows, CHINESE, strict=False)
    ]


def train(model_dir: Path, pairs: list[tuple[Path, str, str]], steps: int, seed: int) -> float:
    """CLIP loss on both languages, full batch; writes the weights back; returns the loss."""
    import open_clip
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    name = f"local-dir:{model_dir}"
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    tokenizer = open_clip.get_tokenizer(name)
    pixels = torch.stack([preprocess(Image.open(image).convert("RGB")) for image, _, _ in pairs])
    english = tokenizer([caption for _, caption, _ in pairs])
    chinese = tokenizer([caption for _, _, caption in pairs])
    loss_fn = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        images = model.encode_image(pixels, normalize=True)
        scale = model.logit_scale.exp()
        loss = sum(
            loss_fn(images, model.encode_text(texts, normalize=True), scale)
            for texts in (english, chinese)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(model_dir / "open_clip_model.safetensors"))
    return float(loss.detach())


def write_csv(path: Path, rows: list[tuple[Path, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        writer.writerows((str(image), caption) for image, caption in rows)
    return path


def mmsearch(*args: str, env: dict[str, str]) -> str:
    command = [sys.executable, "-m", "retrieval", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from multilingual import write_tiny_xlmr_model

    pairs = read_pairs(min(args.pairs, len(CHINESE)))
    corpus = [text for _, en, zh in pairs for text in (en, zh)]
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        # 16 tokens hold every caption here and cut the text tower's training cost ~5x
        model_dir = write_tiny_xlmr_model(
            root / "model", args.seed, corpus * 4, vocab_size=400, context_length=16
        )
        start = time.perf_counter()
        loss = train(model_dir, pairs, args.steps, args.seed)
        train_s = time.perf_counter() - start
        images = root / "images"
        images.mkdir()
        for image, _, _ in pairs:
            (images / image.name).symlink_to(image)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "MMSEARCH_EXPORT_CACHE": str(root / "x")}
        env.pop("MMSEARCH_BACKEND", None)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
        index = ("--index", str(root / "index"))
        mmsearch("index", str(images), "--model", f"local-dir:{model_dir}", "-q", *index, env=env)
        backend = json.loads(mmsearch("info", "--json", *index, env=env))["embedder"]["backend"]
        # The captions trained on, and the bare class names ("goldfish", "金鱼"): a phrasing
        # the model never saw as a whole caption.
        names = [(en.removeprefix("a photo of a "), CHINESE[n]) for n, (_, en, _) in
                 enumerate(pairs)]  # fmt: skip
        queries = {
            "English captions": [en for _, en, _ in pairs],
            "Chinese captions": [zh for _, _, zh in pairs],
            "English names": [en for en, _ in names],
            "Chinese names": [zh for _, zh in names],
        }
        results = {}
        for number, (language, captions) in enumerate(queries.items()):
            rows = [(images / p[0].name, text) for p, text in zip(pairs, captions, strict=True)]
            csv_path = write_csv(root / f"pairs{number}.csv", rows)
            results[language] = json.loads(mmsearch("eval", str(csv_path), "--json", *index,
                                                    "--latency-queries", "5", env=env))  # fmt: skip
    print(f"\n{len(pairs)} pairs, {args.steps} steps, final loss {loss:.3f}, trained in "
          f"{train_s:.0f} s; index backend {backend}\n")  # fmt: skip
    print("| queries | text->image R@1 | R@5 | R@10 | image->text R@1 | R@5 | R@10 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for language, result in results.items():
        cells = [
            f"{result[direction][f'recall@{k}']:.2f}"
            for direction in ("text_to_image", "image_to_text")
            for k in (1, 5, 10)
        ]
        print(f"| {language} | " + " | ".join(cells) + " |")
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    print(f"\ncpu={cpu_model()}, load={os.getloadavg()[0]:.1f}, git={sha}")
    print(f"python -m benchmarks.train_multilingual --pairs {args.pairs} --steps {args.steps}")


if __name__ == "__main__":
    main()
