"""The optional speed paths (docs/speed.md): each changes how fast, never what is computed.

- ``compiling.py``: repeated blocks compiled with ``torch.compile``; ``compiled_loss.py``: the fused loss.
- ``training_attention.py`` over ``block_attention.py``: CPU causal attention as blocks of matmuls.
- ``frozen_weights.py``: frozen matrices stored in bf16 under ``bf16-mixed``.
"""
