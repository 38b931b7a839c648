"""`make test`'s second pass (tests/other_cpu.py): on a CPU with more than AVX2 the numerical tests run
again on AVX2 kernels; on an AVX2 or ARM one nothing runs twice."""

import subprocess

import pytest
import torch

from tests import other_cpu


@pytest.fixture
def calls(monkeypatch):
    seen = []
    monkeypatch.setattr(subprocess, "call", lambda command, env: seen.append((command, env)) or 0)
    return seen


def test_an_avx512_cpu_runs_the_numerical_tests_again_on_avx2_kernels(calls, monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert other_cpu.main(["-x"]) == 0
    [(command, env)] = calls
    assert command[-3:] == ["-m", "numerics", "-x"]
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["ONEDNN_MAX_CPU_ISA"] == "AVX2"


@pytest.mark.parametrize("capability", ["AVX2", "DEFAULT", "SVE256"])
def test_a_cpu_without_more_runs_nothing_twice(calls, monkeypatch, capability, capsys):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert other_cpu.main([]) == 0 and calls == []
    assert f"this CPU's kernels are {capability} already" in capsys.readouterr().out


def marks(test) -> set[str]:
    return {mark.name for mark in getattr(test, "pytestmark", [])}


def test_the_tests_that_compare_two_computations_are_marked():
    """The padding-free fit (the one that failed on AVX2) and the packed-batch tests are in the second pass."""
    from tests import test_packing, test_training

    assert "numerics" in marks(test_packing.test_fit_with_padding_free_gives_the_same_step_losses_as_padded)
    assert "numerics" in marks(test_packing.test_packed_batch_trains_exactly_as_its_examples_one_by_one)
    assert "numerics" in marks(test_training.test_accumulating_4_micro_batches_of_2_equals_one_batch_of_8)
    assert "numerics" not in marks(test_training.test_overfits_four_examples)  # a learning test, not a comparison
