"""Embedders: the Embedder protocol and its open_clip implementation, plus the image loader
that feeds it. Public names are re-exported here by the lead."""
