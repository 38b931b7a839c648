"""Continuous batching: at most ``max_rows`` rows decode at once, waiting prompts join as rows
finish, and the greedy answers are still exactly one-prompt-at-a-time ``generate``'s token ids.
The cache written in place holds what ``DynamicCache``'s concatenation would."""

import torch
from transformers import DynamicCache

from modules.generation.decode_cache import reserved_cache
from modules.generation.decoding import decode
from tests.modules.generation.test_decoding import MAX_NEW_TOKENS, early_eos, left_padded, one_by_one, prompt_ids, tiny_model  # noqa: F401
from tests.tiny import IM_END

MORE_PROMPTS = ["<|im_start|>user\nCount to five.", "xy", "<|im_start|>user\nWhy is the sky blue? Say it briefly.",
                "<|im_start|>user\nok"]


def rows_per_forward(model) -> tuple[list[int], list[int]]:
    """Rows of each decoding step (one new token each) and of each prompt forward, recorded from now on."""
    step_rows, prompt_rows = [], []

    def record(module, args, kwargs):
        (step_rows if kwargs["input_ids"].shape[1] == 1 else prompt_rows).append(kwargs["input_ids"].shape[0])
    model.register_forward_pre_hook(record, with_kwargs=True)
    return step_rows, prompt_rows


def test_waiting_prompts_join_as_rows_finish_and_answers_stay_the_one_by_one_ids(tiny_model, tokenizer):
    prompts = prompt_ids(tokenizer) + [tokenizer(text, add_special_tokens=False)["input_ids"] for text in MORE_PROMPTS]
    eos = early_eos(tiny_model, prompts)
    reference = one_by_one(tiny_model, prompts, eos)
    assert any(len(answer) < MAX_NEW_TOKENS for answer in reference)  # rows finish early: room for waiting prompts
    step_rows, prompt_rows = rows_per_forward(tiny_model)
    assert decode(tiny_model, *left_padded(prompts), [eos], MAX_NEW_TOKENS, max_rows=3) == reference
    assert max(step_rows) == 3  # never more than max_rows at once ...
    assert sum(prompt_rows) == len(prompts)  # ... every prompt's forward ran once ...
    assert prompt_rows[0] <= 3 and len(prompt_rows) > 2  # ... the first three, then the others as rows finished


def test_samples_of_a_prompt_join_together_and_stay_reproducible(tiny_model, tokenizer):
    prompts = prompt_ids(tokenizer)
    settings = dict(max_new_tokens=MAX_NEW_TOKENS, do_sample=True, temperature=0.8, top_p=0.9, num_samples=3)
    step_rows, _ = rows_per_forward(tiny_model)
    torch.manual_seed(3)
    first = decode(tiny_model, *left_padded(prompts), [IM_END], max_rows=4, **settings)
    assert max(step_rows) <= 4 and len(first) == 3 * len(prompts)
    torch.manual_seed(3)
    assert decode(tiny_model, *left_padded(prompts), [IM_END], max_rows=4, **settings) == first
    assert all(1 <= len(answer) <= MAX_NEW_TOKENS for answer in first)


def test_max_rows_below_the_samples_still_decodes_one_prompt_at_a_time(tiny_model, tokenizer):
    prompts = prompt_ids(tokenizer)[:2]
    torch.manual_seed(0)
    answers = decode(tiny_model, *left_padded(prompts), [IM_END], 5, do_sample=True, num_samples=3, max_rows=1)
    assert len(answers) == 6 and all(1 <= len(answer) <= 5 for answer in answers)


def test_the_reserved_cache_holds_what_concatenation_would_and_grows_when_full(tiny_model_dir):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model_dir)
    generator = torch.Generator().manual_seed(0)
    states = [(torch.randn(2, 1, 3, 4, generator=generator), torch.randn(2, 1, 3, 4, generator=generator))
              for _ in range(config.num_hidden_layers)]
    short = [(keys[:1, :, 1:], values[:1, :, 1:]) for keys, values in states]  # a one-row group, 2 tokens
    cache = reserved_cache(config, [states, short], width=3, room=1)
    plain = DynamicCache(config=config)
    for layer, (keys, values) in enumerate(states):
        padded = [torch.cat([tensor, torch.nn.functional.pad(part, (0, 0, 1, 0))]) for tensor, part in
                  ((keys, short[layer][0]), (values, short[layer][1]))]
        plain.update(*padded, layer)
    for _ in range(3):  # the room is one column: the second step grows the buffers
        new = [(torch.randn(3, 1, 1, 4, generator=generator), torch.randn(3, 1, 1, 4, generator=generator))
               for _ in range(config.num_hidden_layers)]
        for layer, (keys, values) in enumerate(new):
            got = cache.update(keys, values, layer)
            want = plain.update(keys, values, layer)
            assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert cache.get_seq_length() == 6 and cache.layers[0].key_buffer.shape[-2] >= 6
    assert torch.equal(cache.layers[0].keys[2, :, 0], torch.zeros(1, 4))  # the short row's padding column: zeros
