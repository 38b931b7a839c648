"""The answering loop's KV cache: keys and values written in place, into room reserved ahead.

transformers' ``DynamicCache`` concatenates each step's keys and values onto everything cached, in
every layer: one copy of the whole cache per generated token. With 32 rows of ~300 cached tokens on
SmolLM2 that copy (``aten::cat``) was 29% of a decoding step on a 2-core CPU (torch profiler).
Here each layer keeps its keys and values in a buffer with room for the tokens still to come; a
step writes one column and attention reads a view of the filled part. The buffers are built again
(``reserved_cache``) only when the batch changes (rows leave, prompts join: ``modules/generation/decoding.py``),
so the layers never select or repeat rows in place.

Rows are right-aligned: each row's real tokens end at the same column, and the columns before a
row's first token are zeros that the attention mask hides (zeros, not uninitialised memory: a
masked NaN would still poison the attention's weighted sum). The free room is left uninitialised:
attention reads only the filled columns, and zeroing it cost more than the decoding steps between
two rebuilds.
"""

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

KeysValues = tuple[torch.Tensor, torch.Tensor]  # (rows, kv_heads, tokens, head_dim) each


class ReservedLayer(DynamicLayer):
    """A cache layer over preallocated buffers (rows, kv_heads, capacity, head_dim) filled up to ``length``."""

    def __init__(self, key_buffer: torch.Tensor, value_buffer: torch.Tensor, length: int):
        super().__init__()
        self.dtype, self.device = key_buffer.dtype, key_buffer.device
        self.is_initialized = True
        self.key_buffer, self.value_buffer, self.length = key_buffer, value_buffer, length
        self._show_filled()

    def _show_filled(self) -> None:
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> KeysValues:
        end = self.length + key_states.shape[-2]
        if end > self.key_buffer.shape[-2]:  # out of room: twice the room (rare: the loop reserves enough)
            self.key_buffer = _with_capacity(self.key_buffer, self.length, 2 * end)
            self.value_buffer = _with_capacity(self.value_buffer, self.length, 2 * end)
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self._show_filled()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length


def _with_capacity(buffer: torch.Tensor, length: int, capacity: int) -> torch.Tensor:
    grown = buffer.new_zeros(*buffer.shape[:2], capacity, buffer.shape[-1])
    grown[:, :, :length] = buffer[:, :, :length]
    return grown


def reserved_cache(config, parts: list[list[KeysValues]], width: int, room: int) -> DynamicCache:
    """One cache of ``width`` filled columns and ``room`` free ones from row groups ``parts`` (each a
    list over layers of keys and values up to ``width`` tokens wide), stacked in order, right-aligned."""
    rows = sum(part[0][0].shape[0] for part in parts)
    layers = []
    for layer_index in range(len(parts[0])):
        buffers = []
        for kind in (0, 1):  # keys, values
            sample = parts[0][layer_index][kind]
            buffer = sample.new_empty(rows, sample.shape[1], width + room, sample.shape[-1])
            first_row = 0
            for part in parts:
                states = part[layer_index][kind]
                last_row, first_column = first_row + states.shape[0], width - states.shape[-2]
                buffer[first_row:last_row, :, :first_column] = 0
                buffer[first_row:last_row, :, first_column:width] = states
                first_row = last_row
            buffers.append(buffer)
        layers.append(ReservedLayer(*buffers, length=width))
    cache = DynamicCache(config=config)
    cache.layers = layers
    return cache


def layer_states(cache: DynamicCache, rows: torch.Tensor | None = None, first_column: int = 0) -> list[KeysValues]:
    """Every layer's filled keys and values, of ``rows`` (default all) from ``first_column`` on."""
    states = []
    for layer in cache.layers:
        keys, values = layer.keys[:, :, first_column:], layer.values[:, :, first_column:]
        states.append((keys, values) if rows is None else (keys[rows], values[rows]))
    return states
