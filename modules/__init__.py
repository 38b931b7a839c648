"""The model side: ``sft_module.py`` (the LightningModule, read top to bottom) over one sub-package a concern.

- ``backbone/``: loading a causal LM (embedded, folder, hub), 4/8-bit weights, fused kernels, weight-file checks.
- ``peft/``: wrapping with any PEFT method, ``methods.py`` (what each method is), AdaLoRA's budget, checkpoint keys.
- ``heads/``: LM, choice and multi heads; logits kept only where trained.
- ``generation/``: per-type answer settings, the decoding loop and its KV cache, chat, adapters merged while answering.
- ``speed/``: the optional speed paths (compiled blocks and loss, CPU block attention, bf16 frozen weights).
- ``training/``: optimizer and schedules, precision, resume, sharding, checkpoint settings.
- ``export/``: the merged Hugging Face folder (checked by logits) and GGUF.
"""

import core  # noqa: F401  (first: it quiets an import-time warning of bitsandbytes)
