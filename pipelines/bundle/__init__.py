"""`bundle`: model.onnx + index.faiss + ids.parquet (+ thresholds.json) + manifest.json → data/09_deploy/bundle/."""
