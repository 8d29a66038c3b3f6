"""`evaluate`: zero-shot retrieval on the test classes, with raw-pixel and untrained baselines."""
