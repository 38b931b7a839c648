"""Run one untrusted Python program in a throwaway sandbox and report how it ended.

This side, imported by the evaluator, picks a sandbox account, starts the launcher
(``sandbox_launcher.py``: a fresh process that sets up the isolation and ``exec``s the program),
enforces the wall clock and kills whatever is left. Standard library only.

Guaranteed, when the evaluator runs as root (the usual case in containers):

- the program runs as a dedicated unprivileged uid from a pool (60100-60163, one per running
  sample, locked with ``flock`` so threads and other evaluator processes never share one), with no
  supplementary groups, so RLIMIT_NPROC binds and the program cannot signal or ptrace anything else;
- limits: CPU seconds (about the timeout), address space (``memory_mb``), file size (10 MB, which
  also caps what stdout/stderr can hold), 32 processes, 64 open files, no core files;
- nothing outlives it: in a new PID namespace the kernel kills every process the program started
  (even ones that called ``setsid``) when it ends; after the run every process of the dedicated uid
  is killed as well, and so is the launcher's process group and session;
- no network (new network namespace: only a loopback that is down), private System V IPC;
- a private mount namespace: ``/tmp``, ``/var/tmp``, ``/dev/shm`` and ``/run/lock`` are fresh
  size-capped tmpfs mounts that vanish with the sample, the working directory is one of them, and
  ``/proc`` shows only the sample's own processes;
- a directory on the interpreter's path that "others" cannot enter (pyenv or conda under /root) is
  covered by an empty tmpfs with only the interpreter bound back read-only, so the sample can start
  Python and sees nothing else there (no ~/.cache tokens, no ~/.ssh);
- the environment is an allow-list (PATH, LANG, HOME and TMPDIR inside the work dir), so secrets in
  the evaluator's environment are invisible; ``python -I`` ignores PYTHON* variables and user site.

Not guaranteed:

- files that are readable by "others" stay readable (the repository, world-readable data sets);
  directories writable by "others" outside the masked ones stay writable;
- if a namespace cannot be created (some containers forbid ``unshare``), that isolation is skipped
  without a word: no PID namespace means leftovers are found by uid instead, no mount namespace means
  the work dir is the evaluator's temp dir and ``/tmp`` is shared, no network namespace means network;
- as a non-root user there is no uid switch and no namespace: the limits still apply, the session and
  process group are killed afterwards, but a process that calls ``setsid`` escapes, and the program can
  read and write whatever the evaluator's user can;
- no cgroup: memory is limited per process (address space), not for the sample as a whole;
- without a mount namespace, an interpreter the sandbox uid cannot reach means every run is "error"
  (the message says so); with no PID namespace, a uid whose zombies init has not reaped yet is skipped.
"""

import contextlib
import fcntl
import json
import math
import os
import pwd
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from evaluation import sandbox_launcher

OUTPUT_TAIL_BYTES = 64 * 1024
"""How much of the end of stdout and stderr is kept: enough for a traceback, never the whole flood."""
SANDBOX_UIDS = range(60100, 60164)
"""Dedicated uids, one per running sample; never shared, so "kill every process of this uid" is exact."""
UID_LOCK_DIR = "/run/lightning-sft-sandbox"


@dataclass
class SandboxRun:
    """How one program ended. Judging it (passed or not) is the caller's business."""

    exit_status: int | None
    """Like ``Popen.returncode``: 0 is success, -N means killed by signal N; None if killed at the wall clock."""
    timed_out: bool
    setup_error: str
    """Why the sandbox could not run the program at all; empty when it ran."""
    stdout_tail: str
    stderr_tail: str


def run_sandboxed(program: str, timeout_s: float, memory_mb: int) -> SandboxRun:
    """Run ``program`` (Python source) in a fresh sandbox; a hang costs at most ``timeout_s``."""
    with _sandbox_account() as account, \
            tempfile.TemporaryDirectory(prefix="lsft-sandbox-", ignore_cleanup_errors=True) as parent_dir, \
            tempfile.TemporaryFile() as stdout_file, tempfile.TemporaryFile() as stderr_file:
        config = _launcher_config(program, parent_dir, account, timeout_s, memory_mb)
        report_read, config["report_fd"] = os.pipe()
        try:
            launcher = _start_launcher(config, parent_dir, stdout_file, stderr_file)
            try:
                timed_out = _wait(launcher, timeout_s)
            finally:  # on KeyboardInterrupt too: never leave a sample running
                _kill_leftovers(launcher.pid, account)
                launcher.wait()
            report = _read_report(report_read)
        finally:
            os.close(report_read)
        exit_status = None if timed_out else report.get("exit_status", launcher.returncode)
        return SandboxRun(exit_status, timed_out, report.get("error", ""),
                          _tail(stdout_file), _tail(stderr_file))


@contextlib.contextmanager
def _sandbox_account():
    """Yield (uid, gid) of a free dedicated account, or None when we are not root and cannot switch.

    A file lock per uid, in a directory only root can write, makes the uid ours alone: threads of
    this process and other evaluator processes (say, one per DDP rank) skip it while we hold it.
    """
    if os.geteuid() != 0:
        yield None
        return
    os.makedirs(UID_LOCK_DIR, mode=0o700, exist_ok=True)
    for uid in SANDBOX_UIDS:
        if _is_named_account(uid):
            continue
        with open(os.path.join(UID_LOCK_DIR, f"{uid}.lock"), "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            _kill_processes(lambda process: process["uid"] == uid)  # leftovers of a crashed evaluator
            if any(process["uid"] == uid for process in _processes(include_zombies=True)):
                continue  # unreaped zombies count against RLIMIT_NPROC: the sample could not fork at all
            yield uid, uid
            return
    raise RuntimeError(f"All {len(SANDBOX_UIDS)} sandbox uids are busy (locked in {UID_LOCK_DIR} by running "
                       f"evaluators, or holding unreaped zombies): run fewer samples at once.")


def _is_named_account(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def _launcher_config(program, parent_dir, account, timeout_s, memory_mb) -> dict:
    """Write the program to the evaluator's temp dir and describe the sandbox for the launcher."""
    program_path = os.path.join(parent_dir, "program.py")
    with open(program_path, "w") as program_file:
        program_file.write(program)
    uid, gid = account if account else (None, None)
    if account:  # the work dir when no private /tmp can be mounted
        os.chown(parent_dir, uid, gid)
        os.chmod(program_path, 0o644)
    return {"program": program_path, "parent_dir": parent_dir, "uid": uid, "gid": gid,
            "cpu_seconds": math.ceil(timeout_s) + 1, "memory_bytes": memory_mb * 1024 * 1024}


def _start_launcher(config: dict, parent_dir: str, stdout_file, stderr_file) -> subprocess.Popen:
    """Start ``python -I -S sandbox_launcher.py CONFIG`` in its own session, with nothing of our environment."""
    try:
        return subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(sandbox_launcher.__file__), json.dumps(config)],
            stdin=subprocess.DEVNULL, stdout=stdout_file, stderr=stderr_file, cwd=parent_dir,
            env=sandbox_launcher.base_env(), start_new_session=True, pass_fds=(config["report_fd"],))
    finally:
        os.close(config["report_fd"])  # only the launcher and its children may hold the write end


def _wait(launcher: subprocess.Popen, timeout_s: float) -> bool:
    """Wait for the launcher; True if the wall-clock limit ran out first."""
    try:
        launcher.wait(timeout=timeout_s)
        return False
    except subprocess.TimeoutExpired:
        return True


def _kill_leftovers(launcher_pid: int, account) -> None:
    """SIGKILL everything the sample may have left: its group, its session and, as root, its uid."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(launcher_pid, signal.SIGKILL)
    _kill_processes(lambda process: process["session"] == launcher_pid
                    or (account is not None and process["uid"] == account[0]))


def _kill_processes(matches) -> None:
    """SIGKILL live processes that ``matches``, again and again until none is left (forks race us)."""
    for _ in range(200):
        victims = [process["pid"] for process in _processes() if matches(process)]
        if not victims:
            return
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)
    raise RuntimeError("Sandbox processes survived 200 rounds of SIGKILL; check `ps` for them.")


def _processes(include_zombies: bool = False) -> list[dict]:
    """pid, real uid and session of every process; zombies only on request (they are dead, just unreaped)."""
    processes = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as stat_file:
                fields = stat_file.read().rsplit(")", 1)[1].split()  # the command name may hold spaces
            with open(f"/proc/{name}/status") as status_file:
                uid_line = next(line for line in status_file if line.startswith("Uid:"))
        except (OSError, StopIteration, IndexError):
            continue  # exited while we looked
        if include_zombies or fields[0] not in ("Z", "X"):
            processes.append({"pid": int(name), "session": int(fields[3]), "uid": int(uid_line.split()[1])})
    return processes


def _read_report(report_read: int) -> dict:
    """Merge the JSON lines the launcher wrote: an ``error`` and/or the sample's ``exit_status``."""
    os.set_blocking(report_read, False)  # every writer is dead by now; never wait on a stray one
    chunks = []
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(report_read, 65536):
            chunks.append(chunk)
    report = {}
    for line in b"".join(chunks).decode(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            report.update(json.loads(line))
    return report


def _tail(output_file) -> str:
    """The last OUTPUT_TAIL_BYTES of a captured stream, read without loading the rest."""
    size = output_file.seek(0, os.SEEK_END)
    output_file.seek(max(0, size - OUTPUT_TAIL_BYTES))
    return output_file.read().decode(errors="replace")
