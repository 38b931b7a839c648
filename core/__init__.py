"""The shared core every layer may import: constants, record errors, files, tables, model names,
and the one line a full disk or an unwritable path gets (disk_errors.py).

Importing it also quiets one message: on CPUs with avx512_bf16, bitsandbytes warns at import that
it cannot fetch a 4-bit CPU kernel from the Hugging Face hub (the ``kernels`` package). This project
runs 4-bit weights on CUDA only (QLoRA), so the warning, printed at every start, told users nothing
they could act on."""

import logging

logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
