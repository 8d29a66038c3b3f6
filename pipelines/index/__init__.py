"""`index`: gallery embeddings from the exported ONNX model → faiss index, id table, recall/latency report."""
