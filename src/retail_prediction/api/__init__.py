"""The prediction API (FastAPI): `create_app(settings)` builds it, `retail_prediction.serve` runs it."""

from .app import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]
