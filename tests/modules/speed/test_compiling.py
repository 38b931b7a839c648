"""model.torch_compile: the decoder layers are compiled, one graph for all of them, and a training
step gives the eager step's loss and gradients; generation runs eagerly and answers the same."""

import pytest
import torch
from peft import LoraConfig

from modules.backbone.loading import load_causal_lm
from modules.peft.wrapping import apply_peft
from modules.speed.compiled_loss import compiled_causal_lm_loss
from modules.speed.compiling import compile_repeated_blocks, eager_generation
from tests.factories import kept_loss_and_grads
from tests.tolerances import assert_close_normwise, reordering_bound
from core.constants import IGNORE_INDEX


def _lora_model(folder):
    torch.manual_seed(0)
    return apply_peft(load_causal_lm(str(folder)), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"), [])


def _batch(length: int) -> dict:
    input_ids = torch.randint(0, 256, (2, length))
    labels = input_ids.clone()
    labels[:, : length // 2] = IGNORE_INDEX
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


@pytest.mark.numerics
def test_compiled_layers_give_the_eager_loss_and_gradients(tiny_model_dir):
    eager, compiled = _lora_model(tiny_model_dir), _lora_model(tiny_model_dir)
    compiled.load_state_dict(eager.state_dict())
    # LoRA freezes the embeddings: the first layer (whose input needs no gradient) stays eager
    assert compile_repeated_blocks(compiled) == compiled.config.num_hidden_layers - 1
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for length in (12, 17):  # a second length reuses the dynamic graph
        batch = _batch(length)
        eager_loss, eager_grads = kept_loss_and_grads(eager, batch)
        compiled_loss, compiled_grads = kept_loss_and_grads(compiled, batch)
        # inductor's fused kernels sum in another order: one forward/backward's reordering (tests/tolerances.py)
        assert_close_normwise(compiled_loss, eager_loss, reordering_bound(torch.float32))
        assert compiled_grads.keys() == eager_grads.keys() and compiled_grads
        for name, grad in eager_grads.items():
            assert_close_normwise(compiled_grads[name], grad, reordering_bound(torch.float32), msg=name)
    # one graph for every layer and both lengths (a graph per layer would mean compile time x layers)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 2, dict(torch._dynamo.utils.counters["stats"])
    # each graph traced once: no second trace for float constants (it missed the compile cache each run)
    assert torch._dynamo.utils.counters["aot_autograd"]["total"] == torch._dynamo.utils.counters["stats"]["unique_graphs"]
    prompt = torch.randint(0, 256, (1, 6))
    with torch.no_grad():
        expected = eager.generate(input_ids=prompt, max_new_tokens=5, do_sample=False, pad_token_id=0)
        with eager_generation():
            answered = compiled.generate(input_ids=prompt, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert answered.tolist() == expected.tolist()


def _compiled_layers(model) -> list[bool]:
    return [getattr(layer, "_compiled_call_impl", None) is not None for layer in model.model.layers]


def test_full_fine_tuning_compiles_every_layer_and_lora_all_but_the_first(tiny_model_dir):
    full = load_causal_lm(str(tiny_model_dir))
    assert compile_repeated_blocks(full) == full.config.num_hidden_layers and all(_compiled_layers(full))
    lora = _lora_model(tiny_model_dir)
    compile_repeated_blocks(lora)
    assert _compiled_layers(lora.base_model.model) == [False] + [True] * (lora.config.num_hidden_layers - 1)


def test_auto_compiles_only_a_fit_of_a_big_enough_model_with_a_compiler(tiny_model_dir, monkeypatch):
    from modules.speed import compiling

    model = load_causal_lm(str(tiny_model_dir))
    plain = dict(quantized=False, gradient_checkpointing=False, padding_free=False, sharded=False)
    assert "small model" in compiling.auto_compile_refusal(model, True, "cpu", **plain)
    monkeypatch.setattr(compiling, "AUTO_MIN_PARAMETERS", 0)
    assert compiling.auto_compile_refusal(model, True, "cpu", **plain) is None
    assert compiling.auto_compile_refusal(model, False, "cpu", **plain) == "not training"
    for option in plain:
        assert compiling.auto_compile_refusal(model, True, "cpu", **{**plain, option: True}) is not None, option
    assert "no compiler for mps" in compiling.auto_compile_refusal(model, True, "mps", **plain)
    with_dropout = apply_peft(load_causal_lm(str(tiny_model_dir)),
                              LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05, target_modules="all-linear"), [])
    assert "dropout" in compiling.auto_compile_refusal(with_dropout, True, "cpu", **plain)
    assert compiling.auto_compile_refusal(_lora_model(tiny_model_dir), True, "cpu", **plain) is None  # dropout 0
    monkeypatch.setattr(compiling.shutil, "which", lambda name: None)
    assert "C++ compiler" in compiling.auto_compile_refusal(model, True, "cpu", **plain)


def test_auto_leaves_a_tiny_fit_eager_and_true_compiles_it(tiny_model_dir):
    from modules.sft_module import SFTModule

    class Fitting:
        state = type("State", (), {"fn": "fit"})()
        precision = "32-true"
        strategy = type("Strategy", (), {"root_device": torch.device("cpu")})()
        datamodule = None
    for setting, compiled in (("auto", False), (True, True)):
        module = SFTModule(model_name_or_path=str(tiny_model_dir), torch_compile=setting)
        module._trainer = Fitting()
        module.configure_model()
        assert any(_compiled_layers(module.model)) == compiled, setting
        assert (module.model.loss_function is compiled_causal_lm_loss) == compiled, setting  # the loss too
