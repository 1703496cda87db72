"""The FastAPI search service: ``create_app(settings)``; run it with ``rd serve``."""

from services.search_api.app import create_app
from services.search_api.settings import ServiceSettings

__all__ = ["ServiceSettings", "create_app"]
