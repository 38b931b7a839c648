"""lightning_app."""

import core  # noqa: F401  (first: it quiets an import-time warning of bitsandbytes)
