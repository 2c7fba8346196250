"""Batch inference on a Ray cluster with Ray Data: records -> read + decode + preprocess + embed
in a pool of actors (a callable class in `map_batches`: one model copy per actor, one GPU each
when the cluster has GPUs), streamed back to the driver, which only writes finished shards.

Ray Data restarts an actor that dies and retries its batches elsewhere; the shard writer keeps
each record once, so a lost worker costs time, never a missing or duplicated image."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data

import retrieval

from ..config import EmbedConfig
from ..types import ModelIdentity, ModelSpec
from .pool import plan_actors
from .shards import ShardSet
from .sources import Record, read_records

logger = logging.getLogger(__name__)

# Environment the workers need to embed as the driver would (backend choice, caches, tests'
# MMSEARCH_BACKEND=torch pin); forwarded through the job's runtime_env.
FORWARDED_ENV_PREFIXES = ("MMSEARCH_", "HF_", "OMP_NUM_THREADS")

OnBatch = Callable[[int], None]
"""on_batch(records done): called on the driver after each batch is written to the shards."""


class ImageEmbedActor:
    """One model copy per Ray actor; `__call__` embeds one batch of records."""

    def __init__(
        self, spec: dict[str, Any], config: dict[str, Any], identity: dict[str, Any]
    ) -> None:
        from ..compose import load_embedder  # torch loads in the actor, never on the driver

        self.embedder = load_embedder(
            ModelSpec(**spec), EmbedConfig(**config), expected=ModelIdentity.from_dict(identity)
        )
        self.pid = os.getpid()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = [
            Record(str(path), str(member))
            for path, member in zip(batch["path"], batch["member"], strict=True)
        ]
        payloads = read_records(records)
        n, dim = len(records), self.embedder.dim
        keys, reasons, details = [""] * n, ["unreadable"] * n, [""] * n
        readable = [i for i, payload in enumerate(payloads) if isinstance(payload, bytes)]
        for i, payload in enumerate(payloads):
            if isinstance(payload, str):
                details[i] = payload
        vectors = np.zeros((n, dim), dtype=np.float16)
        data = [payloads[i] for i in readable]
        embedded, found, skipped = self.embedder.embed_image_bytes(
            data,  # type: ignore[arg-type]
            [records[i].label for i in readable],
        )
        for row, position in enumerate(embedded):
            i = readable[position]
            vectors[i] = found[row]
            keys[i] = "img:" + hashlib.sha256(data[position]).hexdigest()  # = ingest.file_key
            reasons[i] = ""
        for position, skip in skipped:
            i = readable[position]
            reasons[i], details[i] = skip.reason, skip.detail
        return {
            "position": batch["position"],
            "key": np.asarray(keys, dtype=object),
            "vector": vectors,
            "reason": np.asarray(reasons, dtype=object),
            "detail": np.asarray(details, dtype=object),
            "pid": np.full(n, self.pid, dtype=np.int64),
        }


def connect(address: str) -> bool:
    """Connect this driver to the cluster at `address` (`auto`: the one RAY_ADDRESS or a local
    `ray start` names, else a new single-machine one). Returns True when this call connected."""
    if ray.is_initialized():
        return False
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
    # py_modules ships this mmsearch to every worker, so a cluster only needs the dependencies
    # installed (`pip install "mmsearch[ray]"` in its image), not this exact checkout.
    runtime_env = {"py_modules": [os.path.dirname(retrieval.__file__)], "env_vars": env}
    ray.init(
        address=None if address == "auto" else address,
        runtime_env=runtime_env,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    return True


def embed_with_ray(
    shards: ShardSet,
    spec: ModelSpec,
    config: EmbedConfig,
    identity: ModelIdentity,
    *,
    address: str = "auto",
    actors: int | None = None,
    batch_size: int | None = None,
    on_batch: OnBatch | None = None,
) -> int:
    """Embed the records of `shards` that have no shard file yet; returns how many were done.

    Rows stream through Ray Data: the driver builds the record names one block at a time and
    keeps only the open shards' vectors, never the whole run's results."""
    pending = shards.pending_count()
    if not pending:
        return 0
    connected = connect(address)
    try:
        plan = plan_actors(ray.cluster_resources(), config, actors, records=pending)
        if batch_size is not None:
            plan = replace(plan, batch_size=batch_size)
        actor_config = asdict(config) | {"device": plan.device, "threads": plan.threads}
        context = ray.data.DataContext.get_current()
        # stdout carries `--json` results; mmsearch reports progress through on_batch.
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        # One Arrow block of record names per batch, each put in the object store as soon as
        # it is built: the driver never holds a second copy of the run's records (Ray Data puts
        # any input in the object store up front; Arrow keeps it compact, and Ray spills it).
        blocks = [ray.put(pa.table(block)) for block in shards.pending_blocks(plan.batch_size)]
        dataset = ray.data.from_arrow_refs(blocks)
        del blocks
        embedded = dataset.map_batches(
            ImageEmbedActor,
            fn_constructor_kwargs={
                "spec": asdict(spec),
                "config": actor_config,
                "identity": identity.to_dict(),
            },
            batch_size=plan.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=plan.actors),
            **plan.remote_args(),
        )
        done = 0
        for out in embedded.iter_batches(batch_size=None, batch_format="numpy"):
            done += shards.add(
                out["position"].tolist(),
                out["key"].tolist(),
                out["vector"],
                out["reason"].tolist(),
                out["detail"].tolist(),
            )
            if on_batch is not None:
                on_batch(done)
        return done
    finally:
        if connected:
            ray.shutdown()
