"""The deploy bundle (build, load, verify) and the HTTP service over it."""

from deepmetric.serving.bundle import Bundle, BundleError, build_bundle, load_bundle, read_manifest
from deepmetric.serving.config import BundleParams, ServerSettings

__all__ = ["Bundle", "BundleError", "BundleParams", "ServerSettings", "build_bundle", "load_bundle", "read_manifest"]
