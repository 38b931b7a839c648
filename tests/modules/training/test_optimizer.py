"""Adam(W) without a chosen implementation gets PyTorch's fused step (the per-tensor loop is ~7x
slower on a CPU); the user's choice, other optimizers and the parameter groups are kept."""

import pytest
import torch

from modules.training.optimizer import parameter_groups, with_fused_step
from tests.tolerances import assert_same_updates, reordering_bound


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))


def _step(optimizer, model) -> None:
    loss = model(torch.randn(3, 4)).square().sum()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


@pytest.mark.numerics
@pytest.mark.parametrize("optimizer_class", [torch.optim.AdamW, torch.optim.Adam])
def test_the_fused_step_keeps_groups_and_gives_the_same_update(optimizer_class):
    plain_model, fused_model = _model(), _model()
    initial = {name: weight.detach().clone() for name, weight in plain_model.named_parameters()}
    plain = optimizer_class(parameter_groups(plain_model.named_parameters(), None), lr=0.1, weight_decay=0.1)
    fused = with_fused_step(optimizer_class(parameter_groups(fused_model.named_parameters(), None), lr=0.1,
                                            weight_decay=0.1))
    assert fused.defaults["fused"] and all(group["fused"] for group in fused.param_groups)
    assert [group["weight_decay"] for group in fused.param_groups] == [0.1, 0.0]  # no decay on biases and norms
    for _ in range(3):
        torch.manual_seed(1)
        _step(plain, plain_model)
        torch.manual_seed(1)
        _step(fused, fused_model)
    # Adam is elementwise (~10 roundings an entry a step) and the gradients are the same kernels' on both
    # sides until the weights part: 3 steps of that, on the updates (tests/tolerances.py, rule 3)
    assert_same_updates(dict(fused_model.named_parameters()), dict(plain_model.named_parameters()), initial,
                        3 * reordering_bound(torch.float32, terms=1, depth=10))


@pytest.mark.parametrize("choice", [{"foreach": True}, {"foreach": False}, {"fused": False}])
def test_a_chosen_implementation_is_kept(choice):
    optimizer = torch.optim.AdamW(_model().parameters(), **choice)
    assert with_fused_step(optimizer) is optimizer


def test_other_optimizers_are_left_alone():
    optimizer = torch.optim.SGD(_model().parameters(), lr=0.1)
    assert with_fused_step(optimizer) is optimizer


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_gradient_clipping_works_with_the_fused_step(tiny_model_dir, tmp_path, precision):
    """Lightning refuses to clip for an optimizer that unscales fp16 gradients itself; ours leaves that
    to the scaler, so a clipped fit runs and its clipped norm is what it logs."""
    from tests.factories import QA_RECORDS, qa_datamodule, quiet_trainer, sft_module, write_jsonl

    module = sft_module(tiny_model_dir, optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3))
    trainer = quiet_trainer(precision=precision, max_steps=2, gradient_clip_val=1e-3)
    trainer.fit(module, qa_datamodule(tiny_model_dir, write_jsonl(tmp_path / "qa.jsonl", QA_RECORDS), 2))
    optimizer = trainer.optimizers[0]
    assert optimizer.defaults["fused"] and trainer.global_step == 2
    total_norm = torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in module.parameters() if p.grad is not None]))
    assert total_norm <= 1e-3 * (1 + 1e-4)  # the last step's gradients were clipped to the limit
