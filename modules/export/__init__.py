"""Shipping a trained model.

- ``hf_folder.py``: the merged (or full) Hugging Face folder, reloaded and checked by logits.
- ``gguf.py`` with ``gguf_metadata.py``: one GGUF file for llama.cpp and Ollama, checked by logits.
"""
