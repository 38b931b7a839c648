"""Merging adapters at the end of fit: the folder loads without peft and gives the adapter model's
logits; the best checkpoint is what gets merged; methods with nothing to merge save the adapter."""

import json
from functools import partial

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from peft import IA3Config, LoraConfig, PeftModel, PromptTuningConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from callbacks.merge_adapters import MergeAdapters
from datamodules.chat_tokens import render_ids
from modules.export.hf_folder import MergeVerificationError, dequantized_adapter_copy, export_model, float32_cpu_copy, merge_float32
from modules.heads import MultiHead
from modules.heads.choice_export import load_choice_head
from tests.factories import QA_RECORDS, qa_datamodule, quiet_trainer, sft_module, write_jsonl
from tests.tolerances import assert_close_normwise, reordering_bound

CONVERSATION = [{"role": "user", "content": "What is 4 plus 4?"}, {"role": "assistant", "content": "It is 8."}]


@torch.no_grad()
def logits_of(model, tokenizer) -> torch.Tensor:
    """(seq, vocab) float32 logits of a conversation the merge's own probes do not contain."""
    model.eval()
    input_ids = torch.tensor([render_ids(tokenizer, CONVERSATION)])
    return model(input_ids=input_ids).logits[0].float()


@torch.no_grad()
def perturb_trainable(module) -> None:
    """Stands in for training: every adapter weight moves, DoRA's magnitudes and IA3's vectors too
    (at init DoRA's output equals plain LoRA's, so an unperturbed DoRA merge proves little)."""
    for parameter in module.model.parameters():
        if parameter.requires_grad:
            parameter.add_(0.1 * torch.randn_like(parameter))


def relative(reference: torch.Tensor, other: torch.Tensor) -> float:
    return float((other - reference).abs().max() / reference.abs().max())


class EndOfTrainingWeights(Callback):
    """The LoRA weights as training left them, before MergeAdapters loads the best checkpoint."""

    def on_train_end(self, trainer, pl_module):
        self.weights = {n: p.detach().clone() for n, p in pl_module.named_parameters() if "lora_" in n}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir):
    """Two epochs of LoRA with big SGD steps; the 'best' checkpoint is the first epoch's (lowest step)."""
    torch.manual_seed(0)
    run_dir = tmp_path_factory.mktemp("lora-run")
    train_path = write_jsonl(run_dir / "train.jsonl", QA_RECORDS)
    module = sft_module(tiny_model_dir, peft_config=LoraConfig(r=4, lora_alpha=8),
                        optimizer=partial(torch.optim.SGD, lr=2.0), lr_schedule="constant")
    end_of_training, merge = EndOfTrainingWeights(), MergeAdapters()
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", monitor="step", mode="min", save_top_k=1)
    trainer = quiet_trainer(max_epochs=2, enable_checkpointing=True, default_root_dir=run_dir,
                            callbacks=[checkpoint, end_of_training, merge])
    trainer.fit(module, qa_datamodule(tiny_model_dir, train_path, batch_size=4))
    return dict(module=module, report=merge.report, merged_dir=run_dir / "merged", checkpoint=checkpoint,
                end_weights=end_of_training.weights)


def test_lora_merge_loads_without_peft_and_gives_the_adapter_models_logits(lora_run, tiny_model_dir):
    merged_dir, module = lora_run["merged_dir"], lora_run["module"]
    assert not (merged_dir / "adapter_config.json").exists()  # else from_pretrained would pull in peft
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    assert not isinstance(merged, PeftModel) and not any("lora" in name for name in merged.state_dict())
    adapter_logits = logits_of(float32_cpu_copy(module.model), module.tokenizer)
    assert relative(adapter_logits, logits_of(merged, module.tokenizer)) <= 1e-3
    assert lora_run["report"]["relative_error"] <= 1e-3
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert relative(adapter_logits, logits_of(base, module.tokenizer)) > 1e-2  # the adapter did change the model


@pytest.mark.numerics
def test_merged_weight_is_base_plus_scaled_lora_product(lora_run, tiny_model_dir):
    """W' = W + (alpha / r) B A, by hand, for one projection."""
    lora_layer = lora_run["module"].model.base_model.model.model.layers[0].self_attn.q_proj
    update = (8 / 4) * lora_layer.lora_B["default"].weight @ lora_layer.lora_A["default"].weight  # (out, in)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    merged = AutoModelForCausalLM.from_pretrained(lora_run["merged_dir"], dtype=torch.float32)
    expected = base.model.layers[0].self_attn.q_proj.weight + update.detach()
    # peft's merge sums the r=4 products in its own order (tests/tolerances.py, rule 2)
    assert_close_normwise(merged.model.layers[0].self_attn.q_proj.weight, expected,
                          reordering_bound(torch.float32, terms=4, depth=2))


def test_the_best_checkpoint_not_the_last_weights_is_merged(lora_run):
    best_path = lora_run["checkpoint"].best_model_path
    assert best_path.endswith("step=2.ckpt") and lora_run["report"]["weights"] == f"best checkpoint {best_path}"
    best_state = torch.load(best_path, map_location="cpu", weights_only=False)["state_dict"]
    module_weights = dict(lora_run["module"].named_parameters())
    for name, end_weight in lora_run["end_weights"].items():
        assert torch.equal(module_weights[name], best_state[name]), name
    assert any(not torch.equal(best_state[n], w) for n, w in lora_run["end_weights"].items())


def test_merged_tokenizer_keeps_the_chat_template(lora_run):
    original = lora_run["module"].tokenizer
    reloaded = AutoTokenizer.from_pretrained(lora_run["merged_dir"])
    assert reloaded.chat_template == original.chat_template
    assert render_ids(reloaded, CONVERSATION) == render_ids(original, CONVERSATION)
    assert (reloaded.eos_token, reloaded.pad_token) == (original.eos_token, original.pad_token)


def test_merge_report_records_method_error_and_verdict(lora_run):
    report = json.loads((lora_run["merged_dir"] / "merge_report.json").read_text())
    assert report == lora_run["report"]
    assert (report["method"], report["variants"], report["merged"], report["passed"]) == ("LORA", [], True, True)
    assert 0.0 <= report["relative_error"] <= report["max_relative_error"] == 1e-3
    assert report["model_dir"] == str(lora_run["merged_dir"]) and report["choice_head"] is None
    assert load_choice_head(lora_run["merged_dir"]) is None


@pytest.mark.parametrize("peft_config, method, variants", [
    (LoraConfig(r=4, use_dora=True), "LORA", ["dora"]),
    (LoraConfig(r=4, use_rslora=True), "LORA", ["rslora"]),
    (IA3Config(), "IA3", []),
], ids=["dora", "rslora", "ia3"])
def test_other_mergeable_methods_merge_within_the_threshold(peft_config, method, variants, tiny_model_dir, tmp_path):
    module = sft_module(tiny_model_dir, peft_config=peft_config)
    perturb_trainable(module)
    report = export_model(module.model, module.tokenizer, tmp_path / "merged")
    assert (report["method"], report["variants"], report["passed"]) == (method, variants, True)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    adapter_logits = logits_of(float32_cpu_copy(module.model), module.tokenizer)
    measured = relative(adapter_logits, logits_of(merged, module.tokenizer))
    assert measured <= 1e-3 and report["relative_error"] <= 1e-3, (measured, report["relative_error"])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert relative(adapter_logits, logits_of(base, module.tokenizer)) > 1e-3


def test_full_fine_tuning_saves_the_model_itself(tiny_model_dir, tmp_path):
    module = sft_module(tiny_model_dir)
    with torch.no_grad():
        module.model.lm_head.weight.mul_(1.5)  # stands in for training: not the saved base any more
    report = export_model(module.model, module.tokenizer, tmp_path / "merged")
    assert (report["method"], report["merged"], report["relative_error"], report["passed"]) == ("full", True, 0.0, True)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    torch.testing.assert_close(reloaded.lm_head.weight, module.model.lm_head.weight, rtol=0, atol=0)


def test_prompt_tuning_is_not_merged_but_saved_as_an_adapter(tiny_model_dir, tmp_path, capsys):
    module = sft_module(tiny_model_dir, peft_config=PromptTuningConfig(num_virtual_tokens=4))
    report = export_model(module.model, module.tokenizer, tmp_path / "merged")
    assert (report["method"], report["merged"], report["relative_error"], report["passed"]) == (
        "PROMPT_TUNING", False, None, None)
    assert "nothing to merge" in report["reason"] and "adapter not merged" in capsys.readouterr().out
    adapter_dir = tmp_path / "merged" / "adapter"
    assert report["adapter_dir"] == str(adapter_dir) and not (tmp_path / "merged" / "model.safetensors").exists()
    assert AutoTokenizer.from_pretrained(adapter_dir).chat_template == module.tokenizer.chat_template
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, adapter_dir)
    torch.testing.assert_close(reloaded.get_prompt_embedding_to_save("default"),
                               module.model.get_prompt_embedding_to_save("default"))


def test_choice_head_is_saved_beside_the_merged_model(tiny_model_dir, tmp_path):
    module = sft_module(tiny_model_dir, head=MultiHead(max_choices=4), peft_config=LoraConfig(r=4))
    report = export_model(module.model, module.tokenizer, tmp_path / "merged", head=module.head)
    assert report["choice_head"] == str(tmp_path / "merged" / "choice_head.safetensors")
    info = json.loads((tmp_path / "merged" / "choice_head.json").read_text())
    assert (info["hidden_size"], info["max_choices"]) == (32, 4)
    classifier = load_choice_head(tmp_path / "merged")
    torch.testing.assert_close(classifier.weight, module.head.classifier.weight, rtol=0, atol=0)
    torch.testing.assert_close(classifier.bias, module.head.classifier.bias, rtol=0, atol=0)


def test_failed_check_raises_and_keeps_the_folder_out_of_the_deploy_path(tiny_model_dir, tmp_path):
    module = sft_module(tiny_model_dir, peft_config=LoraConfig(r=4, init_lora_weights=False))
    with pytest.raises(MergeVerificationError, match="allowed: -1"):
        export_model(module.model, module.tokenizer, tmp_path / "merged", max_relative_error=-1.0)
    assert not (tmp_path / "merged").exists()
    report = json.loads((tmp_path / "merged.failed" / "merge_report.json").read_text())
    assert report["passed"] is False and report["output_dir"] == str(tmp_path / "merged.failed")


def test_an_existing_folder_that_is_no_earlier_merge_is_not_replaced(tiny_model_dir, tmp_path):
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "notes.txt").write_text("keep me")
    module = sft_module(tiny_model_dir)
    with pytest.raises(FileExistsError, match="no earlier merge"):
        export_model(module.model, module.tokenizer, tmp_path / "merged")
    assert (tmp_path / "merged" / "notes.txt").read_text() == "keep me"


@pytest.mark.numerics
def test_dequantizing_merge_equals_the_plain_merge_on_an_unquantized_model(tiny_model_dir):
    """The QLoRA path's rebuild (config → plain model, weights, adapter state) loses nothing."""
    module = sft_module(tiny_model_dir, peft_config=LoraConfig(r=4, init_lora_weights=False))
    rebuilt = merge_float32(dequantized_adapter_copy(module.model)).state_dict()
    plain = merge_float32(float32_cpu_copy(module.model)).state_dict()
    assert rebuilt.keys() == plain.keys()
    for name in plain:  # the same merge kernels on the same weights: equal but for float32 noise of one merge
        assert_close_normwise(rebuilt[name], plain[name], reordering_bound(torch.float32, terms=4, depth=2), msg=name)


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_a_quantized_lora_merges_into_a_dequantized_float32_base(tiny_model_dir, tmp_path, bits):
    from peft import get_peft_model

    from modules.backbone.loading import load_causal_lm

    base = load_causal_lm(str(tiny_model_dir), quantization=bits, compute_dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, init_lora_weights=False, target_modules="all-linear"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    report = export_model(model, tokenizer, tmp_path / "merged")
    # the merge is exact against the de-quantized adapter model; the quantized one computes with the same
    # weights in 4-bit (float32 compute: equal but for the sums' order), 8-bit rounds each product's inputs
    assert report["quantized"] and report["passed"] and report["relative_error"] < 1e-5, report
    assert report["quantized_model_relative_error"] < (1e-5 if bits == "4bit" else 5e-2), report
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    assert getattr(merged.config, "quantization_config", None) is None
    with torch.no_grad():  # the quantized model still answers after its export (the module keeps it)
        assert torch.isfinite(model(input_ids=torch.tensor([[1, 72, 105, 2]])).logits).all()
