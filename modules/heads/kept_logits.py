"""LM logits only where they are used: at the positions whose next token is trained.

The (batch, seq, vocab) logits are the largest tensors of a small model's training step: 49 152
(SmolLM2) or 151 936 (Qwen) entries per position, upcast to float32 for the loss and kept for
backward. Answer-only training uses a small share of the positions, so the LM head is applied to
those rows alone: transformers' ``logits_to_keep`` takes a boolean (batch, seq) mask and returns
(kept, vocab) logits, in row-major order of the mask.
"""

import torch
from peft import PeftType
from torch import nn

from core.constants import IGNORE_INDEX

# Prompt-learning methods that put virtual tokens in front of the sequence (the logits grow with them);
# prefix tuning (and its cartridge variant) passes them as past key values, so positions stay put.
VIRTUAL_TOKENS_PREPENDED = {PeftType.PROMPT_TUNING, PeftType.P_TUNING, PeftType.MULTITASK_PROMPT_TUNING}
VIRTUAL_TOKENS_AS_CACHE = {PeftType.PREFIX_TUNING, PeftType.CARTRIDGE}


def next_token_labels(labels: torch.Tensor) -> torch.Tensor:
    """(batch, seq) label of the token each position predicts: labels shifted left, -100 at the end."""
    return nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def prepended_positions(model: nn.Module) -> int:
    """How many positions the active PEFT method adds in front of the input (0 without one)."""
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is None or not peft_config.is_prompt_learning or peft_config.peft_type in VIRTUAL_TOKENS_AS_CACHE:
        return 0
    if peft_config.peft_type in VIRTUAL_TOKENS_PREPENDED:
        return peft_config.num_virtual_tokens
    raise NotImplementedError(f"{peft_config.peft_type} changes the model's inputs in a way the heads do not handle")


def forward_keeping(model: nn.Module, batch: dict, keep: torch.Tensor, targets: torch.Tensor, divisor=None,
                    hidden: bool = False):
    """One pass over the right-padded sequences, logits only for the True cells of ``keep`` (batch, seq).

    ``.logits`` is (kept, vocab); ``.loss`` is transformers' causal-LM loss of those logits against
    ``targets`` (next-token labels, see ``next_token_labels``) at the same cells, summed and divided
    by ``divisor`` if given, else a mean. The loss goes through the model (``shift_labels`` holds the
    kept targets; ``labels`` only tells it to compute one), so what peft adds to a model's loss, such
    as AdaLoRA's orthogonal regulariser, is added here too. Hidden states, if asked for, cover every
    position.
    """
    extra = {"num_items_in_batch": divisor} if divisor is not None else {}
    virtual = prepended_positions(model)
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 logits_to_keep=nn.functional.pad(keep, (virtual, 0), value=False),
                 labels=batch["labels"], shift_labels=targets[keep], output_hidden_states=hidden, **extra)


def kept_rows(keep: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Indices into the (kept, vocab) logits of the cells (rows[i], positions[i]), which must be kept."""
    index_of_cell = keep.flatten().cumsum(0).view_as(keep) - 1  # (batch, seq)
    return index_of_cell[rows, positions]
