"""Every PEFT run leaves an adapter folder beside merged/ that PEFT itself loads with the trained
adapter model's logits; `merge.adapter_only` writes only that folder."""

import json

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from lightning_app.main import main
from modules.export.adapter_folder import CARD_FILE, save_adapter_folder
from tests.factories import TYPED_RECORDS, write_jsonl
from tests.tiny import build_tokenizer

PROBE = torch.tensor([[1, 72, 101, 108, 108, 111, 2]])


def trained_lora(model_dir) -> PeftModel:
    """A LoRA whose B matrices are not zero (PEFT starts them at zero: an untrained adapter changes nothing)."""
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), config).eval()


def test_peft_loads_the_folder_with_the_adapter_models_logits(tiny_model_dir, tmp_path):
    adapter_model = trained_lora(tiny_model_dir)
    folder = save_adapter_folder(adapter_model, build_tokenizer(), tmp_path / "adapter", str(tiny_model_dir),
                                 "train.jsonl (4 records)", "sft fit --config run.yaml")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        plain = base(PROBE).logits
        reloaded = PeftModel.from_pretrained(base, folder).eval()
        expected, got = adapter_model(PROBE).logits, reloaded(PROBE).logits
    assert torch.allclose(got, expected, rtol=0, atol=1e-5)  # the same float32 weights, the same kernels
    assert (plain - expected).abs().max() > 1e-2  # and the adapter does change them
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir) and config["r"] == 4
    assert (folder / "tokenizer_config.json").is_file() and (folder / "chat_template.jinja").is_file()
    card = (folder / CARD_FILE).read_text()
    assert "# LORA adapter for" in card and "r 4, lora_alpha 8" in card and "q_proj, v_proj" in card
    assert not (tmp_path / "adapter.partial").exists()


def test_the_embedded_base_keeps_its_alias_and_the_card_says_how_to_get_it(tiny_model_dir, tmp_path):
    folder = save_adapter_folder(trained_lora(tiny_model_dir), build_tokenizer(), tmp_path / "adapter",
                                 "smollm2-135m-instruct", "data", "sft fit")
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "smollm2-135m-instruct"
    assert "sft fetch-model smollm2-135m-instruct" in (folder / CARD_FILE).read_text()


def fit_args(tiny_model_dir, tmp_path, *extra: str) -> list[str]:
    train = write_jsonl(tmp_path / "train.jsonl", TYPED_RECORDS)
    return ["fit", "--model.model_name_or_path", str(tiny_model_dir), "--data.train_path", train,
            "--model.peft_config", json.dumps({"class_path": "peft.LoraConfig", "init_args": {"r": 4, "lora_alpha": 8}}),
            "--trainer.max_steps", "2", "--trainer.accelerator", "cpu", "--trainer.precision", "32-true",
            "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
            "--checkpoint.monitor", "null", "--data.batch_size", "2", *extra]


def test_a_lora_fit_leaves_adapter_and_merged_and_adapter_only_leaves_the_adapter(tiny_model_dir, tmp_path):
    main(fit_args(tiny_model_dir, tmp_path))
    main(fit_args(tiny_model_dir, tmp_path, "--merge.adapter_only", "true"))
    both, adapter_only = sorted((tmp_path / "runs").glob("*/fit*"))
    for run in (both, adapter_only):
        config = json.loads((run / "adapter" / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == str(tiny_model_dir)
        assert "train.jsonl (4 records), 2 optimizer steps" in (run / "adapter" / CARD_FILE).read_text()
    assert (both / "merged" / "model.safetensors").is_file()
    assert not (adapter_only / "merged").exists()


def test_adapter_only_on_a_full_fine_tune_is_one_line_before_any_run_folder(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from tests.test_io_faults import sft_error

    args = fit_args(tiny_model_dir, tmp_path, "--model.peft_config", "null", "--merge.adapter_only", "true")
    assert sft_error(args, monkeypatch, capsys) == (
        "error: merge.adapter_only: true needs a PEFT method (model.peft_config): a full fine-tune has no adapter. "
        "Set merge.adapter_only: false to get the merged folder.")
    assert not (tmp_path / "runs").exists()
