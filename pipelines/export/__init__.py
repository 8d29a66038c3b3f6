"""`export`: the trained model → self-contained ONNX (uint8 NHWC in, L2-normalised out) + parity report."""
