import os

import pytest
import torch

from tests.tiny import build_tokenizer, save_tiny


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny-qwen"), "qwen2")


@pytest.fixture(autouse=True)
def _token_cache_per_test(tmp_path_factory, monkeypatch):
    """Each test its own token cache (datamodules/token_cache.py): none reads another's tokens or the user's."""
    monkeypatch.setenv("SFT_TOKEN_CACHE", str(tmp_path_factory.mktemp("token-cache")))


def threads_per_worker() -> int:
    """Two threads a test, or the cores' share of each parallel pytest worker (`make test` runs two):
    two workers of two threads each on two cores would wait on each other's threads."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, min(2, (os.cpu_count() or 2) // workers))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(threads_per_worker())


def pytest_report_header(config):
    """Which CPU kernels ran: tolerances are checked only on those (tests/other_cpu.py)."""
    return f"cpu kernels: {torch.backends.cpu.get_cpu_capability()} (torch {torch.__version__})"
