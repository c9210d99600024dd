"""The prediction API (FastAPI): `create_app(settings)` builds it, `retail_prediction.serve` runs it."""

from ..serving.settings import Settings
from .app import create_app

__all__ = ["Settings", "create_app"]
