"""Exporters: ONNX and native formats from any backend, each reloaded and verified."""
