"""Building the backbone: the causal LM a run trains or answers with.

- ``loading.py``: embedded aliases, local folders and hub names, one way in.
- ``quantization.py``: 4-bit (QLoRA) and 8-bit base weights with bitsandbytes; ``is_quantized``.
- ``kernels.py``: Liger's fused kernels on CUDA GPUs.
- ``weight_files.py``: a model folder's weight files checked before transformers reads them.
"""
