"""Compiled CPU fits attend in causal blocks of matmuls while the weights they keep fit a memory
budget, SDPA otherwise: the same loss and gradients as SDPA either way, with or without a padding
mask, eager and compiled; only where it applies."""

import pytest
import torch
from peft import LoraConfig
from transformers import MistralConfig

import modules.speed.training_attention as training_attention
from core.constants import IGNORE_INDEX
from modules.backbone.loading import load_causal_lm
from modules.peft.wrapping import apply_peft
from tests.factories import kept_loss_and_grads
from tests.tolerances import TINY_DEPTH, assert_close_normwise, reordering_bound
from modules.speed.block_attention import kept_weight_entries
from modules.speed.frozen_weights import store_frozen_linear_weights
from modules.speed.training_attention import use_block_attention_in_budget

# One forward/backward of the tiny model in another order (blocks against SDPA, compiled against eager):
# tests/tolerances.py, rule 2.
ONE_PASS = reordering_bound(torch.float32)
# Under bf16 autocast each matmul takes bf16 operands and sums in float32, then rounds its result to
# bf16 once: inductor rounds where it fuses, eager after every op, so each dependent bf16 result may
# differ by one bf16 rounding (terms=1) through the whole forward/backward.
BF16_ONE_PASS = reordering_bound(torch.bfloat16, terms=1, depth=TINY_DEPTH)


def _lora(folder):
    torch.manual_seed(0)
    return apply_peft(load_causal_lm(str(folder)), LoraConfig(r=4, lora_alpha=8, init_lora_weights=False), [])


def _batch(lengths: list[int], left_padded: bool = False) -> dict:
    """Rows of the given real lengths, padded to the longest (right-padded: the kernel gets no mask)."""
    torch.manual_seed(1)
    width = max(lengths)
    input_ids = torch.randint(0, 256, (len(lengths), width))
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    if left_padded:
        mask = mask.flip(1)
    labels = input_ids.masked_fill(mask == 0, IGNORE_INDEX)
    for row, length in enumerate(lengths):  # the first real token is predicted from padding if left-padded
        labels[row, : width - length + 1 if left_padded else width // 3] = IGNORE_INDEX
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def _assert_follows(model, reference, batch: dict, bound: float) -> None:
    """``model`` gives ``reference``'s loss and gradients on ``batch`` within ``bound``, norm-wise."""
    expected_loss, expected_grads = kept_loss_and_grads(reference, batch)
    loss, grads = kept_loss_and_grads(model, batch)
    assert_close_normwise(loss, expected_loss, bound, msg="loss")
    assert grads.keys() == expected_grads.keys() and grads
    for name, grad in expected_grads.items():
        assert_close_normwise(grads[name], grad, bound, msg=name)


def _kept_bytes(model, rows: int, length: int) -> int:
    """What the block attention keeps for backward, all layers, float32: the budget a batch may use."""
    config = model.config
    return kept_weight_entries(rows, config.num_attention_heads, length) * 4 * config.num_hidden_layers


@pytest.fixture
def sdpa_calls(monkeypatch):
    calls = []
    original = training_attention.sdpa_attention_forward

    def counting(*args, **kwargs):
        calls.append(args[1].shape[2])  # the query length
        return original(*args, **kwargs)
    monkeypatch.setattr(training_attention, "sdpa_attention_forward", counting)
    return calls


@pytest.mark.numerics
@pytest.mark.parametrize("left_padded", [False, True])
def test_batches_in_budget_attend_in_blocks_with_sdpa_loss_and_gradients(tiny_model_dir, sdpa_calls, left_padded):
    reference, switched = _lora(tiny_model_dir), _lora(tiny_model_dir)
    assert use_block_attention_in_budget(switched, "cpu", None)
    batch = _batch([9, 14, 6], left_padded)
    expected_loss, expected_grads = kept_loss_and_grads(reference, batch)
    sdpa_calls.clear()
    loss, grads = kept_loss_and_grads(switched, batch)
    assert sdpa_calls == []  # every layer took the block path
    assert_close_normwise(loss, expected_loss, ONE_PASS, msg="loss")
    assert grads.keys() == expected_grads.keys() and grads
    for name, grad in expected_grads.items():
        assert_close_normwise(grads[name], grad, ONE_PASS, msg=name)


def test_long_batches_and_answering_use_sdpa(tiny_model_dir, sdpa_calls, monkeypatch):
    model = _lora(tiny_model_dir)
    use_block_attention_in_budget(model, "cpu", None)
    layers = model.config.num_hidden_layers
    monkeypatch.setattr(training_attention, "KEPT_WEIGHTS_BYTES", _kept_bytes(model, rows=3, length=10))
    kept_loss_and_grads(model, _batch([9, 10, 6]))
    assert sdpa_calls == []
    kept_loss_and_grads(model, _batch([9, 11, 6]))  # 11 tokens: over the budget
    assert sdpa_calls == [11] * layers
    sdpa_calls.clear()
    with torch.no_grad():
        model(input_ids=torch.randint(0, 256, (1, 5)))
    assert sdpa_calls == [5] * layers


def test_only_cpu_runs_of_block_attention_families_that_left_the_choice_switch(tiny_model_dir):
    assert not use_block_attention_in_budget(_lora(tiny_model_dir), "cuda", None)
    assert not use_block_attention_in_budget(_lora(tiny_model_dir), "cpu", "sdpa")  # the user chose
    eager = load_causal_lm(str(tiny_model_dir), attn_implementation="eager")
    assert not use_block_attention_in_budget(eager, "cpu", None)
    assert eager.config._attn_implementation == "eager"
    windowed = type("Model", (), {"config": MistralConfig(sliding_window=8, attn_implementation="sdpa")})()
    assert not use_block_attention_in_budget(windowed, "cpu", None)
    other_family = type("Model", (), {"config": type("Config", (), {"_attn_implementation": "sdpa",
                                                                       "model_type": "gemma2"})()})()
    assert not use_block_attention_in_budget(other_family, "cpu", None)


@pytest.mark.numerics
def test_compiled_layers_attend_in_blocks_with_sdpa_loss_and_one_graph(tiny_model_dir, sdpa_calls):
    """As in a fit: the layers compiled, the block attention (a custom autograd.Function) inside
    their graph; two lengths share it."""
    from modules.speed.compiling import compile_repeated_blocks

    reference, compiled = _lora(tiny_model_dir), _lora(tiny_model_dir)
    assert use_block_attention_in_budget(compiled, "cpu", None)
    compile_repeated_blocks(compiled)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for lengths in ([9, 14, 6], [11, 5, 17]):
        _assert_follows(compiled, reference, _batch(lengths), ONE_PASS)
    assert sdpa_calls == []
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


@pytest.mark.numerics
def test_compiled_layers_under_bf16_autocast_follow_eager_over_lengths(tiny_qwen_dir, sdpa_calls):
    """As a bf16-mixed LoRA fit runs them (train mode, frozen weights stored in bf16, RoPE's float32
    query and key, bf16 value): the compiled graph serves later batches of other lengths (inductor
    once fixed a saved query slice's stride to the first batch's length, and the second batch
    crashed) with the eager blocks' loss and gradients. The tiny Qwen2 of tests/test_compiled_fit.py,
    set up as its fit sets it up: the same layer graph, compiled once a session."""
    from modules.speed.compiling import compile_repeated_blocks

    eager, compiled = _lora(tiny_qwen_dir).train(), _lora(tiny_qwen_dir).train()
    for model in (eager, compiled):
        store_frozen_linear_weights(model)  # in bf16, as a bf16-mixed LoRA fit keeps them
        assert use_block_attention_in_budget(model, "cpu", None)
    compile_repeated_blocks(compiled)
    torch._dynamo.reset()
    for lengths in ([9, 14, 6], [21, 5, 17], [12, 12, 3]):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _assert_follows(compiled, eager, _batch(lengths), BF16_ONE_PASS)
    assert sdpa_calls == []
