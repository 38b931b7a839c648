"""Running generated code: statuses, the sandbox's limits and isolation, pass@k by hand."""

import os
import resource
import time
from pathlib import Path

import pytest

from evaluation.code_execution import (
    build_program,
    check_sample,
    evaluate_code_samples,
    extract_code,
    pass_at_k,
    run_program,
)
from evaluation.sandbox import SANDBOX_UIDS

LIMIT_S = 2.0
SLACK_S = 3.0
"""A timeout must be reported within LIMIT_S + SLACK_S (start-up, kill and clean-up included)."""

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="uid switch and namespaces need root; "
                                                           "as another user the sample runs as that user")

ADD = {
    "prompt": 'def add(a, b):\n    """Return the sum of a and b."""\n',
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
    "entry_point": "add",
}
NEGATE = {
    "prompt": 'from typing import List\n\n\ndef negate(xs: List[int]) -> List[int]:\n    """Negate each number."""\n',
    "test": "def check(candidate):\n    assert candidate([1, -2]) == [-1, 2]\n",
    "entry_point": "negate",
}


def live_processes_where(predicate) -> list[str]:
    """Command lines of live (non-zombie) processes whose /proc status and cmdline match."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if not fields["State"].strip().startswith(("Z", "X")) and predicate(fields, cmdline):
            found.append(cmdline)
    return found


def sandbox_uid_processes() -> list[str]:
    return live_processes_where(lambda fields, _: int(fields["Uid"].split()[0]) in SANDBOX_UIDS)


# --- statuses -------------------------------------------------------------------------------------

def test_correct_body_passes_and_wrong_body_fails():
    assert check_sample(ADD, "    return a + b\n", timeout_s=LIMIT_S).status == "passed"
    wrong = check_sample(ADD, "    return a - b\n", timeout_s=LIMIT_S)
    assert (wrong.status, wrong.detail) == ("failed", "AssertionError")


def test_whole_function_in_a_chat_answer_passes_with_the_prompt_imports():
    answer = "Sure:\n```python\ndef negate(xs: List[int]) -> List[int]:\n    return [-x for x in xs]\n```\nDone."
    assert check_sample(NEGATE, answer, timeout_s=LIMIT_S).status == "passed"


def test_syntax_error_is_a_failure_not_a_sandbox_error():
    result = check_sample(ADD, "    return a +\n", timeout_s=LIMIT_S)
    assert result.status == "failed"
    assert "SyntaxError" in result.detail


def test_exiting_zero_before_the_tests_run_does_not_pass():
    result = check_sample(ADD, "    return 0\nimport sys\nsys.exit(0)\n", timeout_s=LIMIT_S)
    assert result.status == "failed"
    assert "before the tests finished" in result.detail


def test_infinite_loop_times_out_on_time():
    start = time.monotonic()
    result = run_program("while True:\n    pass\n", timeout_s=LIMIT_S)
    assert result.status == "timeout"
    assert time.monotonic() - start < LIMIT_S + SLACK_S


# --- limits ------------------------------------------------------------------------------------------

@needs_root
def test_fork_bomb_is_capped_and_leaves_nothing_behind():
    program = (
        "import os, resource\n"
        "if os.getuid() == 0 or resource.getrlimit(resource.RLIMIT_NPROC)[0] > 64:\n"
        "    raise SystemExit('refusing to fork-bomb: RLIMIT_NPROC does not bind here')\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        pass\n"
    )
    start = time.monotonic()
    assert run_program(program, timeout_s=LIMIT_S).status == "timeout"
    assert time.monotonic() - start < LIMIT_S + SLACK_S
    assert sandbox_uid_processes() == []
    start = time.monotonic()
    assert run_program("print('still fine')", timeout_s=LIMIT_S).passed  # the machine can still start processes
    assert time.monotonic() - start < 1.0


def test_huge_allocation_fails_quickly():
    start = time.monotonic()
    result = run_program("block = bytearray(8 * 1024**3)\n", timeout_s=LIMIT_S, memory_mb=512)
    assert (result.status, result.detail) == ("failed", "MemoryError")
    assert time.monotonic() - start < 1.5


def test_printing_a_gigabyte_neither_hangs_nor_fills_the_parent_memory():
    peak_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    result = run_program("import sys\nchunk = 'x' * 2**20\nfor _ in range(1024):\n    sys.stdout.write(chunk)\n",
                         timeout_s=LIMIT_S)
    assert result.status == "failed"  # the 10 MB file-size limit stops the output
    assert "File too large" in result.detail and len(result.detail) <= 200
    assert time.monotonic() - start < LIMIT_S + SLACK_S
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before_kb < 50 * 1024


# --- isolation ---------------------------------------------------------------------------------------

def test_background_child_does_not_survive(request):
    tag = f"{30 + os.getpid() % 1000 / 1000:.3f}"  # a sleep length no other process uses
    escape = "subprocess.Popen(['sleep', TAG], start_new_session=True)\n" if os.geteuid() == 0 else ""
    program = f"import subprocess\nTAG = '{tag}'\nsubprocess.Popen(['sleep', TAG])\n{escape}"
    assert check_sample(ADD, "    return a + b\n" + program, timeout_s=LIMIT_S).status == "passed"
    assert live_processes_where(lambda _, cmdline: f"sleep {tag}" in cmdline) == []


@needs_root
def test_writes_outside_the_sandbox_fail(tmp_path):
    targets = [tmp_path / "escaped.txt", Path.home() / f"lsft-escaped-{os.getpid()}.txt",
               Path.cwd() / f"lsft-escaped-{os.getpid()}.txt"]
    program = (
        f"targets = {[str(target) for target in targets]}\n"
        "for target in targets:\n"
        "    try:\n"
        "        open(target, 'w').write('pwned')\n"
        "    except OSError:\n"
        "        continue\n"
        "    raise SystemExit(f'wrote {target}')\n"
    )
    try:
        result = run_program(program, timeout_s=LIMIT_S)
        assert result.status == "passed", result.detail
        assert [target for target in targets if target.exists()] == []
    finally:
        for target in targets:
            target.unlink(missing_ok=True)


@needs_root
def test_files_left_in_tmp_do_not_outlive_the_sample():
    leak = Path("/tmp") / f"lsft-leak-{os.getpid()}"
    assert run_program(f"open('{leak}', 'w').write('left behind')\n", timeout_s=LIMIT_S).passed
    assert not leak.exists()


@needs_root
def test_no_network():
    program = (
        "import socket\n"
        "assert [name for _, name in socket.if_nameindex()] == ['lo'], socket.if_nameindex()\n"
        "try:\n"
        "    socket.create_connection(('1.1.1.1', 53), timeout=1)\n"
        "except OSError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('connected')\n"
    )
    result = run_program(program, timeout_s=LIMIT_S)
    assert result.status == "passed", result.detail


def test_secrets_in_the_parent_environment_are_invisible(monkeypatch):
    monkeypatch.setenv("LSFT_SECRET", "hunter2")
    assert run_program("import os\nassert 'LSFT_SECRET' not in os.environ\n", timeout_s=LIMIT_S).passed
    sees_it = run_program("import os\nassert os.environ.get('LSFT_SECRET') == 'hunter2'\n", timeout_s=LIMIT_S)
    assert sees_it.status == "failed"


@needs_root
def test_parent_environment_cannot_be_read_through_proc(monkeypatch):
    monkeypatch.setenv("LSFT_SECRET", "hunter2")
    program = f"try:\n    data = open('/proc/{os.getpid()}/environ', 'rb').read()\nexcept OSError:\n    data = b''\n" \
              "assert b'hunter2' not in data\n"
    assert run_program(program, timeout_s=LIMIT_S).passed


# --- code extraction and program building ----------------------------------------------------------

def test_extract_code_prefers_the_python_block():
    answer = "Try:\n```bash\nls\n```\nthen\n```python\nx = 1\n```\nand\n```\ny = 2\n```"
    assert extract_code(answer) == "x = 1\n"
    assert extract_code("```\ny = 2\n```") == "y = 2\n"
    assert extract_code("```python\ncut off by the token limit") == "cut off by the token limit"
    assert extract_code("    return a + b\n") == "    return a + b\n"


def test_build_program_appends_a_body_and_keeps_a_whole_function():
    body_program = build_program(ADD, "    return a + b\n")
    assert body_program.startswith(ADD["prompt"] + "    return a + b\n")
    assert body_program.rstrip().endswith("check(add)")
    assert ADD["test"] in body_program

    function = "def add(a, b):\n    return b + a\n"
    function_program = build_program(ADD, f"Here you go:\n```python\n{function}```")
    assert function in function_program
    positions = [function_program.index(part) for part in (ADD["prompt"], function, ADD["test"], "check(add)")]
    assert positions == sorted(positions)

    broken_prompt = {**ADD, "prompt": "def add(a, b):\n"}  # does not compile alone: the function runs on its own
    assert build_program(broken_prompt, function).startswith(function)


# --- pass@k --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "c", "k", "expected"), [
    (5, 2, 1, 0.4),
    (5, 2, 3, 0.9),  # 1 - C(3,3)/C(5,3) = 1 - 1/10
    (3, 0, 1, 0.0),
    (3, 3, 3, 1.0),
    (10, 3, 2, 1 - 21 / 45),  # C(7,2)/C(10,2)
])
def test_pass_at_k_matches_hand_computed_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_refuses_k_larger_than_n():
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(3, 0, 5)  # the textbook formula would say 1.0 here


def test_evaluate_code_samples_hand_computed():
    add_answers = ["    return a + b\n", "    return a * b\n", "    while True:\n        pass\n"]  # 1 of 3
    negate_answers = ["```python\ndef negate(xs):\n    return xs\n```", "    return xs[::-1]\n", "    return None\n"]
    scores = evaluate_code_samples([ADD, NEGATE], [add_answers, negate_answers], ks=(1, 3, 5), timeout_s=LIMIT_S)
    assert scores == pytest.approx({"pass@1": (1 / 3 + 0) / 2, "pass@3": (1 + 0) / 2, "samples": 6, "passed": 1})
    assert sandbox_uid_processes() == []


def test_an_interpreter_reached_through_a_symlink_under_tmp_still_runs(monkeypatch):
    """A venv's bin/python is a symlink; CI may clone (and build the venv) under /tmp, which the
    sandbox replaces with a private tmpfs. The sample must run the real binary."""
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(dir="/tmp") as venv_like:
        link = Path(venv_like) / "python"
        link.symlink_to(os.path.realpath(sys.executable))
        monkeypatch.setattr(sys, "executable", str(link))
        assert run_program("print('ok')\n", timeout_s=5.0).status == "passed"
