"""Dataset readers, the manifest (data contract), image decoding, transforms and batch samplers."""
