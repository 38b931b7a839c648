"""Progress without a terminal: a plain line at a bounded rate, with step/total, tokens/s and ETA."""

import re

from lightning_app.main import main
from tests.test_cli import run_config  # noqa: F401 (the tiny CLI config fixture)

FIT_LINE = re.compile(r"^fit: step (\d+)/(\d+) \((\d+)%\) \| ([\d,]+) tok/s \| loss [\d.]+ \| elapsed [\d:]+ \| eta [\d:?]+$")


def test_without_a_terminal_fit_and_predict_print_bounded_progress_lines(run_config, capsys):
    # pytest's captured stdout is not a TTY: the bar is swapped for lines; 4 steps, a line per 50%
    progress = ["--trainer.enable_progress_bar", "true", "--progress.every_percent", "50",
                "--progress.every_seconds", "3600"]
    main(["fit", "--config", run_config, "--trainer.max_steps", "4", *progress])
    printed = capsys.readouterr().out.splitlines()
    fit_lines = [line for line in printed if line.startswith("fit: ")]
    assert all(FIT_LINE.match(line) for line in fit_lines), fit_lines
    assert [FIT_LINE.match(line).group(1, 2, 3) for line in fit_lines] == [("2", "4", "50"), ("4", "4", "100")]
    assert all(int(FIT_LINE.match(line).group(4).replace(",", "")) > 0 for line in fit_lines)
    assert not any("\r" in line or "it/s]" in line for line in printed)  # no tqdm redraws in the log

    main(["predict", "--config", run_config, "--ckpt_path", "last", "--data.answer_batch_size", "2", *progress])
    predict_lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("predict: ")]
    # batches of 1-2 records: a line when a batch crosses 50%, and one at the end
    shown = [line.split(" | ")[0] for line in predict_lines]
    assert len(shown) == 2 and shown[0] in ("predict: 2/4 records (50%)", "predict: 3/4 records (75%)"), shown
    assert shown[1] == "predict: 4/4 records (100%)"


def test_default_rate_is_a_line_per_ten_percent_at_most(run_config, capsys):
    main(["fit", "--config", run_config, "--trainer.max_steps", "4", "--trainer.enable_progress_bar", "true"])
    steps = [line.split()[2] for line in capsys.readouterr().out.splitlines() if line.startswith("fit: ")]
    assert steps == ["1/4", "2/4", "3/4", "4/4"]  # 25% a step: every step passes another 10%
