"""`python -m retrieval ...` runs the mmsearch CLI."""

from .cli import app

app(prog_name="mmsearch")
