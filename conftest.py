"""What the ``>>>`` examples in the project's docstrings may use (they run as doctests in `make test`):
the tiny ChatML byte tokenizer and model of tests/tiny.py, built in code, and a base tokenizer
without a chat template."""

import pytest


@pytest.fixture(scope="session", autouse=True)
def _doctest_objects(doctest_namespace):
    from tests.tiny import build_base_tokenizer, build_model, build_tokenizer

    doctest_namespace.update(tokenizer=build_tokenizer(), model=build_model("llama").eval(),
                             base_tokenizer=build_base_tokenizer())


def pytest_configure(config):
    """The third-party warnings the CLI silences (lightning_app/quiet.py, each with why) are silenced in
    the suite too, after pyproject's rule that turns our own code's warnings into errors."""
    from lightning_app.quiet import THIRD_PARTY_WARNINGS

    for category, start, _why in THIRD_PARTY_WARNINGS:
        config.addinivalue_line("filterwarnings", f"ignore:{_regex(start)}:{category.__module__}.{category.__name__}")


def _regex(start: str) -> str:
    """pytest reads a filter as ``action:message:category:module``, split at colons: none may be in it."""
    import re

    assert ":" not in start, start
    return re.escape(start)
