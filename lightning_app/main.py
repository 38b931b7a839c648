"""Entry point of the ``sft`` command: LightningCLI subcommands plus a few small extras."""

import sys

from lightning_app.extras import EXTRA_COMMANDS


def main(args: list[str] | None = None) -> None:
    args = sys.argv[1:] if args is None else list(args)
    if args and args[0] in EXTRA_COMMANDS:
        EXTRA_COMMANDS[args[0]](args[1:])
        return
    from lightning_app.cli import SFTCLI  # Lightning's import is slow; extras may not need it

    SFTCLI(args=args)


if __name__ == "__main__":
    main()
