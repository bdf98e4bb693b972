"""Exporting trained models to other runtimes (ONNX for ONNX Runtime)."""
