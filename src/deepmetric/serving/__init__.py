"""The HTTP service over a verified bundle (the bundle itself: :mod:`deepmetric.bundle`)."""

from deepmetric.serving.config import ServerSettings

__all__ = ["ServerSettings"]
