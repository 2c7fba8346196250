"""clip-retrieval's CLI, offline: the real open_clip architecture with random weights.

Run with clip-retrieval's own virtualenv (see ../shared/peers/README.md), never this project's:
    /path/to/cr-venv/bin/python benchmarks/clip_retrieval_offline.py inference --input_dataset ...
Weights cannot be downloaded here, so `pretrained` is forced to None before clip-retrieval
imports open_clip's factory; throughput does not depend on weight values.
"""

import open_clip

_create = open_clip.create_model_and_transforms


def _random_weights(*args, **kwargs):
    kwargs["pretrained"] = None
    return _create(*args, **kwargs)


open_clip.create_model_and_transforms = _random_weights

if __name__ == "__main__":  # clip-retrieval spawns a logger process: keep the guard
    from clip_retrieval.cli import main

    main()
