"""Fit several configs, each in its own process, then compare them: the GPU table and the CPU table.

The GPU table (issue 4) is the four ``benchmarks/gpu/qwen3_0.6b_*.yaml`` runs, picked by
``--methods``; ``benchmarks/gpu_compare.sh`` runs it on the GPU machine (after installing the
carried wheels), with the architecture folder prepared (``benchmarks/gpu_prepare.sh``).
``--configs`` takes any config files instead (``benchmarks/cpu_methods.sh``: every CPU method).
From the repository root:

    python -m benchmarks.compare_methods --out OUT_DIR [--methods full_adamw lora] [-- extra fit options]
    python -m benchmarks.compare_methods --out OUT_DIR --configs configs/smollm2_lora.yaml ... [-- ...]

Each config is an ordinary ``sft fit``, in its own process (its own CUDA context and peak-memory
counter), with runs saved under ``--runs``. A fit that fails is reported and the others still run;
the exit status is 1 if any failed. Written into ``OUT_DIR``:

- ``comparison.md`` and ``loss_curves.png``: ``sft compare`` of the runs that finished, with a
  second table of the figures the first leaves out (reserved memory, step time, samples/s, MFU)
  and a line naming the machine and versions;
- ``runs.tar.gz``: each run's ``summary.json``, ``summary.md``, ``config.yaml`` and TensorBoard
  events, enough to redraw or re-compare them anywhere.
"""

import argparse
import json
import platform
import subprocess
import sys
import tarfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "benchmarks" / "gpu"
METHODS = ("full_adamw", "full_sgd", "lora", "qlora")
PACKAGES = ("torch", "transformers", "peft", "trl", "lightning", "bitsandbytes")
RUN_FILES = ("summary.json", "summary.md", "config.yaml", "events.out.tfevents.*")


def config_path(method: str) -> Path:
    return CONFIG_DIR / f"qwen3_0.6b_{method}.yaml"


def check_architecture_prepared(config: Path, fit_args: list[str]) -> None:
    """A model folder (the config's, or the one overriding it) needs the tokenizer files prepared
    beside its config.json; a model name or alias is left to the fit."""
    folder = yaml.safe_load(config.read_text())["model"]["model_name_or_path"]
    if "--model.model_name_or_path" in fit_args:
        folder = fit_args[fit_args.index("--model.model_name_or_path") + 1]
    if Path(folder).is_dir() and not (Path(folder) / "tokenizer_config.json").is_file():
        raise FileNotFoundError(
            f"{folder} has no tokenizer files: run `bash benchmarks/gpu_prepare.sh` (or "
            f"`python benchmarks/prepare_architecture.py {folder}`) here, and carry the folder to the GPU machine"
        )


def fit(config: Path, runs_dir: Path, fit_args: list[str], in_process: bool) -> Path:
    """Run ``sft fit`` on ``config``; returns the run folder it created (``runs_dir/<name>/fit``, ``fit_1``, ...)."""
    name = yaml.safe_load(config.read_text())["trainer"]["logger"]["init_args"]["name"]
    before = set((runs_dir / name).glob("*/"))
    args = ["fit", "--config", str(config), "--trainer.logger.init_args.save_dir", str(runs_dir), *fit_args]
    print(f"\n=== sft {' '.join(args)}", flush=True)
    if in_process:  # the tests: no new interpreter per run
        from lightning_app.main import main

        main(args)
    else:
        status = subprocess.run([sys.executable, "-m", "lightning_app", *args]).returncode
        if status != 0:
            raise RuntimeError(f"sft fit exited with status {status}; its error is printed above it")
    created = sorted(set((runs_dir / name).glob("*/")) - before)
    if len(created) != 1 or not (created[0] / "summary.json").is_file():
        raise RuntimeError(f"the fit of {config} left no single new run folder with a summary.json "
                           f"under {runs_dir / name}")
    return created[0]


def run_benchmark(methods: list[str], runs_dir: Path, out_dir: Path, fit_args: list[str],
                  in_process: bool = False) -> tuple[list[Path], dict[str, str]]:
    """The GPU table's methods (see ``run_configs``)."""
    return run_configs({method: config_path(method) for method in methods}, runs_dir, out_dir, fit_args, in_process)


def run_configs(configs: dict[str, Path], runs_dir: Path, out_dir: Path, fit_args: list[str],
                in_process: bool = False) -> tuple[list[Path], dict[str, str]]:
    """Fit each config (by label), compare those that finished; returns their run folders and the failures."""
    from lightning_app.compare import compare_runs

    for config in configs.values():
        check_architecture_prepared(config, fit_args)
    run_dirs, failures = [], {}
    for label, config in configs.items():
        try:
            run_dirs.append(fit(config, runs_dir, fit_args, in_process))
        except Exception as error:  # one fit's failure must not cost the others' figures
            failures[label] = f"{type(error).__name__}: {error}"
            print(f"!!! {label} failed: {failures[label]}", flush=True)
    if run_dirs:
        markdown_path = compare_runs([str(run_dir) for run_dir in run_dirs], str(out_dir))
        summaries = [json.loads((run_dir / "summary.json").read_text()) for run_dir in run_dirs]
        with markdown_path.open("a", encoding="utf-8") as markdown:
            markdown.write("\n" + details_markdown(summaries, failures))
        bundle_runs(run_dirs, out_dir / "runs.tar.gz")
        print("\n" + markdown_path.read_text(encoding="utf-8"))
    return run_dirs, failures


def details_markdown(summaries: list[dict], failures: dict[str, str]) -> str:
    """What the comparison table leaves out: reserved memory, step time, samples/s, MFU; the machine."""
    from core.tables import markdown_table

    def figure(value, form: str) -> str:
        return "n/a" if value is None else form.format(value)

    rows = [[summary["run"], figure(summary["memory"].get("fit_peak_reserved_mib"), "{:.1f}"),
             figure(summary.get("step_seconds"), "{:.3f}"), figure(summary.get("samples_per_second"), "{:.1f}"),
             figure(summary.get("mfu"), "{:.3f}"), str(summary.get("global_step"))] for summary in summaries]
    header = ["run", "peak reserved (MiB)", "s/optimizer step", "samples/s", "MFU", "optimizer steps"]
    lines = ["## Details", "", markdown_table(header, rows), "", f"Measured on {machine_line()}.", ""]
    lines += [f"Failed: `{method}`: {reason}" for method, reason in failures.items()]
    return "\n".join(lines) + "\n"


def machine_line() -> str:
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.machine()})"
    return f"{device}, Python {platform.python_version()}, " + ", ".join(
        f"{package} {package_version(package)}" for package in PACKAGES)


def package_version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "absent"


def bundle_runs(run_dirs: list[Path], archive: Path) -> None:
    """The small files of each run, as ``<name>/<run>/...``: summaries, config and events."""
    with tarfile.open(archive, "w:gz") as tar:
        for run_dir in run_dirs:
            for pattern in RUN_FILES:
                for path in sorted(run_dir.glob(pattern)):
                    tar.add(path, arcname=f"{run_dir.parent.name}/{run_dir.name}/{path.name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for comparison.md, loss_curves.png and runs.tar.gz")
    parser.add_argument("--runs", type=Path, default=Path("runs/gpu_table"),
                        help="save_dir of the runs (default: %(default)s)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="GPU-table methods (benchmarks/gpu/qwen3_0.6b_<method>.yaml)")
    parser.add_argument("--configs", nargs="+", type=Path, help="any config files instead of --methods")
    parser.add_argument("fit_args", nargs="*", help="after --: options added to every fit, e.g. --trainer.max_steps 5")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine_line()}", flush=True)
    configs = ({config.stem: config for config in args.configs} if args.configs
               else {method: config_path(method) for method in args.methods})
    run_dirs, failures = run_configs(configs, args.runs, args.out, args.fit_args)
    print(f"runs: {', '.join(map(str, run_dirs))}\nwritten: {args.out}/comparison.md, loss_curves.png, runs.tar.gz")
    if failures:
        print(f"failed: {', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
