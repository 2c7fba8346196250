"""The mmsearch command line (`mmsearch = "retrieval.cli:app"`): main.py holds the Typer app,
one module per command, common.py the exit codes and shared options, render.py the output."""

from .common import EXIT_CODES, run_guarded
from .main import app

__all__ = ["EXIT_CODES", "app", "run_guarded"]
