"""Judge generated code answers by running them against their tests, and score them with pass@k.

A problem is HumanEval-shaped: ``prompt`` (imports, signature and docstring), ``test`` (defines
``check(candidate)``) and ``entry_point`` (the function's name). Each answer runs in its own
sandbox (see :mod:`evaluation.sandbox` for what that does and does not guarantee).

Statuses: "passed" (exit 0 after the tests ran), "failed" (the program ran and did not pass: a
failed assertion, any exception, a syntax error, a crash, too much memory or output), "timeout"
(wall clock or CPU limit), "error" (the sandbox itself could not run the program: not the answer's
fault, and worth a look). Only "passed" counts toward pass@k.
"""

import math
import re
import secrets
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from evaluation.sandbox import run_sandboxed

DETAIL_CHARS = 200
_FENCED_BLOCK = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


@dataclass
class ExecutionResult:
    status: str
    """One of "passed", "failed", "timeout", "error"."""
    detail: str
    """Short reason, e.g. the last line of stderr; empty when passed."""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def extract_code(answer: str) -> str:
    """The code of a chat answer: its first ```python block, else its first unlabelled block, else all of it.

    A block cut off by the token limit (no closing fence) still counts, up to the end of the text.

    >>> extract_code("Here:\\n```python\\ndef f():\\n    return 1\\n```\\nDone.")
    'def f():\\n    return 1\\n'
    """
    blocks = _FENCED_BLOCK.findall(answer)
    for language, code in blocks:
        if language.lower() in ("python", "py", "python3"):
            return code
    for language, code in blocks:
        if not language:
            return code
    return answer


def build_program(problem: dict, completion: str) -> str:
    """The program to run: the answer's code in context, then the tests, then ``check(entry_point)``.

    An answer that defines ``def <entry_point>(`` is a whole function and runs as written; otherwise it
    is a body continuing the prompt (HumanEval style) and is appended to the prompt. A whole function
    still comes after the prompt when the prompt compiles on its own (a signature plus docstring does):
    the prompt's imports (``from typing import List``) and helper functions (HumanEval/10, /38, /50
    call helpers defined in the prompt) are then defined, and the answer's function replaces the stub.
    """
    code = extract_code(completion)
    entry_point = problem["entry_point"]
    defines_entry_point = re.search(rf"^\s*(async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE)
    if not defines_entry_point:
        solution = problem["prompt"] + code
    elif _compiles(problem["prompt"]):
        solution = problem["prompt"] + "\n\n" + code
    else:
        solution = code
    return f"{solution}\n\n\n{problem['test']}\n\n\ncheck({entry_point})\n"


def _compiles(source: str) -> bool:
    try:
        compile(source, "<prompt>", "exec")
        return True
    except (SyntaxError, ValueError):
        return False


def run_program(program: str, timeout_s: float = 10.0, memory_mb: int = 1024) -> ExecutionResult:
    """Run a Python program in a sandbox; "passed" means it exited with status 0."""
    return _judge(run_sandboxed(program, timeout_s, memory_mb), timeout_s)


def check_sample(problem: dict, completion: str, timeout_s: float = 10.0) -> ExecutionResult:
    """Run one answer against its problem's tests.

    A random marker is printed after ``check`` returns, and "passed" needs it: an answer that calls
    ``sys.exit(0)`` or ``os._exit(0)`` before the tests run would otherwise pass (a shortcut that
    RL-style training finds quickly). It stops accidents and cheap tricks, not an answer that reads
    its own source file to find the marker.
    """
    marker = f"lsft-tests-done-{secrets.token_hex(8)}"
    program = build_program(problem, completion) + f"import os as _os\n_os.write(1, b'\\n{marker}\\n')\n"
    return _judge(run_sandboxed(program, timeout_s, memory_mb=1024), timeout_s, marker)


def _judge(run, timeout_s: float, marker: str | None = None) -> ExecutionResult:
    """Turn how a sandboxed program ended into a status and a short reason."""
    if run.setup_error:
        return ExecutionResult("error", run.setup_error[:DETAIL_CHARS])
    if run.timed_out:
        return ExecutionResult("timeout", f"still running after {timeout_s:g} s")
    if run.exit_status == -signal.SIGXCPU:
        return ExecutionResult("timeout", "CPU time limit reached")
    if run.exit_status != 0:
        return ExecutionResult("failed", _last_line(run.stderr_tail) or _describe_exit(run.exit_status))
    if marker is not None and marker not in run.stdout_tail:
        return ExecutionResult("failed", "exited with status 0 before the tests finished")
    return ExecutionResult("passed", "")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:DETAIL_CHARS] if lines else ""


def _describe_exit(exit_status: int) -> str:
    if exit_status < 0:
        return f"killed by {signal.Signals(-exit_status).name}"
    return f"exit status {exit_status}"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed (Chen et al. 2021): 1 - C(n-c, k) / C(n, k).

    Computed as a product, 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms huge binomials.

    >>> round(pass_at_k(5, 2, 3), 6)
    0.9
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def evaluate_code_samples(problems: list[dict], samples: list[list[str]], ks=(1, 3), timeout_s: float = 10.0,
                          workers: int = 2) -> dict[str, float]:
    """pass@k averaged over problems, for each k up to the fewest samples any problem has.

    ``samples[i]`` holds the n answers generated for ``problems[i]``. Each answer runs in its own
    subprocess, ``workers`` at a time. Also returns the totals "samples" and "passed".
    """
    if len(problems) != len(samples) or not problems or not all(samples):
        raise ValueError(f"Need one non-empty list of answers per problem; got {len(problems)} problems and "
                         f"answer counts {[len(answers) for answers in samples]}.")
    jobs = [(problem, answer) for problem, answers in zip(problems, samples) for answer in answers]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda job: check_sample(*job, timeout_s=timeout_s), jobs))
    passed_counts, start = [], 0
    for answers in samples:
        passed_counts.append(sum(result.passed for result in results[start:start + len(answers)]))
        start += len(answers)
    fewest_samples = min(len(answers) for answers in samples)
    scores = {f"pass@{k}": sum(pass_at_k(len(answers), passed, k) for answers, passed in zip(samples, passed_counts))
              / len(problems) for k in ks if k <= fewest_samples}
    return {**scores, "samples": float(len(jobs)), "passed": float(sum(passed_counts))}
