"""Model specs without torch: the `local-dir:` / `hf-hub:` forms, where a spec's weights file
is, and whether a spec names the model an index recorded. The CLI and the composition root use
these before (or instead of) loading a model, so they must not cost torch's import."""

from __future__ import annotations

from pathlib import Path

from ..files import cached_sha256
from ..types import ModelIdentity, ModelSpec

LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"
# Weights files open_clip looks for inside a local-dir folder, in its own order of preference.
LOCAL_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def local_dir_weights(folder: Path) -> Path | None:
    for name in LOCAL_WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def weights_path(spec: ModelSpec) -> Path | None:
    if spec.name.startswith(LOCAL_DIR):
        return local_dir_weights(Path(spec.name.removeprefix(LOCAL_DIR)).expanduser())
    if spec.pretrained and Path(spec.pretrained).expanduser().is_file():
        return Path(spec.pretrained).expanduser()
    return None


def normalise_spec(spec: ModelSpec) -> ModelSpec:
    """Make local paths absolute so an index found from another directory still loads them."""
    if spec.name.startswith(LOCAL_DIR):
        folder = Path(spec.name.removeprefix(LOCAL_DIR)).expanduser().absolute()
        return ModelSpec(f"{LOCAL_DIR}{folder}", None)
    if spec.name.startswith(HF_HUB):
        return ModelSpec(spec.name, None)
    if spec.pretrained and Path(spec.pretrained).expanduser().is_file():
        return ModelSpec(spec.name, str(Path(spec.pretrained).expanduser().absolute()))
    return spec


def spec_matches(spec: ModelSpec, identity: ModelIdentity, hash_cache: Path | None = None) -> bool:
    """Whether `spec` names the model recorded in `identity`, without loading it: by weights
    hash for local files (remembered in `hash_cache`, see files.cached_sha256), by name and tag
    otherwise."""
    spec = normalise_spec(spec)
    weights = weights_path(spec)
    if weights is not None and identity.weights_sha256:
        return cached_sha256(weights, hash_cache) == identity.weights_sha256
    return (spec.name, spec.pretrained) == (identity.name, identity.pretrained)
