"""The ``dbpool`` command: ``doctor`` checks a pool against its server, ``bench`` loads an app.

Not imported by ``import fastapi_dbpool``: the CLI's dependencies (typer, rich) and its
load generators stay out of the running service.
"""

from .app import app, main

__all__ = ["app", "main"]
