"""Every training method a YAML switch away: each one learns, leaves its frozen weights
bit-identical and reports the trainable count PEFT reports; AdaLoRA prunes ranks on the trainer's
schedule; the CLI resumes and predicts with each; the multi head works with them; quantization and
bitsandbytes optimizers stop clearly without a GPU (and run on one)."""

import json
from functools import partial

import pytest
import torch
import yaml
from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig

from datamodules.sft_datamodule import SFTDataModule
from lightning_app.main import main
from modules.backbone.quantization import QuantizedKernelsMissingError, cpu_kernel_failure
from modules.heads import MultiHead
from modules.peft.adalora_budget import weigh_adalora_regulariser
from modules.peft.wrapping import AdaLoraConfig
from modules.sft_module import SFTModule
from tests.factories import QA_RECORDS, TYPED_RECORDS, qa_datamodule, quiet_trainer, sft_module, write_jsonl
from tests.tensorboard_reading import hparams_session
from tests.tiny import build_model, build_tokenizer
from tests.tolerances import assert_close_normwise, reordering_bound

ONE_PASS = reordering_bound(torch.float32)  # one forward of the tiny model (tests/tolerances.py)

# (peft config or None for full fine-tuning, AdamW learning rate that moves the loss in 15 steps)
METHODS = {
    "full": (lambda: None, 3e-3),
    "lora": (lambda: LoraConfig(r=4, lora_alpha=8), 1e-2),
    "dora": (lambda: LoraConfig(r=4, lora_alpha=8, use_dora=True), 1e-2),
    "rslora": (lambda: LoraConfig(r=4, lora_alpha=8, use_rslora=True), 1e-2),
    "adalora": (lambda: AdaLoraConfig(init_r=6, target_r=2, tinit=2, tfinal=3), 1e-2),
    "ia3": (lambda: IA3Config(), 0.1),
    "prefix": (lambda: PrefixTuningConfig(num_virtual_tokens=4), 0.1),
    "prompt": (lambda: PromptTuningConfig(num_virtual_tokens=4), 0.3),
    "ptuning": (lambda: PromptEncoderConfig(num_virtual_tokens=4, encoder_hidden_size=32), 0.03),
}


@pytest.fixture(scope="session")
def responsive_model_dir(tmp_path_factory):
    """The tiny Llama with weights drawn at std 0.2 instead of 0.02: at 0.02 its output is nearly
    uniform whatever the input, so methods that only change the input (prompt, prefix, P-tuning)
    could not move the loss at all, and their test would prove nothing."""
    folder = tmp_path_factory.mktemp("tiny-llama-responsive")
    torch.manual_seed(0)
    model = build_model("llama")
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 2:
                parameter.normal_(0.0, 0.2)
    model.save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def four_records(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", QA_RECORDS[:4])


def language_model_loss(module, batch) -> float:
    """The evaluation loss as val/loss reports it (AdaLoRA's regulariser left out, as in validation)."""
    weigh_adalora_regulariser(module.model, module.peft_config, 0.0)
    with torch.no_grad():
        return float(module.head.evaluation(module.model, batch)["loss"].value)


def peft_reported_trainable(module) -> int:
    if module.peft_config is None:
        return sum(parameter.numel() for parameter in module.model.parameters())
    return module.model.get_nb_trainable_parameters()[0]


@pytest.mark.parametrize("method", METHODS)
def test_method_learns_keeps_frozen_weights_and_counts_what_peft_counts(method, responsive_model_dir, four_records):
    make_config, lr = METHODS[method]
    module = sft_module(responsive_model_dir, peft_config=make_config(), lr_schedule="constant",
                        optimizer=partial(torch.optim.AdamW, lr=lr, weight_decay=0.0))
    datamodule = qa_datamodule(responsive_model_dir, four_records, batch_size=4)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    frozen_before = {n: p.detach().clone() for n, p in module.named_parameters() if not p.requires_grad}
    trained_before = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    start = language_model_loss(module, batch)

    quiet_trainer(max_steps=15).fit(module, datamodule)

    end = language_model_loss(module, batch)
    assert end < 0.9 * start, (method, start, end)
    after = dict(module.named_parameters())
    assert (len(frozen_before) == 0) == (method == "full")
    for name, before in frozen_before.items():
        assert torch.equal(before, after[name]), name
    unchanged = [name for name, before in trained_before.items() if torch.equal(before, after[name])]
    pruned_to_rank_0 = [name for name in unchanged if ".lora_E." in name and not after[name].any()]  # AdaLoRA
    assert unchanged == pruned_to_rank_0, unchanged
    assert module.trainable_parameters == sum(before.numel() for before in trained_before.values())
    assert module.trainable_parameters == peft_reported_trainable(module)


def test_adalora_prunes_ranks_on_the_schedule_of_the_trainers_steps(responsive_model_dir, four_records):
    config = AdaLoraConfig(init_r=6, target_r=2, tinit=0.1, tfinal=0.25, deltaT=1)  # 20 steps: 2, 5
    module = sft_module(responsive_model_dir, peft_config=config, lr_schedule="constant",
                        optimizer=partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.0))
    live = module.model.peft_config["default"]
    adapted_layers = len([n for n, _ in module.model.named_parameters() if "lora_E" in n])
    assert adapted_layers == 2 * 7 and live.total_step is None

    quiet_trainer(max_steps=20).fit(module, qa_datamodule(responsive_model_dir, four_records, batch_size=4))

    assert (live.total_step, live.tinit, live.tfinal) == (20, 2, 5)  # from the trainer, fractions resolved
    ranks = {name: sum(kept) for name, kept in live.rank_pattern.items()}
    assert sum(ranks.values()) == 2 * adapted_layers  # budget: target_r per layer on average
    assert len(set(ranks.values())) > 1  # redistributed: some layers kept more than others
    nonzero = {n: int((p != 0).sum()) for n, p in module.model.get_base_model().named_parameters() if "lora_E" in n}
    assert nonzero == ranks  # pruned singular values are exactly zero after the last step
    assert config.total_step is None  # the YAML's config object was not changed


@pytest.mark.numerics
def test_adalora_regulariser_counts_once_per_step_in_training_and_not_in_validation(responsive_model_dir,
                                                                                    four_records):
    module = sft_module(responsive_model_dir, peft_config=AdaLoraConfig(init_r=4, target_r=2, orth_reg_weight=0.5))
    datamodule = qa_datamodule(responsive_model_dir, four_records, batch_size=4)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    plain = module.model.get_base_model()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                          labels=batch["labels"]).loss.detach()  # AdaLoRA's E starts at 0: same outputs
    # kept-position logits against transformers' full ones: one pass's reordering (tests/tolerances.py, rule 2)
    assert_close_normwise(torch.tensor(language_model_loss(module, batch)), plain, ONE_PASS)
    weigh_adalora_regulariser(module.model, module.peft_config, 1 / 4)  # 4 micro-batches a step
    with_quarter = float(module.head.evaluation(module.model, batch)["loss"].value.detach())
    weigh_adalora_regulariser(module.model, module.peft_config, 1.0)
    with_whole = float(module.head.evaluation(module.model, batch)["loss"].value.detach())
    # 5 losses of ~plain's size enter the difference, each within one pass's reordering of it (rule 2)
    assert with_whole - float(plain) == pytest.approx(4 * (with_quarter - float(plain)), abs=5 * ONE_PASS * float(plain))
    assert with_whole > float(plain) + 1e-3


CLI_METHODS = {
    "lora": {"class_path": "peft.LoraConfig", "init_args": {"r": 4, "lora_alpha": 8}},
    "ia3": {"class_path": "peft.IA3Config"},
    "prefix": {"class_path": "peft.PrefixTuningConfig", "init_args": {"num_virtual_tokens": 3}},
    "prompt": {"class_path": "peft.PromptTuningConfig", "init_args": {"num_virtual_tokens": 3}},
    "adalora": {"class_path": "modules.peft.wrapping.AdaLoraConfig",
                "init_args": {"init_r": 4, "target_r": 2, "tinit": 0, "tfinal": 1}},
}


def write_cli_config(tmp_path, model_dir, peft_config: dict) -> str:
    unlabeled = [{k: v for k, v in record.items() if k != "answer"} for record in TYPED_RECORDS]
    config = {
        "seed_everything": 7,
        "trainer": {"accelerator": "cpu", "max_steps": 2, "log_every_n_steps": 1, "enable_progress_bar": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": "runs", "name": "tiny"}}},
        "model": {"model_name_or_path": str(model_dir), "peft_config": peft_config,
                  "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}},
                  "generation": {"max_new_tokens": 2}, "generation_per_type": {}},
        "data": {"train_path": write_jsonl(tmp_path / "train.jsonl", TYPED_RECORDS),
                 "predict_path": write_jsonl(tmp_path / "test.jsonl", unlabeled), "format": "typed", "batch_size": 2},
        "merge": {"enabled": False},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.parametrize("method", CLI_METHODS)
def test_cli_fits_resumes_from_last_and_predicts(method, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_cli_config(tmp_path, tiny_model_dir, CLI_METHODS[method])
    main(["fit", "--config", config])
    run_dir = tmp_path / "runs" / "tiny" / "fit"
    first = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    params = hparams_session(run_dir)
    # A PEFT checkpoint holds exactly the trainable weights: the logged count must be their size.
    assert params["trainable_parameters"] == sum(tensor.numel() for tensor in first["state_dict"].values())

    main(["fit", "--config", config, "--trainer.max_steps", "4", "--ckpt_path", "last"])
    resumed = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert (first["global_step"], resumed["global_step"]) == (2, 4)
    assert not (tmp_path / "runs" / "tiny" / "fit_1").exists()  # same run directory
    assert any(not torch.equal(first["state_dict"][name], resumed["state_dict"][name]) for name in first["state_dict"])
    if method == "adalora":  # final ranks fixed at the last step of each fit (tfinal 1): kept in the checkpoint
        assert first["adalora_budget"]["rank_pattern"] and resumed["adalora_budget"]["rank_pattern"]

    main(["predict", "--config", config, "--ckpt_path", "last"])
    answers = json.loads((tmp_path / "runs" / "tiny" / "predict" / "predictions.json").read_text())
    assert [row["id"] for row in answers["result"]["results"]] == [record["id"] for record in TYPED_RECORDS]


@pytest.mark.parametrize("peft_config", [PromptTuningConfig(num_virtual_tokens=3),
                                         AdaLoraConfig(init_r=4, target_r=2, tinit=0, tfinal=1)],
                         ids=["prompt-tuning", "adalora"])
def test_multi_head_trains_with_the_method(peft_config, tiny_model_dir, tmp_path):
    module = sft_module(tiny_model_dir, head=MultiHead(), peft_config=peft_config,
                        optimizer=partial(torch.optim.AdamW, lr=1e-2))
    frozen_before = {n: p.detach().clone() for n, p in module.named_parameters() if not p.requires_grad}
    classifier_before = module.head.classifier.weight.detach().clone()
    datamodule = typed_datamodule(tiny_model_dir, write_jsonl(tmp_path / "typed.jsonl", TYPED_RECORDS))
    quiet_trainer(max_steps=4).fit(module, datamodule)
    classifier_size = sum(p.numel() for p in module.head.parameters())
    assert module.trainable_parameters == module.model.get_nb_trainable_parameters()[0] + classifier_size
    assert not torch.equal(classifier_before, module.head.classifier.weight)
    after = dict(module.named_parameters())
    assert all(torch.equal(before, after[name]) for name, before in frozen_before.items())
    if isinstance(peft_config, AdaLoraConfig):
        assert module.model.peft_config["default"].rank_pattern  # the budget ran under the multi head too


def typed_datamodule(model_dir, path: str) -> SFTDataModule:
    return SFTDataModule(train_path=path, format="typed", batch_size=2, group_by_length=False,
                         tokenizer_name_or_path=str(model_dir))


# Quantization and bitsandbytes optimizers ---------------------------------------------------------
def test_quantization_without_an_adapter_is_refused_at_configuration(tiny_model_dir):
    with pytest.raises(ValueError, match="needs a model.peft_config"):
        SFTModule(str(tiny_model_dir), quantization="4bit")


def test_quantized_loading_where_kernels_fail_stops_before_the_model_is_looked_up(monkeypatch):
    import modules.backbone.loading
    from modules.backbone import quantization

    monkeypatch.setattr(quantization.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(quantization, "cpu_kernel_failure", lambda mode: "ImportError: no libbitsandbytes_cpu")
    monkeypatch.setattr(modules.backbone.loading, "resolve_model_path", lambda name: pytest.fail("looked the model up"))
    with pytest.raises(QuantizedKernelsMissingError, match="drop model.quantization or run on a CUDA GPU"):
        modules.backbone.loading.load_causal_lm("smollm2-135m-instruct", quantization="8bit")


def test_this_cpus_bitsandbytes_kernels_run_both_formats_and_leave_the_random_state_alone():
    cpu_kernel_failure.cache_clear()
    before = torch.get_rng_state()
    assert cpu_kernel_failure("4bit") is None and cpu_kernel_failure("8bit") is None
    assert torch.equal(torch.get_rng_state(), before)  # else a run's adapter init would depend on the probe


# One fit a format: the layers bitsandbytes put in, a trained adapter, and the precision the CPU takes
# (float32 compute for 4-bit on a CPU without bf16 instructions, as the run's own matmuls).
QUANTIZED_LAYERS = {"4bit": "Linear4bit", "8bit": "Linear8bitLt"}


@pytest.mark.parametrize("quantization", QUANTIZED_LAYERS)
def test_lora_fits_steps_on_a_quantized_base(tiny_model_dir, four_records, quantization):
    module = SFTModule(str(tiny_model_dir), peft_config=LoraConfig(r=4), quantization=quantization)
    precision = "bf16-mixed" if torch.cuda.is_available() else "32-true"
    quiet_trainer(max_steps=2, precision=precision).fit(module, qa_datamodule(tiny_model_dir, four_records, batch_size=4))
    base = module.model.get_base_model()
    assert type(base.model.layers[0].self_attn.q_proj.base_layer).__name__ == QUANTIZED_LAYERS[quantization]
    assert getattr(base, f"is_loaded_in_{quantization}")
    if quantization == "4bit":
        expected = torch.bfloat16 if precision == "bf16-mixed" else torch.float32
        assert base.model.layers[0].self_attn.q_proj.base_layer.compute_dtype == expected
    assert module.trainable_parameters == module.model.get_nb_trainable_parameters()[0]
    assert any(float(p.abs().sum()) > 0 for n, p in module.model.named_parameters() if "lora_B" in n)


@pytest.mark.parametrize("name", ["AdamW8bit", "PagedAdamW"])
def test_bitsandbytes_optimizers_fit_steps(tiny_model_dir, four_records, name):
    import bitsandbytes

    module = sft_module(tiny_model_dir, peft_config=LoraConfig(r=4),
                        optimizer=partial(getattr(bitsandbytes.optim, name), lr=1e-3))
    trainer = quiet_trainer(max_steps=2)
    if name.startswith("Paged") and not torch.cuda.is_available():
        with pytest.warns(UserWarning, match="PagedAdamW pages its states .* without a CUDA GPU it runs unpaged"):
            trainer.fit(module, qa_datamodule(tiny_model_dir, four_records, batch_size=4))
    else:
        trainer.fit(module, qa_datamodule(tiny_model_dir, four_records, batch_size=4))
    assert type(trainer.optimizers[0]).__name__ == name and trainer.global_step == 2
    assert any(float(p.abs().sum()) > 0 for n, p in module.model.named_parameters() if "lora_B" in n)
