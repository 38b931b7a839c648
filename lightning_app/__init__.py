"""The ``sft`` command, thin: ``main.py`` dispatches to ``cli.py`` (LightningCLI: fit, validate, test,
predict) or to the extras.

- Extras: ``extras.py`` (inspect, fetch-model), ``labelled_records.py`` (score, report), ``demo.py``,
  ``compare.py``, ``chat.py``, ``export.py`` (export-gguf).
- ``run_dirs.py`` (runs/<name>/fit, test, ...), ``quiet.py`` (library messages silenced, each with why).
"""

import core  # noqa: F401  (first: it quiets an import-time warning of bitsandbytes)
