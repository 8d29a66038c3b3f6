"""deepmetric: deep metric learning as a Kedro + DVC production workflow."""

__version__ = "0.1.0"
