"""A bf16-mixed LoRA fit stores its frozen matrix weights in bf16: what autocast computes with, so
the loss and the adapter gradients are those of float32 storage, bit for bit; embeddings, norms,
a tied output layer and every trainable weight stay float32."""

import copy
import json

import peft
import pytest
import torch
from peft import LoraConfig

from callbacks.merge_adapters import MergeAdapters
from core.constants import IGNORE_INDEX
from datamodules.sft_datamodule import SFTDataModule
from modules.backbone.loading import load_causal_lm
from modules.generation.merged_adapters import adapted_base_parameters, adapters_merged
from modules.peft.wrapping import apply_peft
from modules.sft_module import SFTModule
from modules.speed.frozen_weights import store_frozen_linear_weights, stores_frozen_in_bf16
from tests.factories import TYPED_RECORDS, kept_loss_and_grads, quiet_trainer, write_jsonl


def _lora(folder, **options):
    torch.manual_seed(0)
    return apply_peft(load_causal_lm(str(folder)), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", **options), [])


def _bf16_loss_and_grads(model, batch) -> tuple[torch.Tensor, dict]:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return kept_loss_and_grads(model, batch)


def test_bf16_storage_gives_the_float32_storage_loss_and_adapter_gradients(tiny_model_dir):
    float32_stored = _lora(tiny_model_dir)
    bf16_stored = copy.deepcopy(float32_stored)
    layers = bf16_stored.config.num_hidden_layers
    assert store_frozen_linear_weights(bf16_stored) == 7 * layers + 1  # q k v o gate up down, and lm_head (untied)
    torch.manual_seed(1)
    input_ids = torch.randint(0, 256, (2, 14))
    labels = input_ids.clone()
    labels[:, :6] = IGNORE_INDEX
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    expected_loss, expected_grads = _bf16_loss_and_grads(float32_stored, batch)
    loss, grads = _bf16_loss_and_grads(bf16_stored, batch)
    assert torch.equal(loss, expected_loss)
    assert grads.keys() == expected_grads.keys() and all("lora_" in name for name in grads)
    for name, grad in expected_grads.items():
        assert grad.dtype == torch.float32 and torch.equal(grads[name], grad), name


def test_only_frozen_linear_weights_change_dtype(tiny_model_dir):
    model = _lora(tiny_model_dir)
    base = model.get_base_model()
    base.lm_head.weight = base.model.embed_tokens.weight  # an output layer tied to the embeddings, as in SmolLM2
    store_frozen_linear_weights(model)
    dtypes = {name: parameter.dtype for name, parameter in model.named_parameters()}
    assert dtypes["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"] == torch.bfloat16
    assert dtypes["base_model.model.model.layers.1.mlp.down_proj.base_layer.weight"] == torch.bfloat16
    assert dtypes["base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"] == torch.float32
    assert dtypes["base_model.model.model.embed_tokens.weight"] == torch.float32
    assert base.lm_head.weight.dtype == torch.float32 and base.lm_head.weight is base.model.embed_tokens.weight
    assert dtypes["base_model.model.model.norm.weight"] == torch.float32
    assert dtypes["base_model.model.model.layers.0.input_layernorm.weight"] == torch.float32


@pytest.mark.parametrize(("precision", "options", "sharded", "expected"), [
    ("bf16-mixed", {}, False, True),
    ("bf16-mixed", {"use_rslora": True}, False, True),
    ("bf16-mixed", {"use_dora": True}, False, False),  # DoRA adds base weights to float32 outside a matmul
    ("bf16-mixed", {}, True, False),
    ("32-true", {}, False, False),
    ("16-mixed", {}, False, False),
])
def test_which_runs_store_frozen_weights_in_bf16(tiny_model_dir, precision, options, sharded, expected):
    assert stores_frozen_in_bf16(_lora(tiny_model_dir, **options), precision, sharded) is expected


def test_full_fine_tuning_and_prompt_learning_keep_float32(tiny_model_dir):
    assert not stores_frozen_in_bf16(load_causal_lm(str(tiny_model_dir)), "bf16-mixed", False)
    prompt = apply_peft(load_causal_lm(str(tiny_model_dir)),
                        peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2), [])
    assert not stores_frozen_in_bf16(prompt, "bf16-mixed", False)


def test_a_bf16_mixed_lora_fit_trains_on_bf16_frozen_weights_and_merges_from_them(tiny_model_dir, tmp_path):
    """Through Lightning: the fit stores the frozen weights in bf16, the adapters train, and the
    merged export (a float32 copy) passes its logits check."""
    train = write_jsonl(tmp_path / "train.jsonl", TYPED_RECORDS)
    data = SFTDataModule(train_path=train, format="typed", batch_size=2, tokenizer_name_or_path=str(tiny_model_dir))
    module = SFTModule(model_name_or_path=str(tiny_model_dir), torch_compile=False,
                       peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    merge = MergeAdapters(output_dir=str(tmp_path / "merged"), use_best=False)
    quiet_trainer(max_steps=2, precision="bf16-mixed", callbacks=[merge]).fit(module, datamodule=data)
    base = module.model.get_base_model()
    assert base.model.layers[0].mlp.up_proj.base_layer.weight.dtype == torch.bfloat16
    assert base.model.layers[0].mlp.up_proj.lora_B.default.weight.abs().sum() > 0  # trained from zero
    report = json.loads((tmp_path / "merged" / "merge_report.json").read_text())
    assert report["merged"] and report["passed"], report


def test_validation_answers_take_adapters_out_of_bf16_weights_exactly(tiny_model_dir):
    """Answering during a fit merges the adapters into the (now bf16) base weights; what training
    resumes from must be those weights bit for bit."""
    model = _lora(tiny_model_dir, init_lora_weights=False)  # B not zero: merging changes the weights
    store_frozen_linear_weights(model)
    before = [parameter.detach().clone() for parameter in adapted_base_parameters(model)]
    assert before[0].dtype == torch.bfloat16
    with adapters_merged(model, restore_exactly=True) as merged:
        assert merged and not torch.equal(adapted_base_parameters(model)[0], before[0])
    assert all(torch.equal(parameter, saved) for parameter, saved in zip(adapted_base_parameters(model), before))
