"""The hand-rolled text search server a user would write, as serve_load.py's reference: FastAPI,
open_clip's own tokenizer (every query padded to the context length), the torch text tower in
fp32 eager under `torch.no_grad()`, and a faiss `IndexFlatIP` over the index's stored vectors.
No batching, no cache, no export: one forward pass per request.

    python -m benchmarks.reference_server --index DIR --model local-dir:PATH --port 8766

It answers `GET /health` and `GET /search?q=TEXT&k=10` (ids and scores), like `mmsearch serve`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def load_vectors(directory: Path) -> tuple[Any, Any]:
    """(ids, float32 vectors) of the index's image items, read once at start."""
    import numpy as np

    from retrieval.storage.store import IndexStore
    from retrieval.types import IMAGES

    store = IndexStore.open(directory, readonly=True)
    try:
        ids = np.array([item.id for item in store.catalog.iter_items(IMAGES)], dtype=np.int64)
        vectors = store.catalog.get_vectors_by_id(ids.tolist(), store.identity.dim)
    finally:
        store.close()
    return ids, np.ascontiguousarray(vectors, dtype=np.float32)


def make_app(directory: Path, model_name: str, threads: int) -> Any:
    import faiss
    import open_clip
    import torch
    from fastapi import FastAPI

    torch.set_num_threads(threads)
    model, _, _ = open_clip.create_model_and_transforms(model_name)
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    ids, vectors = load_vectors(directory)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/search")
    def search(q: str, k: int = 10) -> dict[str, list]:
        with torch.no_grad():
            features = model.encode_text(tokenizer([q]))
            features = torch.nn.functional.normalize(features, dim=-1)
        scores, rows = index.search(features.numpy(), k)
        return {
            "ids": [int(ids[row]) for row in rows[0] if row >= 0],
            "scores": [float(s) for s in scores[0]],
        }

    # one warm query, like mmsearch serve's warm-up before it binds
    search("warm up")
    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    app = make_app(args.index, args.model, args.threads)
    uvicorn.run(app, host="127.0.0.1", port=args.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
