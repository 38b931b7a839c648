"""`sft --help` lists every subcommand, LightningCLI's and the extras, with one line each."""

import pytest

from lightning_app.extras import COMMAND_SUMMARIES, EXTRA_COMMANDS
from lightning_app.main import main


@pytest.mark.parametrize("argv", [["--help"], ["-h"], []])
def test_help_lists_every_subcommand(argv, capsys):
    main(argv)
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert listed == ["fit", "validate", "test", "predict", *EXTRA_COMMANDS]


def test_every_extra_command_has_a_summary():
    assert set(EXTRA_COMMANDS) <= set(COMMAND_SUMMARIES)
