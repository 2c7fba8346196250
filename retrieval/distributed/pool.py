"""How wide `mmsearch index --ray` runs: the Ray Data actor pool (model copies, the resources
each asks Ray for, its device and batch size) decided from the cluster's resources alone, so the
decision is a pure function that tests can check without a cluster (ray_embed.py applies it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..config import EmbedConfig, default_batch_size
from ..errors import InvalidOptionError

GPU_BATCH = default_batch_size("ray", on_gpu=True)  # config.BATCH_SIZES says why
CPU_BATCH = default_batch_size("ray", on_gpu=False)


@dataclass(frozen=True)
class ActorPlan:
    """One actor pool: `actors` model copies, each reserving `num_gpus` or `num_cpus` of the
    cluster and embedding `batch_size` records at a time on `device` with `threads` threads."""

    actors: int
    num_gpus: float
    num_cpus: float
    device: str
    batch_size: int
    threads: int

    def remote_args(self) -> dict[str, float]:
        """The per-actor resource request for `map_batches`: GPUs for GPU actors, else CPUs."""
        return {"num_gpus": self.num_gpus} if self.num_gpus else {"num_cpus": self.num_cpus}


def plan_actors(
    resources: Mapping[str, float],
    config: EmbedConfig,
    actors: int | None = None,
    *,
    records: int | None = None,
) -> ActorPlan:
    """The pool for `resources` (what `ray.cluster_resources()` returns), the run's `config`
    and `--ray-actors` (None: one actor per GPU when the model runs on CUDA, else one per CPU).

    --device auto means CUDA when the cluster has a GPU. A CUDA actor sees only the GPU Ray gave
    it, so `cuda:N` becomes `cuda`. More actors than GPUs (or CPUs) share them: each reserves a
    fraction, so the pool still fits instead of waiting forever for resources that do not exist.
    `records` (the records to embed) caps the pool: an idle model copy costs a load and memory.

    Raises:
        InvalidOptionError: `actors` < 1, or a CUDA device on a cluster without GPUs.
    """
    if actors is not None and actors < 1:
        raise InvalidOptionError(f"--ray-actors must be >= 1, got {actors}")
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    on_gpu = config.device.startswith("cuda") or (config.device == "auto" and gpus > 0)
    if on_gpu and not gpus:
        raise InvalidOptionError(
            f"--device {config.device} but the Ray cluster reports no GPU ({cpus} CPUs); "
            "add GPU nodes, or pass --device cpu (or auto) to embed on the CPUs"
        )
    units = gpus if on_gpu else cpus
    size = actors or units
    if records is not None:
        size = max(1, min(size, records))
    share = min(1.0, units / size)  # > 1 actor per GPU/CPU: each reserves its share
    return ActorPlan(
        actors=size,
        num_gpus=share if on_gpu else 0.0,
        num_cpus=0.0 if on_gpu else share,
        device="cuda" if on_gpu else "cpu",
        batch_size=config.batch_size or (GPU_BATCH if on_gpu else CPU_BATCH),
        threads=config.threads or 1,
    )
