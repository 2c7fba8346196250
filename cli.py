"""Thin entry point: `python cli.py ...` runs the same Typer app as the `mmsearch` script."""

from retrieval.cli import app

if __name__ == "__main__":
    app()
