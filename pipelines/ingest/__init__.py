"""Stage `ingest`: dataset folder → manifest (the data contract) + ingest report."""
