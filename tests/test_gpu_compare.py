"""The GPU table's pipeline, on a CPU: random weights from an architecture's config.json
(``model.init_from_config``), an architecture folder prepared like benchmarks/architectures/qwen3-0.6b,
and the four benchmarks/gpu configs fitted and compared by benchmarks/compare_methods.py on a tiny one."""

import json
import math
import tarfile
from pathlib import Path

import pytest
import torch
import yaml
from peft import LoraConfig
from transformers import AutoModelForCausalLM, Qwen3Config

from benchmarks import compare_methods as gpu_compare
from benchmarks.prepare_architecture import prepare_architecture
from core.tokenizer import ModelLoadError, load_tokenizer
from evaluation.curves import read_loss_curves
from modules.backbone.loading import load_causal_lm
from modules.sft_module import SFTModule
from tests.factories import BF16_CONFIG_ON_THIS_CPU, QA_RECORDS, qa_datamodule, quiet_trainer, write_jsonl
from tests.test_callbacks_metrics import table_cells
from tests.tiny import END_OF_TEXT, IM_END, VOCAB_SIZE

pytestmark = BF16_CONFIG_ON_THIS_CPU  # the benchmark's configs are written for GPUs
PROJECT_ROOT = Path(__file__).resolve().parents[1]
QWEN3_FOLDER = PROJECT_ROOT / "benchmarks" / "architectures" / "qwen3-0.6b"
COLUMNS = ["run", "method", "optimizer", "trainable %", "peak memory (MiB)", "time/epoch (s)", "tokens/s",
           "final train loss", "final val loss"]


@pytest.fixture(scope="module")
def tiny_architecture(tiny_model_dir, tmp_path_factory) -> Path:
    """A Qwen3 architecture folder as committed (config.json only, Qwen's own token ids), prepared
    with the tiny tokenizer the way gpu_prepare.sh prepares qwen3-0.6b with SmolLM2's."""
    folder = tmp_path_factory.mktemp("tiny-qwen3-architecture")
    config = Qwen3Config(vocab_size=VOCAB_SIZE + 4, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=True,
                         bos_token_id=151643, eos_token_id=151645, pad_token_id=None)
    (folder / "config.json").write_text(config.to_json_string())
    prepare_architecture(folder, str(tiny_model_dir))
    return folder


# Random weights from a config -----------------------------------------------------------------------
def test_init_from_config_has_the_saved_models_shapes_and_fresh_weights(tiny_model_dir):
    saved = load_causal_lm(str(tiny_model_dir))
    torch.manual_seed(1)  # the tiny model was saved from seed 0's draws: seed 0 would draw it again
    random = load_causal_lm(str(tiny_model_dir), init_from_config=True)
    saved_weights, random_weights = dict(saved.named_parameters()), dict(random.named_parameters())
    assert {name: p.shape for name, p in random_weights.items()} == {name: p.shape for name, p in saved_weights.items()}
    matrices = [name for name, p in random_weights.items() if p.ndim == 2]
    assert len(matrices) == 16  # the embedding, 7 linear layers in each of 2 blocks, the (untied) LM head
    for name in matrices:
        assert not torch.equal(random_weights[name], saved_weights[name]), name
        assert random_weights[name].std().item() == pytest.approx(random.config.initializer_range, rel=0.2), name
    assert random.config.to_diff_dict() | {"dtype": None} == saved.config.to_diff_dict() | {"dtype": None}


def test_init_from_config_is_fixed_by_the_seed_and_takes_the_dtype(tiny_model_dir):
    torch.manual_seed(42)
    first = load_causal_lm(str(tiny_model_dir), init_from_config=True)
    torch.manual_seed(42)
    second = load_causal_lm(str(tiny_model_dir), dtype="bfloat16", init_from_config=True)
    assert {p.dtype for p in second.parameters()} == {torch.bfloat16}
    for (name, p), q in zip(first.named_parameters(), second.parameters()):
        assert torch.equal(p.to(torch.bfloat16), q), name  # same draws, only rounded: the seed fixes them


def test_init_from_config_reads_no_weight_file(tiny_architecture):
    assert not list(tiny_architecture.glob("*.safetensors"))
    model = load_causal_lm(str(tiny_architecture), init_from_config=True)
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tie_word_embeddings honoured
    with pytest.raises(ModelLoadError, match="has no weights file"):
        load_causal_lm(str(tiny_architecture))  # the ordinary path still wants weights


def test_init_from_config_is_not_saved_as_a_hyperparameter(tiny_model_dir):
    module = SFTModule(str(tiny_model_dir), init_from_config=True)
    assert dict(module.hparams) == {"model_name_or_path": str(tiny_model_dir)}


# The architecture folder ----------------------------------------------------------------------------
def test_prepare_architecture_adds_the_chat_tokenizer_and_its_token_ids(tiny_architecture):
    config = json.loads((tiny_architecture / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (None, IM_END, IM_END)
    assert config["hidden_size"] == 32 and config["model_type"] == "qwen3"  # the rest left as it was
    tokenizer = load_tokenizer(str(tiny_architecture))
    assert tokenizer.chat_template and tokenizer.eos_token_id == IM_END and len(tokenizer) == END_OF_TEXT + 1


def test_prepare_architecture_refuses_a_tokenizer_larger_than_the_vocabulary(tiny_model_dir, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3", "vocab_size": 100}))
    with pytest.raises(ValueError, match=f"has {END_OF_TEXT + 1} tokens but .* has vocab_size 100"):
        prepare_architecture(tmp_path, str(tiny_model_dir))
    assert not (tmp_path / "tokenizer.json").exists()


def test_the_committed_architecture_is_qwen3_0_6b():
    config = Qwen3Config.from_pretrained(QWEN3_FOLDER)
    shape = (config.vocab_size, config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
             config.num_key_value_heads, config.head_dim, config.intermediate_size, config.max_position_embeddings)
    assert shape == (151936, 1024, 28, 16, 8, 128, 3072, 40960)
    assert config.tie_word_embeddings and config.rope_parameters["rope_theta"] == 1e6 and config.rms_norm_eps == 1e-6
    # SmolLM2's <|im_start|> and <|im_end|>, what prepare_architecture.py sets from that tokenizer
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (1, 2, 2)
    with torch.device("meta"):  # shapes only, no memory
        model = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == 596_049_920


# The four configs and the flow ----------------------------------------------------------------------
def without_method(config: dict) -> dict:
    config = json.loads(json.dumps(config))
    del config["trainer"]["logger"]["init_args"]["name"]
    for key in ("peft_config", "optimizer", "quantization"):
        config["model"].pop(key, None)
    return config


def test_the_four_configs_differ_only_in_method_optimizer_and_run_name():
    configs = {method: yaml.safe_load(gpu_compare.config_path(method).read_text()) for method in gpu_compare.METHODS}
    assert all(without_method(config) == without_method(configs["lora"]) for config in configs.values())
    assert {method: config["trainer"]["logger"]["init_args"]["name"] for method, config in configs.items()} == {
        method: f"qwen3_0.6b_{method}" for method in gpu_compare.METHODS}
    qlora = dict(configs["qlora"]["model"])
    assert qlora.pop("quantization") == "4bit" and qlora == configs["lora"]["model"]  # QLoRA = LoRA on a 4-bit base
    base = configs["lora"]
    assert base["model"]["init_from_config"] and base["trainer"]["max_epochs"] == 1
    assert base["data"]["train_path"] == "data/bundled/train.jsonl" and not base["merge"]["enabled"]


@pytest.fixture(scope="module")
def benchmark(tiny_architecture, tmp_path_factory):
    """run_benchmark on the tiny architecture: two training steps per method, on the CPU."""
    root = tmp_path_factory.mktemp("gpu-table")
    fit_args = ["--model.model_name_or_path", str(tiny_architecture), "--trainer.accelerator", "cpu",
                "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
                "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                "--data.max_length", "128", "--data.batch_size", "2", "--data.eval_batch_size", "2"]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(PROJECT_ROOT)  # the configs' data paths are relative to the project
        run_dirs, failures = gpu_compare.run_benchmark(list(gpu_compare.METHODS), root / "runs", root / "out",
                                                       fit_args, in_process=True)
    return run_dirs, failures, root / "out"


def test_benchmark_compares_one_row_per_method(benchmark):
    run_dirs, failures, out = benchmark
    methods = ["full_adamw", "full_sgd", "lora", "qlora"]  # bitsandbytes runs QLoRA on a CPU too
    assert [run_dir.parent.name for run_dir in run_dirs] == [f"qwen3_0.6b_{method}" for method in methods]
    table = [line for line in (out / "comparison.md").read_text().split("## Details")[0].splitlines()
             if line.startswith("|")]
    assert table_cells(table[0]) == COLUMNS and len(table) == 2 + len(methods)
    rows = [dict(zip(COLUMNS, table_cells(line))) for line in table[2:]]
    assert [row["run"] for row in rows] == [f"qwen3_0.6b_{method}/fit" for method in methods]
    assert [(row["method"], row["optimizer"]) for row in rows[:3]] == [
        ("full", "AdamW (lr 2e-05)"), ("full", "SGD (lr 0.02)"), ("LoraConfig", "AdamW (lr 0.0005)")]
    assert [float(row["trainable %"]) for row in rows[:2]] == [100.0, 100.0] and float(rows[2]["trainable %"]) < 100
    for row in rows:
        assert float(row["tokens/s"]) > 0 and float(row["time/epoch (s)"]) > 0
        # random weights predict nearly uniformly: the loss starts at about ln(vocabulary)
        assert float(row["final val loss"]) == pytest.approx(math.log(VOCAB_SIZE + 4), abs=0.5)


def test_benchmark_runs_are_the_configs_on_the_same_random_weights(benchmark, tiny_architecture):
    run_dirs, _, _ = benchmark
    first_losses = []
    for run_dir in run_dirs:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["model"]["init_from_config"] is True
        assert config["model"]["model_name_or_path"] == str(tiny_architecture)
        assert config["trainer"]["precision"] == "bf16-mixed"
        assert not list(run_dir.glob("checkpoints/*.ckpt")) and not (run_dir / "merged").exists()
        train_steps, train_losses = read_loss_curves(run_dir)["train/loss"]
        assert train_steps == [0, 1]  # a loss point per optimizer step
        first_losses.append(train_losses[0])
    # The seed fixes the random weights and the batch order: before any update (LoRA's B starts at
    # zero) every method computes the same loss on the same first batch; QLoRA's on the same weights
    # rounded to 4 bits (NF4 moves each weight by up to ~1/14 of its block's largest: the loss a little).
    quantized = [run_dir.parent.name.endswith("qlora") for run_dir in run_dirs]
    plain = [loss for loss, is_quantized in zip(first_losses, quantized) if not is_quantized]
    assert plain == pytest.approx([plain[0]] * len(plain), rel=1e-4)
    for loss, is_quantized in zip(first_losses, quantized):
        assert not is_quantized or loss == pytest.approx(plain[0], rel=1e-2)


def test_benchmark_writes_details_curves_and_the_runs_bundle(benchmark):
    run_dirs, failures, out = benchmark
    details = (out / "comparison.md").read_text().split("## Details")[1]
    assert sum(line.startswith("| qwen3_0.6b_") for line in details.splitlines()) == len(run_dirs)
    assert "Measured on " in details and "transformers " in details
    assert (out / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"
    with tarfile.open(out / "runs.tar.gz") as tar:
        names = set(tar.getnames())
    for run_dir in run_dirs:
        prefix = f"{run_dir.parent.name}/{run_dir.name}/"
        assert {prefix + "summary.json", prefix + "summary.md", prefix + "config.yaml"} <= names
        assert any(name.startswith(prefix + "events.out.tfevents.") for name in names)


def test_benchmark_runs_every_row_qlora_included(benchmark):
    run_dirs, failures, out = benchmark
    assert failures == {} and "Failed" not in (out / "comparison.md").read_text()
    assert len(run_dirs) == 4  # bitsandbytes' kernels run QLoRA on a CPU too


def test_benchmark_stops_before_any_fit_when_the_tokenizer_was_not_prepared(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.chdir(PROJECT_ROOT)
    with pytest.raises(FileNotFoundError, match="gpu_prepare.sh"):
        gpu_compare.run_benchmark(["lora"], tmp_path / "runs", tmp_path / "out",
                                  ["--model.model_name_or_path", str(tmp_path)], in_process=True)
    assert not (tmp_path / "runs").exists()


# On a GPU -------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bitsandbytes)")
def test_qlora_on_random_weights_quantizes_the_base_and_trains(tiny_architecture, tmp_path):
    module = SFTModule(str(tiny_architecture), init_from_config=True, peft_config=LoraConfig(r=4),
                       quantization="4bit")
    records = write_jsonl(tmp_path / "train.jsonl", QA_RECORDS[:4])
    quiet_trainer(accelerator="gpu", max_steps=2, precision="bf16-mixed").fit(
        module, qa_datamodule(tiny_architecture, records, batch_size=4))
    base = module.model.get_base_model()
    assert base.is_loaded_in_4bit and type(base.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    assert any(float(p.abs().sum()) > 0 for n, p in module.model.named_parameters() if "lora_B" in n)
