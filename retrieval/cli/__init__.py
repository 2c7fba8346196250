"""The mmsearch command line (`mmsearch = "retrieval.cli:app"`): main.py holds the Typer app,
one module per command, common.py the error handling and shared options, render.py the output
(exit codes live with the errors, in errors.py)."""

from .common import run_guarded
from .main import app

__all__ = ["app", "run_guarded"]
