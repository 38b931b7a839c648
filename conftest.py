"""What the ``>>>`` examples in the project's docstrings may use (they run as doctests in `make test`):
the tiny ChatML byte tokenizer and model of tests/tiny.py, built in code, and a base tokenizer
without a chat template."""

import pytest


@pytest.fixture(scope="session", autouse=True)
def _doctest_objects(doctest_namespace):
    from tests.tiny import build_base_tokenizer, build_model, build_tokenizer

    doctest_namespace.update(tokenizer=build_tokenizer(), model=build_model("llama").eval(),
                             base_tokenizer=build_base_tokenizer())
