"""``crossframe serve``: an OpenAI-compatible HTTP server for any run or ONNX export, with batching.

- :mod:`~crossframe.serve.loading` opens a run or export directory (ONNX Runtime or native backend);
- :mod:`~crossframe.serve.decoding` schedules language-model requests (continuous batching);
- :mod:`~crossframe.serve.batching` coalesces classifier requests;
- :mod:`~crossframe.serve.app` is the FastAPI app; :mod:`~crossframe.serve.server` runs it on uvicorn;
- :mod:`~crossframe.serve.keys` holds API keys (hashed) and rate limits; :mod:`~crossframe.serve.metrics`
  the Prometheus metrics.

The services floor: this package may import config, plugins, train and export; nothing below it
imports it. Submodules are imported where used, so the key helpers stay light.
"""
