"""PEFT: any method from YAML, and the one place that knows what each method is.

- ``wrapping.py``: wrapping the backbone with a ``peft.PeftConfig`` (defaults, new tokens, counts).
- ``methods.py``: prompt learning or not, virtual tokens prepended or cached, packing and merging refused.
- ``adalora_budget.py``: AdaLoRA's rank budget, run by its own callback.
- ``checkpoint_keys.py``: which weights a checkpoint holds, checked against the model.
"""
