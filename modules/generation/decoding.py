"""A decoding loop in which finished rows leave the batch and waiting prompts take their place.

Hugging Face ``generate`` keeps computing every row of a batch until the last one is done: a row
that emitted EOS after 5 tokens still costs a forward pass at each of the other rows' 250 steps,
and the batch thins out as its rows finish. On a 2-core CPU a decoding step of 64 rows costs ~5
times one of a single row, so a full batch is what makes answering fast. Here at most ``max_rows``
rows decode at once; the rows that finished leave the batch and the KV cache, and the next prompts
(longest first) are run through the model and join it (continuous batching). The batch is rebuilt
only when an eighth of its rows have finished or an eighth of ``max_rows`` is free, so finished
rows ride along (and are ignored) for a few steps instead of costing a copy of the cache each.
The cache is written in place (``modules/generation/decode_cache.py``).

Greedy decoding picks the same tokens as ``generate`` (argmax of the float32 logits); sampling
applies temperature then top-p as ``generate``'s warpers do and draws from torch's global random
state (so ``seed_everything`` makes it reproducible). ``num_samples`` answers per prompt come from
one prompt forward whose cache is repeated, not from repeated prompts.

Models this loop cannot serve (prompt-learning PEFT methods, which prepend virtual tokens or
past key values; models whose cache is not a plain per-layer key/value cache) go through
``generate`` instead: see ``can_decode``.
"""

from collections import deque
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from modules.generation.decode_cache import KeysValues, layer_states, reserved_cache
from modules.peft.methods import active_config, learns_virtual_tokens


def can_decode(model) -> bool:
    """True when ``decode`` serves ``model``: a decoder-only LM (plain or LoRA-family PEFT) with a
    plain key/value cache in every layer (no sliding-window, linear-attention or quantized layers)."""
    if learns_virtual_tokens(active_config(model)):
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
def prefill(model, prompts: list[list[int]]) -> list["Rows"]:
    """The prompts run through the model, in chunks of similar lengths (``similar_length_chunks``):
    one ``Rows`` per chunk, with each prompt's last-token logits and its keys and values.

    A batch of prompts padded to its longest costs the longest × rows: on the bundled test prompts
    (39 to 264 tokens) 2.5 times the real tokens, and the prompt forward is a large part of the
    answering time on a CPU. So each chunk is padded only to its own longest (left), and every row's
    rotary positions count its real tokens from 0, as in a left-padded batch with mask-derived positions.
    """
    device = model.device
    chunks = []
    for chunk in similar_length_chunks([len(prompt) for prompt in prompts]):
        width = max(len(prompts[row]) for row in chunk)
        input_ids = torch.zeros(len(chunk), width, dtype=torch.long, device=device)
        attention_mask = torch.zeros_like(input_ids)
        for position, row in enumerate(chunk):
            input_ids[position, width - len(prompts[row]):] = torch.tensor(prompts[row], device=device)
            attention_mask[position, width - len(prompts[row]):] = 1
        cache = DynamicCache(config=model.config)
        output = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=mask_positions(attention_mask),
                       past_key_values=cache, use_cache=True, logits_to_keep=1)
        chunks.append(Rows(states=[(layer.keys, layer.values) for layer in cache.layers],
                           attention_mask=attention_mask, logits=output.logits[:, -1].float(), outputs=chunk))
    return chunks


@dataclass
class Rows:
    """Rows being decoded: their cache (or, before they are stacked, their keys and values), attention
    mask (rows, cached tokens), last logits (rows, vocab) and the output each row's tokens go to."""

    attention_mask: torch.Tensor
    logits: torch.Tensor
    outputs: list[int]
    states: list[KeysValues] | None = None
    cache: DynamicCache | None = None
    next_position: torch.Tensor | None = None  # (rows, 1): real tokens so far, counted from 0
    done: list[bool] | None = None

    def __post_init__(self):
        if self.next_position is None:
            self.next_position = self.attention_mask.sum(-1, keepdim=True)
        if self.done is None:
            self.done = [False] * len(self.outputs)

    def repeated(self, times: int) -> "Rows":
        """Each row ``times`` times in a row (samples share their prompt's forward), outputs numbered
        prompt × times + sample."""
        if times == 1:
            return self
        return Rows(attention_mask=self.attention_mask.repeat_interleave(times, 0),
                    logits=self.logits.repeat_interleave(times, 0),
                    outputs=[prompt * times + sample for prompt in self.outputs for sample in range(times)],
                    states=[(keys.repeat_interleave(times, 0), values.repeat_interleave(times, 0))
                            for keys, values in self.states])

    def running(self) -> "Rows":
        """The rows not done, without the columns none of them uses (keys and values still in the cache)."""
        keep = torch.tensor([row for row, done in enumerate(self.done) if not done], dtype=torch.long,
                            device=self.logits.device)
        attention_mask = self.attention_mask[keep]
        first_column = int(attention_mask.any(dim=0).long().argmax())
        return Rows(attention_mask=attention_mask[:, first_column:], logits=self.logits[keep],
                    outputs=[self.outputs[row] for row in keep.tolist()],
                    states=layer_states(self.cache, keep, first_column), next_position=self.next_position[keep])

    def should_regroup(self, waiting: int, max_rows: int, samples: int) -> bool:
        """An eighth of the rows finished (or all), or an eighth of ``max_rows`` is free for waiting prompts."""
        finished = sum(self.done)
        running = len(self.done) - finished
        if finished and (running == 0 or finished >= max(1, len(self.done) // 8)):
            return True
        return waiting > 0 and max_rows - running >= max(samples, max_rows // 8)

    def step(self, model, tokens: torch.Tensor) -> None:
        """Every row's next token through the model: new logits, one more cached column."""
        self.attention_mask = torch.cat([self.attention_mask, self.attention_mask.new_ones(len(self.outputs), 1)], 1)
        self.logits = model(input_ids=tokens[:, None], attention_mask=self.attention_mask,
                            position_ids=self.next_position, past_key_values=self.cache,
                            use_cache=True).logits[:, -1].float()
        self.next_position = self.next_position + 1


def stacked(config, groups: list[Rows], room: int) -> Rows | None:
    """One batch of the groups' rows, right-aligned, with a cache that has ``room`` free columns."""
    groups = [group for group in groups if group.outputs]
    if not groups:
        return None
    width = max(group.attention_mask.shape[1] for group in groups)
    attention_mask = torch.cat([torch.nn.functional.pad(group.attention_mask, (width - group.attention_mask.shape[1], 0))
                                for group in groups])
    return Rows(attention_mask=attention_mask, logits=torch.cat([group.logits for group in groups]),
                outputs=[output for group in groups for output in group.outputs],
                cache=reserved_cache(config, [group.states for group in groups], width, room),
                next_position=torch.cat([group.next_position for group in groups]))


def regrouped(model, rows: Rows | None, prompts: list[list[int]], waiting: deque, max_rows: int, samples: int,
              room: int) -> Rows | None:
    """The running rows, joined by as many waiting prompts as there is room for (their prompt forward
    run now); None when nothing runs and nothing waits."""
    groups = [rows.running()] if rows is not None and not all(rows.done) else []
    free = max_rows - sum(len(group.outputs) for group in groups)
    joining = [waiting.popleft() for _ in range(min(len(waiting), free // samples))]
    if joining:
        for chunk in prefill(model, [prompts[index] for index in joining]):
            chunk.outputs = [joining[position] for position in chunk.outputs]
            groups.append(chunk.repeated(samples))
    return stacked(model.config, groups, room)


@torch.no_grad()
def decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, eos_token_ids: list[int],
           max_new_tokens: int, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
           num_samples: int = 1, max_rows: int | None = None) -> list[list[int]]:
    """New token ids for left-padded prompts (batch, seq): ``batch * num_samples`` lists (row-major:
    row 0's samples first), each ending at its first EOS (included) or after ``max_new_tokens``.
    At most ``max_rows`` rows (default: all) decode at once."""
    prompts = [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask)]
    new_tokens: list[list[int]] = [[] for _ in range(len(prompts) * num_samples)]
    if max_new_tokens <= 0:
        return new_tokens
    max_rows = max(max_rows or len(new_tokens), num_samples)
    waiting = deque(sorted(range(len(prompts)), key=lambda index: -len(prompts[index])))
    eos = set(eos_token_ids)
    rows = None
    while True:
        if rows is None or rows.should_regroup(len(waiting), max_rows, num_samples):
            rows = regrouped(model, rows, prompts, waiting, max_rows, num_samples, room=max_new_tokens)
            if rows is None:
                return new_tokens
        tokens = choose_tokens(rows.logits, do_sample, temperature, top_p)  # (rows,)
        for row, token in enumerate(tokens.tolist()):
            if not rows.done[row]:
                answer = new_tokens[rows.outputs[row]]
                answer.append(token)
                rows.done[row] = token in eos or len(answer) == max_new_tokens
        if all(rows.done):
            if not waiting:
                return new_tokens
            continue
        rows.step(model, tokens)
