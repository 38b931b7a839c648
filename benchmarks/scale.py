"""Data preparation at real sizes: cold and warm ``sft inspect`` on 1k to 1M QA records.

Each row runs ``sft inspect`` (read, check, render, mask; ``--show 0``) in a fresh process under
``/usr/bin/time -v`` twice on the same file: cold (an empty token cache) and warm (the cache the cold
run filled). Seconds are wall-clock of the whole command (Python and Lightning imports and the
tokenizer load included, about 8 s here); peak RSS is the command's. The file is SQuAD-style QA
(format ``qa``): ``data/build_examples.qa_records``' 10,000 records (about 76 tokens an example),
repeated to the count asked, each with its own ``id``, so the per-record work is that of real rows::

    python benchmarks/scale.py --records 10000 100000 1000000 --out benchmarks/scale/data_prep.md

Run it alone on the machine (timings); ``nice`` it on a shared one.
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
from benchmarks.vs_trl import print_and_write  # noqa: E402

POOL = 10_000  # distinct records; a bigger file repeats them, each with its own id
MODEL = Path.home() / ".cache" / "lightning-sft" / "models" / "smollm2-135m-instruct"


def write_qa_file(count: int, path: Path) -> Path:
    """``count`` QA records as JSON Lines, ids ``0`` to ``count - 1``."""
    sys.path.insert(0, str(PROJECT_ROOT / "data"))
    from build_examples import qa_records

    pool = [json.dumps(record, ensure_ascii=False)[1:] for record in qa_records(min(count, POOL))]
    with open(path, "w", encoding="utf-8") as lines:
        for index in range(count):
            lines.write(f'{{"id": "{index}", {pool[index % len(pool)]}\n')
    return path


def timed_inspect(train_path: Path, cache_dir: Path, extra: list[str], project: Path) -> dict:
    """Wall seconds and peak RSS (MiB) of one ``sft inspect`` process of the checkout ``project``."""
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "lightning_app.main", "inspect", "--show", "0",
               "--model.model_name_or_path", str(MODEL), "--data.train_path", str(train_path),
               "--data.format", "qa", *extra]
    environment = {"PYTHONPATH": str(project), "SFT_TOKEN_CACHE": str(cache_dir), "PATH": "/usr/bin:/bin",
                   "HOME": str(Path.home()), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=project, env=environment, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"sft inspect failed:\n{done.stderr[-3000:]}")
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return {"seconds": seconds, "peak_mib": peak_kib / 1024}


def measure(count: int, work_dir: Path, extra: list[str], project: Path) -> dict:
    train_path = write_qa_file(count, work_dir / f"qa_{count}.jsonl")
    cache_dir = work_dir / f"cache_{count}"
    cold = timed_inspect(train_path, cache_dir, extra, project)
    warm = timed_inspect(train_path, cache_dir, extra, project)
    train_path.unlink()
    return {"records": count, "cold": cold, "warm": warm}


def key_cost(count: int, work_dir: Path) -> dict:
    """What a warm start spends on the records, in one process on one file: before (read, check and
    normalise every record, then hash them: the old cache key) and now (hash the file's bytes)."""
    from datamodules.normalize import ConversationSpec, read_records
    from datamodules.record_loading import load_records
    from datamodules.token_cache import file_digest, records_digest

    train_path, spec = write_qa_file(count, work_dir / f"qa_{count}.jsonl"), ConversationSpec("qa")
    load_records(str(train_path))  # datasets' own Arrow copy of the file, made by the cold run before a warm one
    started = time.perf_counter()
    file_digest(train_path, spec)
    file_seconds = time.perf_counter() - started
    started = time.perf_counter()
    records_digest(read_records(str(train_path), spec), lambda record: record.messages)
    records_seconds = time.perf_counter() - started
    train_path.unlink()
    return {"records": count, "file_sha256_s": file_seconds, "read_normalise_hash_s": records_seconds}


def tokenize_cost(count: int, work_dir: Path, processes: list[int]) -> dict:
    """Seconds to tokenize one file's records with each ``data.num_proc`` in ``processes``, in one
    process (records read once, no cache), so the runs share the machine's moment."""
    from core.tokenizer import load_tokenizer
    from datamodules.normalize import ConversationSpec, read_records
    from datamodules.preprocess import build_training_examples

    train_path = write_qa_file(count, work_dir / f"qa_{count}.jsonl")
    records, tokenizer = read_records(str(train_path), ConversationSpec("qa")), load_tokenizer(str(MODEL))
    seconds = {}
    for num_proc in processes:
        started = time.perf_counter()
        build_training_examples(records, tokenizer, "all_assistant", 1024, str(train_path), num_proc=num_proc)
        seconds[f"num_proc_{num_proc}_s"] = time.perf_counter() - started
    train_path.unlink()
    return {"records": count, **seconds}


def table(rows: list[dict], extra: list[str]) -> str:
    lines = [f"`sft inspect --show 0` on QA records{' ' + ' '.join(extra) if extra else ''}:", "",
             "| records | cold s | cold peak MiB | warm s | warm peak MiB | cold ms/record |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        cold, warm = row["cold"], row["warm"]
        lines.append(f"| {row['records']:,} | {cold['seconds']:.1f} | {cold['peak_mib']:,.0f} | {warm['seconds']:.1f} "
                     f"| {warm['peak_mib']:,.0f} | {1000 * cold['seconds'] / row['records']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--out", help="also write the table to this Markdown file")
    parser.add_argument("--work-dir", help="where the files and caches go (default: a temporary folder)")
    parser.add_argument("--project", default=str(PROJECT_ROOT), help="the checkout to time (another branch's)")
    parser.add_argument("--tokenize-cost", type=int, nargs="*", metavar="NUM_PROC",
                        help="time only tokenizing, once per num_proc given (tokenize_cost)")
    parser.add_argument("--key-cost", action="store_true",
                        help="time only the warm start's work on the records, old key vs new (key_cost)")
    args, extra = parser.parse_known_args()  # anything else goes to sft inspect (e.g. --data.num_proc 2)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as work_dir:
        if args.tokenize_cost:
            for count in args.records:
                print(json.dumps(tokenize_cost(count, Path(work_dir), args.tokenize_cost)), flush=True)
            return
        if args.key_cost:
            for count in args.records:
                print(json.dumps(key_cost(count, Path(work_dir))), flush=True)
            return
        rows = []
        for count in args.records:
            rows.append(measure(count, Path(work_dir), extra, Path(args.project)))
            print(json.dumps(rows[-1]), flush=True)
    print_and_write(table(rows, extra), args.out)


if __name__ == "__main__":
    main()
