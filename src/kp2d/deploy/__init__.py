"""Serving a trained network: BatchNorm folding, ONNX export, int8 quantisation, fast backends, shipping."""
