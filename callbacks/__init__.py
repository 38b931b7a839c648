"""One concern per file, none reaching into another (an import-linter contract); figures pass through
the module (``run_figures.py``).

- Answers: ``answer_metrics.py`` (``sft test`` scores), ``validation_answers.py`` (scored),
  ``answer_table.py`` (a few shown in the Text tab), ``prediction_writer.py``.
- Runs: ``checkpoint.py``, ``exact_resume.py``, ``resume_checks.py``, ``merge_adapters.py``, ``numerics.py``.
- Figures: ``throughput.py``, ``memory.py``, ``run_card.py``, ``progress.py``, ``run_summary.py``.
"""

import core  # noqa: F401  (first: it quiets an import-time warning of bitsandbytes)
