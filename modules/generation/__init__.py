"""Answering: prompts in, new tokens out (``sft predict``, ``sft test``, validation answers, ``sft chat``).

- ``plan.py``: generation settings per question type; picks the decoding path.
- ``decoding.py``: the batch loop in which finished rows leave and waiting prompts take their place.
- ``decode_cache.py``: that loop's key/value cache, written in place.
- ``merged_adapters.py``: LoRA-family adapters merged while answering, then taken out.
- ``chat.py``: a multi-turn chat streamed as it is generated.
"""
