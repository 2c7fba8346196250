"""The HTTP front end (FastAPI; no Typer here): routes.py builds the app over one
SearchService, errors.py maps failures to answers, models.py and params.py hold the request and
response shapes, limits.py, security.py and metrics.py the serving machinery, items.py the item
and thumbnail endpoints' helpers, runner.py the uvicorn runner; static/ is the search page."""

from .routes import create_app

__all__ = ["create_app"]
