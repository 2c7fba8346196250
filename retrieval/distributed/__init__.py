"""Scale-out indexing: input records beyond a folder (manifests, WebDataset tar shards, fsspec
URLs), float16 embedding shards on disk, and Ray Data batch inference. Only `ray_embed` imports
ray, and only when `mmsearch index --ray` runs; nothing here is imported by the default path."""
