"""model.liger_kernels: refused with one line where it cannot work (no GPU, no package), and on a
GPU with liger-kernel installed the loss and gradients equal the plain model's (GPU-marked)."""

import copy
import importlib.util
import sys

import pytest
import torch

import modules.sft_module as sft_module
from lightning_app.main import console_main
from modules.backbone.kernels import apply_liger_kernels, require_liger
from tests.factories import TYPED_RECORDS, write_jsonl

HAS_LIGER = importlib.util.find_spec("liger_kernel") is not None
ON_GPU_WITH_LIGER = pytest.mark.skipif(not (torch.cuda.is_available() and HAS_LIGER),
                                       reason="Liger's Triton kernels need a CUDA GPU and liger-kernel (pip install -e '.[liger]')")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without a CUDA GPU gives")
def test_without_a_gpu_the_fit_stops_before_the_model_loads(tiny_model_dir, tmp_path, monkeypatch, capsys):
    loads = []
    monkeypatch.setattr(sft_module, "load_causal_lm", lambda *args, **kwargs: loads.append(args))
    train = write_jsonl(tmp_path / "train.jsonl", TYPED_RECORDS)
    monkeypatch.setattr(sys, "argv", ["sft", "fit", "--model.model_name_or_path", str(tiny_model_dir),
                                      "--model.liger_kernels", "true", "--data.train_path", train,
                                      "--trainer.max_steps", "1", "--trainer.default_root_dir", str(tmp_path / "runs")])
    with pytest.raises(SystemExit) as stopped:
        console_main()
    assert stopped.value.code == 2 and loads == []
    err = capsys.readouterr().err
    [error] = [line for line in err.splitlines() if line.startswith("error: ")]
    assert error.startswith("error: model.liger_kernels: ") and "no GPU is visible" in error
    assert "Traceback" not in err


def test_off_asks_for_nothing():
    require_liger(False)  # no GPU and no package needed


@pytest.mark.skipif(HAS_LIGER or not torch.cuda.is_available(), reason="checks a GPU machine without liger-kernel")
def test_a_missing_package_is_named():
    with pytest.raises(ValueError, match=r"pip install -e '\.\[liger\]'"):
        require_liger(True)


def _loss_and_grads(model, batch) -> tuple[torch.Tensor, dict]:
    model.zero_grad()
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@ON_GPU_WITH_LIGER
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_liger_gives_the_plain_loss_and_gradients(family, tiny_model_dir, tiny_qwen_dir):
    from transformers import AutoModelForCausalLM

    folder = tiny_model_dir if family == "llama" else tiny_qwen_dir
    plain = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).cuda()
    patched = copy.deepcopy(plain)
    input_ids = torch.randint(0, 256, (2, 24), device="cuda")
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    plain_loss, plain_grads = _loss_and_grads(plain, batch)
    apply_liger_kernels(patched)
    assert any("Liger" in type(module).__name__ for module in patched.modules())  # really swapped in
    liger_loss, liger_grads = _loss_and_grads(patched, batch)
    torch.testing.assert_close(liger_loss, plain_loss, rtol=1e-5, atol=1e-5)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(liger_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


@ON_GPU_WITH_LIGER
def test_an_unknown_family_is_refused(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config.model_type = "not-a-family"
    with pytest.raises(ValueError, match="Liger has no kernels for model type 'not-a-family'"):
        apply_liger_kernels(model)
