"""``sft export-gguf FOLDER --out model.gguf --type f16|q8_0|q4_k_m|q5_k_m|q6_k``: a merged folder as one GGUF for llama.cpp/Ollama."""

import argparse

from modules.export.gguf import MAX_RELATIVE_ERROR, WEIGHT_TYPES, export_gguf


def export_gguf_command(argv: list[str]) -> None:
    """sft export-gguf RUN/merged --out model.gguf [--type f16|q8_0|q4_k_m|q5_k_m|q6_k] [--max-relative-error E]."""
    parser = argparse.ArgumentParser(prog="sft export-gguf", description=export_gguf_command.__doc__)
    parser.add_argument("folder", help="a merged Hugging Face folder (what `sft fit` writes to <run>/merged)")
    parser.add_argument("--out", required=True, help="the GGUF file to write; <out>.report.json goes beside it")
    parser.add_argument("--type", default="f16", choices=WEIGHT_TYPES,
                        help="weight type of the matrices; the K-quants (q4_k_m, q5_k_m, q6_k) need the llama extra")
    parser.add_argument("--max-relative-error", type=float, default=None,
                        help=f"fail above this logit error (default per type: {MAX_RELATIVE_ERROR})")
    args = parser.parse_args(argv)
    export_gguf(args.folder, args.out, args.type, args.max_relative_error)
