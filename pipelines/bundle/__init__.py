"""`bundle`: model.onnx + index.faiss + ids.parquet + manifest.json → data/09_deploy/bundle/."""
