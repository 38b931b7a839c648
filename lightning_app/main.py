"""Entry point of the ``sft`` command: LightningCLI subcommands plus a few small extras."""

import sys

from lightning_app.extras import EXTRA_COMMANDS, print_overview


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

    SFTCLI(args=None if args is None else given)


if __name__ == "__main__":
    main()
