"""The data side: record files → ``Record``s → chat-template tokens with answer-only labels → batches.

- Reading: ``record_loading.py`` (HF ``datasets``), ``file_checks.py``, ``formats.py`` (row → messages),
  ``references.py`` (row → what it is scored against), ``normalize.py`` (→ ``Record``), ``mixing.py``.
- Tokens: ``chat_tokens.py`` (masks), ``truncation.py``, ``preprocess.py``, ``token_cache.py``.
- Batches: ``batching.py``, ``collate.py``, ``packing.py``; all of it driven by ``sft_datamodule.py``.
- ``training_data.py`` (what a checkpoint trained on), ``inspect.py`` (``sft inspect``).
"""

import core  # noqa: F401  (first: it quiets an import-time warning of bitsandbytes)
