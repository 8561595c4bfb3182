"""Pretrained language models in the Hugging Face layout, in and out (nothing is downloaded).

- :mod:`~crossframe.hf.architectures`: ``config.json`` -> a graph of neutral layers and the name map
- :mod:`~crossframe.hf.weights`: safetensors (single or sharded) <-> canonical weights
- :mod:`~crossframe.hf.tokenizer`: ``tokenizer.json`` and the chat template
- :mod:`~crossframe.hf.loading`: a directory -> a model spec and its weights
- :mod:`~crossframe.hf.exporting`: a model spec and weights -> a directory ``transformers`` loads
"""
