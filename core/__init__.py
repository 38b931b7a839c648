"""The shared core every layer may import: constants, record errors, files, tables, model names."""
