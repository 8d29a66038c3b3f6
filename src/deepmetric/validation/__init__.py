"""great-expectations validation of the manifest and the image files it lists."""

from deepmetric.validation.params import ValidateParams
from deepmetric.validation.suite import (
    ValidationFailed, failure_summary, validate_manifest, validate_with_docs, warning_summary,
)

__all__ = ["ValidateParams", "ValidationFailed", "failure_summary", "validate_manifest", "validate_with_docs",
           "warning_summary"]
