"""Shipping a trained model.

- ``hf_folder.py``: the merged (or full) Hugging Face folder, reloaded and checked by logits.
- ``adapter_folder.py``: a PEFT run's adapter folder, for ``PeftModel.from_pretrained`` and multi-LoRA servers.
- ``gguf.py`` with ``gguf_metadata.py``: one GGUF file for llama.cpp and Ollama, checked by logits.
- ``llama_cpp_check.py``: the GGUF's answers in llama.cpp itself, and its K-quants (the ``llama`` extra).
"""
