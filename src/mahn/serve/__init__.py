"""`mahn serve`: recommendations of a trained run over HTTP. `create_app(RUN)` builds the FastAPI application."""

from mahn.serve.app import create_app

__all__ = ["create_app"]
