"""Entry point of the ``sft`` command: LightningCLI subcommands plus a few small extras."""

import os
import sys

from lightning_app.extras import EXTRA_COMMANDS, print_overview

DEBUG_FLAG, DEBUG_VARIABLE = "--debug", "SFT_DEBUG"


def main(args: list[str] | None = None) -> None:
    """``args`` for in-process calls (tests, ``sft demo``); the command line otherwise."""
    given = sys.argv[1:] if args is None else list(args)
    if not given or given[0] in ("-h", "--help"):
        print_overview()
        return
    if given[0] in EXTRA_COMMANDS:
        EXTRA_COMMANDS[given[0]](given[1:])
        return
    from lightning_app.cli import SFTCLI  # Lightning's import is slow; extras may not need it

    SFTCLI(args=None if args is None else given)  # None: LightningCLI reads sys.argv itself


def console_main() -> None:
    """The ``sft`` command: a mistake in the input is one located message and exit code 2, not a
    traceback (``--debug`` or ``SFT_DEBUG=1`` shows the traceback)."""
    debug = DEBUG_FLAG in sys.argv or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
    sys.argv = [arg for arg in sys.argv if arg != DEBUG_FLAG]
    if debug:
        main()
        return
    try:
        main()
    except user_errors() as error:
        print(f"error: {error}\n(sft {DEBUG_FLAG} or {DEBUG_VARIABLE}=1 shows the traceback)", file=sys.stderr)
        raise SystemExit(2) from None


def user_errors() -> tuple[type[Exception], ...]:
    """What bad input or a bad setting raises: said in one message, without a traceback."""
    from core.disk_errors import OutputWriteError
    from core.embedded import EmbeddedModelError
    from core.step_loss import AccumulationMismatchError
    from core.tokenizer import ModelLoadError
    from evaluation.harness import HarnessError
    from modules.export.gguf_metadata import GGUFExportError
    from modules.backbone.quantization import NeedsCUDAError, QuantizedKernelsMissingError

    return (ValueError, FileNotFoundError, ModelLoadError, AccumulationMismatchError, NeedsCUDAError,
            QuantizedKernelsMissingError, EmbeddedModelError, OutputWriteError, HarnessError, GGUFExportError)


if __name__ == "__main__":
    console_main()
