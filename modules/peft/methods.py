"""What each PEFT method is, answered in this file alone.

The rest of the model side asks three questions of the active method, and asking them here keeps a
new method (or a new peft release) a change of one file:
- does it learn virtual tokens (prompt learning) instead of changing weights, and are those tokens
  put in front of the input (prompt tuning, P-tuning) or given as a key/value cache (prefix tuning)?
- can its batches be packed (several examples in one row)?
- can it be merged into the base weights (for export and for answering)?
"""

import peft
from peft import PeftConfig, PeftModel, PeftType
from torch import nn

# Prompt-learning methods that put virtual tokens in front of the sequence (the logits grow with them);
# prefix tuning (and its cartridge variant) passes them as past key values, so positions stay put.
VIRTUAL_TOKENS_PREPENDED = {PeftType.PROMPT_TUNING, PeftType.P_TUNING, PeftType.MULTITASK_PROMPT_TUNING}
VIRTUAL_TOKENS_AS_CACHE = {PeftType.PREFIX_TUNING, PeftType.CARTRIDGE}


def active_config(model: nn.Module) -> PeftConfig | None:
    """The PEFT config ``model`` trains with; None for a plain model."""
    return getattr(model, "active_peft_config", None)


def learns_virtual_tokens(peft_config: PeftConfig | None) -> bool:
    """Prompt learning: trained embeddings in front of the input or as a cache, no base-weight change."""
    return peft_config is not None and peft_config.is_prompt_learning


def virtual_tokens_as_cache(peft_config: PeftConfig | None) -> bool:
    return peft_config is not None and peft_config.peft_type in VIRTUAL_TOKENS_AS_CACHE


def prepended_positions(model: nn.Module) -> int:
    """How many positions the active PEFT method adds in front of the input (0 without one)."""
    peft_config = active_config(model)
    if not learns_virtual_tokens(peft_config) or virtual_tokens_as_cache(peft_config):
        return 0
    if peft_config.peft_type in VIRTUAL_TOKENS_PREPENDED:
        return peft_config.num_virtual_tokens
    raise NotImplementedError(f"{peft_config.peft_type} changes the model's inputs in a way the heads do not handle")


def packing_refusal(peft_config: PeftConfig | None) -> str | None:
    """Why ``peft_config``'s method cannot train on packed rows; None if it can. Prompt tuning would put
    its virtual tokens in front of the first example only, and prefix tuning's virtual keys (a cache)
    switch off transformers' detection of packed sequences, so examples would attend to each other."""
    if not learns_virtual_tokens(peft_config):
        return None
    return (f"data.padding_free: true cannot be used with model.peft_config {type(peft_config).__name__}: its virtual "
            "tokens would be shared across the examples of a packed row. Set data.padding_free: false, or use an "
            "adapter method (LoRA, DoRA, IA3, AdaLoRA ...).")


def unmergeable_reason(model: nn.Module) -> str | None:
    """Why ``model``'s adapter cannot be merged into its base weights; None if it can (or it has none)."""
    if not isinstance(model, PeftModel):
        return None
    config = model.active_peft_config
    method = getattr(config.peft_type, "value", str(config.peft_type))
    if learns_virtual_tokens(config):
        return f"{method} learns virtual tokens (prompt embeddings or per-layer prefixes), not changes to the base weights: nothing to merge"
    if not callable(getattr(model.base_model, "merge_and_unload", None)):
        return f"peft {peft.__version__} cannot merge {method} adapters"
    return None
