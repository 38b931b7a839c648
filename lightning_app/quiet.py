"""Messages from the libraries underneath that a user cannot act on, silenced by name, each with why.

What a run prints should be what the user can act on: a warning they cannot fix teaches them to
skip warnings, and the one that matters goes by unread. These are third-party messages about the
libraries' own internals (or about a choice this project made on purpose); our own code's warnings
are errors in the test suite (pyproject.toml), so they get fixed instead of filtered.
``install`` runs once when the CLI is imported.
"""

import logging
import warnings

# (category, start of the message, why it cannot help the user)
THIRD_PARTY_WARNINGS = [
    (UserWarning, "Paged optimizers are not supported on CPU",
     "said once a tensor; the run says it once, naming the setting (modules/backbone/quantization.py)"),
    (UserWarning, "`loftq_config` specified but will be ignored",
     "jsonargparse fills peft's LoraConfig.loftq_config with LoftQConfig's defaults; peft drops them and warns"),
    (FutureWarning, "`is_gradient_checkpointing` is deprecated",
     "peft 0.21 reads the old name of transformers 5.23's property; nothing in the user's config sets it"),
    (Warning, "`isinstance(treespec, LeafSpec)` is deprecated",
     "Lightning 2.6's own use of a torch pytree API"),
    (Warning, "Total length of `list` across ranks is zero",
     "the data module's validation loader is empty when no validation file is set: no validation is meant"),
    (Warning, "Precision bf16-mixed is not supported by the model summary",
     "the summary's FLOP count only; the run's precision is printed by the CLI and kept in config.yaml"),
    (Warning, "The dirpath has changed from",
     "`sft validate/test/predict --ckpt_path` write a new run folder on purpose; nothing is lost by it"),
    (Warning, "Checkpoint directory",
     "a resumed fit writes into its checkpoint's run folder on purpose (--ckpt_path last)"),
    (Warning, "Couldn't infer the batch indices fetched from your dataloader",
     "answers are written by this project's answer writer, which keeps each record's id itself"),
]

# (logger, start of the message, why)
THIRD_PARTY_LOG_LINES = [
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip:", "an advertisement for a cloud logger"),
    ("lightning.pytorch.utilities.rank_zero", "TPU available:", "this project trains on CPUs and CUDA GPUs only"),
    ("lightning.pytorch.utilities.rank_zero", "Loading `train_dataloader` to estimate number of stepping batches",
     "Lightning counting the steps for the learning-rate schedule; the progress line shows the count"),
    ("bitsandbytes.autograd._functions", "MatMul8bitLt: inputs will be cast from",
     "every 8-bit product of every step says it; LLM.int8() rounds its inputs to float16 by design"),
    ("torch.utils.cpp_extension", "No CUDA runtime is found",
     "a CUDA build of torch on a machine without a GPU, said when the compiler imports its C++ helpers"),
]


class _DropLines(logging.Filter):
    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def install() -> None:
    """Idempotent: every CLI run calls it (a test's warning filters last only for that test)."""
    for category, start, _why in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=_escaped(start), category=category)  # replaces its twin
    by_logger: dict[str, tuple[str, ...]] = {}
    for logger_name, start, _why in THIRD_PARTY_LOG_LINES:
        by_logger[logger_name] = by_logger.get(logger_name, ()) + (start,)
    for logger_name, starts in by_logger.items():
        logger = logging.getLogger(logger_name)
        if not any(isinstance(existing, _DropLines) for existing in logger.filters):
            logger.addFilter(_DropLines(starts))


def _escaped(start: str) -> str:
    """``warnings.filterwarnings`` takes a regular expression matched at the message's start.

    >>> _escaped("`x` (y)")
    '`x`\\\\ \\\\(y\\\\)'
    """
    import re

    return re.escape(start)
