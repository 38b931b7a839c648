"""lightning_app."""
