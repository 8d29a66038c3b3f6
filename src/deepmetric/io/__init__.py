"""Atomic file writing and the Kedro datasets the catalog uses."""
