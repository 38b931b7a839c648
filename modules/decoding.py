"""A decoding loop in which finished rows leave the batch.

Hugging Face ``generate`` keeps computing every row of a batch until the last one is done: a row
that emitted EOS after 5 tokens still costs a forward pass at each of the other rows' 250 steps.
Here each step drops the rows that just finished from the batch and from the KV cache
(``DynamicCache.batch_select_indices``), so a batch costs what its remaining rows cost.

Greedy decoding picks the same tokens as ``generate`` (argmax of the float32 logits); sampling
applies temperature then top-p as ``generate``'s warpers do and draws from torch's global random
state (so ``seed_everything`` makes it reproducible). ``num_samples`` answers per prompt come from
one prompt forward whose cache is repeated, not from repeated prompts.

Models this loop cannot serve (prompt-learning PEFT methods, which prepend virtual tokens or
past key values; models whose cache is not a plain per-layer key/value cache) go through
``generate`` instead: see ``can_decode``.
"""

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def can_decode(model) -> bool:
    """True when ``decode`` serves ``model``: a decoder-only LM (plain or LoRA-family PEFT) with a
    plain key/value cache in every layer (no sliding-window, linear-attention or quantized layers)."""
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and peft_config.is_prompt_learning:
        return False
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        return False
    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=config).layers)


def choose_tokens(logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float) -> torch.Tensor:
    """(rows,) next tokens from (rows, vocab) float32 logits: argmax, or a temperature/top-p draw."""
    if not do_sample:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_p < 1.0:  # as transformers' TopPLogitsWarper: drop the least likely tokens holding 1 - top_p
        sorted_logits, sorted_ids = torch.sort(logits, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - top_p)
        remove[..., -1:] = False  # always keep the most likely token
        logits = logits.masked_fill(remove.scatter(1, sorted_ids, remove), float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), num_samples=1).squeeze(1)


@torch.no_grad()
def prefill(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, DynamicCache]:
    """(batch, vocab) float32 logits of each prompt's last token, and the prompts' KV cache, left-padded.

    A batch of prompts padded to its longest costs the longest × rows: on the bundled test prompts
    (39 to 264 tokens) 2.5 times the real tokens, and the prompt forward is most of the answering
    time on a CPU. So the prompts run in chunks of similar lengths (``similar_length_chunks``),
    each chunk padded only to its own longest, and the chunks' keys and values are then put in one
    cache, left-padded with zeros that the attention mask hides; every row's rotary positions count
    its real tokens from 0, as in a left-padded batch with mask-derived positions.
    """
    batch, width = input_ids.shape
    lengths = attention_mask.sum(-1).tolist()
    logits = [None] * batch
    padded_layers: list[list[torch.Tensor]] = []  # per layer: [keys, values], (batch, kv_heads, width, head_dim)
    for chunk in similar_length_chunks(lengths):
        chunk_width = max(lengths[row] for row in chunk)
        chunk_ids, chunk_mask = input_ids[chunk, width - chunk_width :], attention_mask[chunk, width - chunk_width :]
        chunk_cache = DynamicCache(config=model.config)
        output = model(input_ids=chunk_ids, attention_mask=chunk_mask, position_ids=mask_positions(chunk_mask),
                       past_key_values=chunk_cache, use_cache=True, logits_to_keep=1)
        for position, row in enumerate(chunk):
            logits[row] = output.logits[position, -1].float()
        for layer_index, layer in enumerate(chunk_cache.layers):
            if layer_index == len(padded_layers):
                padded_layers.append([layer.keys.new_zeros(batch, *layer.keys.shape[1:2], width, layer.keys.shape[-1]),
                                      layer.values.new_zeros(batch, *layer.values.shape[1:2], width,
                                                             layer.values.shape[-1])])
            padded_layers[layer_index][0][chunk, :, width - chunk_width :] = layer.keys
            padded_layers[layer_index][1][chunk, :, width - chunk_width :] = layer.values
    cache = DynamicCache(config=model.config)
    for layer_index, (keys, values) in enumerate(padded_layers):
        cache.update(keys, values, layer_index)
    return torch.stack(logits), cache


def mask_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch, seq) positions counting each row's real tokens from 0 (left padding gets 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def similar_length_chunks(lengths: list[int], max_padding: float = 0.2, max_rows: int = 16) -> list[list[int]]:
    """Rows, longest first, cut into chunks whose padding stays within ``max_padding`` of their real tokens.

    >>> similar_length_chunks([40, 260, 42, 250, 39])
    [[1, 3], [2, 0, 4]]
    """
    order = sorted(range(len(lengths)), key=lambda row: -lengths[row])  # stable: ties in input order
    chunks: list[list[int]] = []
    for row in order:
        chunk = chunks[-1] if chunks else None
        if chunk and len(chunk) < max_rows and \
                lengths[chunk[0]] * (len(chunk) + 1) <= (1 + max_padding) * (sum(lengths[r] for r in chunk) + lengths[row]):
            chunk.append(row)
        else:
            chunks.append([row])
    return chunks


@torch.no_grad()
def decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, eos_token_ids: list[int],
           max_new_tokens: int, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
           num_samples: int = 1) -> list[list[int]]:
    """New token ids for left-padded prompts (batch, seq): ``batch * num_samples`` lists (row-major:
    row 0's samples first), each ending at its first EOS (included) or after ``max_new_tokens``."""
    # 1. The prompt forward, row by row (no padding), into one left-padded cache.
    logits, cache = prefill(model, input_ids, attention_mask)  # (batch, vocab)
    next_position = attention_mask.long().sum(-1, keepdim=True)  # (batch, 1): real tokens count from 0
    if num_samples > 1:  # each prompt's cache repeated: samples share the prompt forward
        cache.batch_repeat_interleave(num_samples)
        logits, attention_mask, next_position = (tensor.repeat_interleave(num_samples, dim=0)
                                                  for tensor in (logits, attention_mask, next_position))
    eos = torch.tensor(eos_token_ids, device=input_ids.device)
    alive = torch.arange(logits.shape[0], device=input_ids.device)  # each batch row's output row
    new_tokens: list[list[int]] = [[] for _ in range(logits.shape[0])]
    # 2. One token per step for the rows still running; finished rows leave batch and cache.
    for step in range(max_new_tokens):
        tokens = choose_tokens(logits, do_sample, temperature, top_p)  # (alive,)
        for row, token in zip(alive.tolist(), tokens.tolist()):
            new_tokens[row].append(token)
        finished = torch.isin(tokens, eos)
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        if bool(finished.any()):
            keep = (~finished).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            alive, tokens, attention_mask, next_position = (tensor[keep] for tensor in
                                                             (alive, tokens, attention_mask, next_position))
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(alive), 1)], dim=1)
        logits = model(input_ids=tokens[:, None], attention_mask=attention_mask, position_ids=next_position,
                       past_key_values=cache, use_cache=True).logits[:, -1].float()  # (alive, vocab)
        next_position = next_position + 1
    return new_tokens
