"""The Trainer's precision, chosen for the machine: the decision from hand-given capabilities, the
warning for bf16 on a CPU without bf16, and the CLI applying both before the Trainer is built."""

import pytest
import torch
import yaml

from lightning_app.cli import SFTCLI
from lightning_app.main import main
from modules.training.precision import Capabilities, choose_precision, device_kind, precision_warning, probe
from tests.factories import TYPED_RECORDS, write_jsonl

AVX2_CPU = Capabilities(cpu_isa="AVX2", onednn_bf16=False)  # bf16 matmuls take the slow fallback
AVX512_CPU = Capabilities(cpu_isa="AVX512", onednn_bf16=True)  # oneDNN emulates bf16 with fp32 instructions
AVX512_BF16_CPU = Capabilities(cpu_isa="AVX512", onednn_bf16=True, bf16_instructions=("avx512_bf16",))
AMX_CPU = Capabilities(cpu_isa="AVX512", onednn_bf16=True, bf16_instructions=("avx512_bf16", "amx_bf16"))
ARM_BF16_CPU = Capabilities(cpu_isa="DEFAULT", onednn_bf16=True, bf16_instructions=("bf16",))
NO_ONEDNN_BF16 = Capabilities(cpu_isa="AVX512", onednn_bf16=False, bf16_instructions=("avx512_bf16",))


@pytest.mark.parametrize(("kind", "capabilities", "expected"), [
    ("cuda", Capabilities(cuda_bf16=True), "bf16-mixed"),
    ("cuda", Capabilities(cuda_bf16=False), "16-mixed"),
    ("cuda", AVX512_BF16_CPU, "16-mixed"),  # the CPU does not matter when the GPU runs
    ("cpu", AVX512_BF16_CPU, "bf16-mixed"),
    ("cpu", AMX_CPU, "bf16-mixed"),
    ("cpu", ARM_BF16_CPU, "bf16-mixed"),
    ("cpu", AVX2_CPU, "32-true"),
    ("cpu", AVX512_CPU, "32-true"),
    ("cpu", NO_ONEDNN_BF16, "32-true"),
    ("cpu", Capabilities(cpu_isa="AVX2", cuda_bf16=True), "32-true"),  # a forced CPU on a GPU machine
    ("other", AVX512_BF16_CPU, "32-true"),  # MPS, TPU: Lightning's default
])
def test_precision_follows_the_device_that_runs(kind, capabilities, expected):
    assert choose_precision(kind, capabilities).precision == expected


def test_the_printed_line_says_what_decided():
    assert choose_precision("cpu", AVX2_CPU).line() == "precision: 32-true (this CPU has no bf16 instructions: AVX2)"
    assert choose_precision("cpu", AMX_CPU).line() == (
        "precision: bf16-mixed (this CPU has bf16 instructions: avx512_bf16, amx_bf16)")
    assert choose_precision("cpu", NO_ONEDNN_BF16).reason == "torch has no oneDNN bf16 kernels for this CPU: AVX512"
    assert choose_precision("cuda", Capabilities()).line() == (
        "precision: 16-mixed (this GPU has no bf16: compute capability below 8.0)")


@pytest.mark.parametrize(("accelerator", "cuda", "mps", "expected"), [
    ("cpu", True, False, "cpu"),
    ("auto", False, False, "cpu"),
    ("auto", True, False, "cuda"),
    ("gpu", True, False, "cuda"),
    ("CUDA", True, False, "cuda"),
    ("auto", False, True, "other"),  # Lightning picks MPS on a Mac
    ("gpu", False, True, "other"),
    ("gpu", False, False, "other"),  # Lightning raises its own error
    ("mps", False, True, "other"),
    ({"class_path": "my.Accelerator"}, True, False, "other"),
])
def test_device_kind_follows_lightnings_choice_of_accelerator(accelerator, cuda, mps, expected):
    assert device_kind(accelerator, cuda_available=cuda, mps_available=mps) == expected


def test_bf16_on_a_cpu_without_bf16_warns_with_the_measurement_and_the_fix():
    warning = precision_warning("bf16-mixed", "cpu", AVX2_CPU)
    assert warning.startswith("trainer.precision is bf16-mixed, but this CPU has no bf16 instructions: AVX2. ")
    assert "0.3 GFLOP/s" in warning and "105 GFLOP/s" in warning
    assert "Remove trainer.precision" in warning and "--trainer.precision 32-true" in warning
    emulated = precision_warning("bf16-true", "cpu", AVX512_CPU)  # not slow, but no gain either
    assert "emulates bf16" in emulated and "300x" not in emulated and "--trainer.precision 32-true" in emulated


@pytest.mark.parametrize(("precision", "kind", "capabilities"), [
    ("32-true", "cpu", AVX2_CPU),
    ("bf16-mixed", "cpu", AVX512_BF16_CPU),
    ("bf16-mixed", "cuda", AVX2_CPU),  # the GPU multiplies, not the CPU
    ("16-mixed", "cuda", Capabilities()),
])
def test_no_warning_where_the_precision_suits_the_machine(precision, kind, capabilities):
    assert precision_warning(precision, kind, capabilities) is None


def test_probe_reports_torchs_answers_and_leaves_cuda_alone_for_a_cpu_run():
    cuda_was_initialized = torch.cuda.is_initialized()
    capabilities = probe("cpu")
    assert capabilities.cpu_isa == torch.backends.cpu.get_cpu_capability()
    assert capabilities.onednn_bf16 == torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert capabilities.cuda_bf16 is False
    assert torch.cuda.is_initialized() == cuda_was_initialized  # a CPU run asks nothing of the GPU


@pytest.fixture
def config_without_precision(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = {
        "trainer": {"accelerator": "cpu", "max_steps": 1, "enable_progress_bar": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": "runs", "name": "tiny"}}},
        "model": {"model_name_or_path": str(tiny_model_dir),
                  "peft_config": {"class_path": "peft.LoraConfig", "init_args": {"r": 4, "lora_alpha": 8}}},
        "data": {"train_path": write_jsonl(tmp_path / "train.jsonl", TYPED_RECORDS), "format": "typed",
                 "batch_size": 2},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def on_cpu(monkeypatch, capabilities: Capabilities) -> None:
    monkeypatch.setattr("lightning_app.cli.probe", lambda kind: capabilities)


@pytest.mark.parametrize(("capabilities", "expected"), [(AVX2_CPU, "32-true"), (AVX512_BF16_CPU, "bf16-mixed")])
def test_cli_chooses_the_precision_when_the_config_sets_none(config_without_precision, monkeypatch, capsys,
                                                            capabilities, expected):
    on_cpu(monkeypatch, capabilities)
    cli = SFTCLI(args=["--config", config_without_precision], run=False)  # as `sft inspect` does
    assert cli.trainer.precision == expected
    assert capsys.readouterr().out.splitlines()[0] == choose_precision("cpu", capabilities).line()


def test_cli_keeps_an_explicit_precision(config_without_precision, monkeypatch):
    on_cpu(monkeypatch, AVX512_BF16_CPU)
    cli = SFTCLI(args=["--config", config_without_precision, "--trainer.precision", "32-true"], run=False)
    assert cli.trainer.precision == "32-true"


def test_cli_keeps_bf16_on_a_cpu_without_it_but_warns(config_without_precision, monkeypatch):
    on_cpu(monkeypatch, AVX2_CPU)
    with pytest.warns(UserWarning, match=r"0\.3 GFLOP/s .* Remove trainer\.precision"):
        cli = SFTCLI(args=["--config", config_without_precision, "--trainer.precision", "bf16-mixed"], run=False)
    assert cli.trainer.precision == "bf16-mixed"


def test_a_fit_saves_the_chosen_precision_in_its_config(config_without_precision, monkeypatch, tmp_path):
    """config.yaml is what ran: the chosen precision, not the null the YAML left."""
    on_cpu(monkeypatch, AVX2_CPU)
    main(["fit", "--config", config_without_precision])
    saved = yaml.safe_load((tmp_path / "runs" / "tiny" / "fit" / "config.yaml").read_text())
    assert saved["trainer"]["precision"] == "32-true"
