"""LM logits only where they are used: at the positions whose next token is trained.

The (batch, seq, vocab) logits are the largest tensors of a small model's training step: 49 152
(SmolLM2) or 151 936 (Qwen) entries per position, upcast to float32 for the loss and kept for
backward. Answer-only training uses a small share of the positions, so the LM head is applied to
those rows alone: transformers' ``logits_to_keep`` takes a boolean (batch, seq) mask and returns
(kept, vocab) logits, in row-major order of the mask.
"""

import torch
from torch import nn

from core.batch_layout import is_packed
from core.constants import IGNORE_INDEX
from modules.peft.methods import active_config, prepended_positions, virtual_tokens_as_cache

def next_token_labels(labels: torch.Tensor) -> torch.Tensor:
    """(batch, seq) label of the token each position predicts: labels shifted left, -100 at the end."""
    return nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


# What a packed batch gives the kernels besides ``position_ids``: the examples' boundaries, so flash
# attention's varlen path needs no device-to-host sync per layer to find them (SDPA and eager build
# their block-diagonal mask from ``position_ids`` alone, transformers' find_packed_sequence_indices).
PACKED_KERNEL_ARGUMENTS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def kernel_attention_mask(model: nn.Module, batch: dict) -> torch.Tensor | None:
    """The padding mask the attention kernel needs for ``batch``: None when every row is padded on the
    right and the model adds no virtual tokens.

    Under a causal mask a token attends only to tokens before it; in a right-padded row those are all
    real, so the padding mask changes nothing but the outputs at the padding positions, which no
    loss reads (their labels are -100, and no logits are kept there). Without it, SDPA takes its
    ``is_causal`` path (on a GPU its flash kernel, which takes no mask), and a batch with padding and
    one without run the same compiled graph instead of two. On 2 CPU cores, SmolLM2 LoRA bf16, four
    alternating runs averaged 337 tokens/s without the mask against 320 with it (single runs vary
    ±5%). The check costs one host sync per micro-batch on a GPU. Left-padded rows (prompts) and
    prompt-learning methods (virtual tokens in front, or as a cache) keep the mask."""
    attention_mask = batch.get("attention_mask")
    if attention_mask is None or prepended_positions(model) or virtual_tokens_as_cache(active_config(model)):
        return attention_mask
    right_padded = bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())
    return None if right_padded else attention_mask


def forward_keeping(model: nn.Module, batch: dict, keep: torch.Tensor, targets: torch.Tensor, divisor=None,
                    hidden: bool = False):
    """One pass over the right-padded (or packed) sequences, logits only for the True cells of ``keep`` (batch, seq).

    ``.logits`` is (kept, vocab); ``.loss`` is transformers' causal-LM loss of those logits against
    ``targets`` (next-token labels, see ``next_token_labels``) at the same cells, summed and divided
    by ``divisor`` if given, else a mean. The loss goes through the model (``shift_labels`` holds the
    kept targets; ``labels`` only tells it to compute one), so what peft adds to a model's loss, such
    as AdaLoRA's orthogonal regulariser, is added here too. Hidden states, if asked for, cover every
    position.
    """
    extra = {"num_items_in_batch": divisor} if divisor is not None else {}
    # A packed row: no mask, positions restart at each example. use_cache=False (below) matters here too:
    # with a cache (the config's default) transformers never looks for packed sequences.
    if is_packed(batch):
        extra.update(position_ids=batch["position_ids"], **{name: batch[name] for name in PACKED_KERNEL_ARGUMENTS})
    virtual = prepended_positions(model)
    return model(input_ids=batch["input_ids"], attention_mask=kernel_attention_mask(model, batch),
                 logits_to_keep=nn.functional.pad(keep, (virtual, 0), value=False),
                 labels=batch["labels"], shift_labels=targets[keep], output_hidden_states=hidden,
                 use_cache=False, **extra)  # no KV cache: nothing reads it, and it would tie each layer to its index


def kept_rows(keep: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Indices into the (kept, vocab) logits of the cells (rows[i], positions[i]), which must be kept."""
    index_of_cell = keep.flatten().cumsum(0).view_as(keep) - 1  # (batch, seq)
    return index_of_cell[rows, positions]
