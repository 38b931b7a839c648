"""Run one untrusted Python program in a throwaway sandbox and report how it ended.

This file is two things. Imported, it gives :func:`run_sandboxed` to the evaluator. Run as a script
(``python -I -S sandbox.py CONFIG``), it is the *launcher*: a fresh single-threaded process that
sets up the isolation and then ``exec``s the program. Doing the setup there, not in a
``preexec_fn``, keeps it safe when the evaluator runs samples from a thread pool (Python code
between ``fork`` and ``exec`` of a threaded process can deadlock) and cheap when the evaluator is a
big training process (``Popen`` can ``vfork`` without a ``preexec_fn``). Standard library only.

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
import ctypes
import fcntl
import json
import math
import os
import pwd
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

OUTPUT_TAIL_BYTES = 64 * 1024
"""How much of the end of stdout and stderr is kept: enough for a traceback, never the whole flood."""
FILE_SIZE_LIMIT_BYTES = 10 * 1024 * 1024
MAX_PROCESSES = 32
MAX_OPEN_FILES = 64
SANDBOX_UIDS = range(60100, 60164)
"""Dedicated uids, one per running sample; never shared, so "kill every process of this uid" is exact."""
UID_LOCK_DIR = "/run/lightning-sft-sandbox"
MASKED_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
"""World-writable directories that get a private tmpfs, so nothing written there outlives the sample."""
TMPFS_OPTIONS = "size=64m,nr_inodes=4096,mode=1777"
SETUP_FAILED = 125
"""Exit status of the launcher when it could not set the sandbox up (the reason goes to the report pipe)."""

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x08000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_RDONLY = 2, 4, 8, 1
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18


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
    """Start ``python -I -S sandbox.py CONFIG`` in its own session, with nothing of our environment."""
    try:
        return subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), json.dumps(config)],
            stdin=subprocess.DEVNULL, stdout=stdout_file, stderr=stderr_file, cwd=parent_dir,
            env=_base_env(), start_new_session=True, pass_fds=(config["report_fd"],))
    finally:
        os.close(config["report_fd"])  # only the launcher and its children may hold the write end


def _base_env() -> dict[str, str]:
    """The whole environment a sample gets: nothing inherited, so no token or key leaks in."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}  # thread pools eat address space


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


# ---------------------------------------------------------------------------------------------
# The launcher: runs in its own process, as root when the evaluator is root, and ends in exec.
# ---------------------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _launch(config: dict) -> None:
    """Enter what namespaces we can, prepare the work dir, then become the sample (never returns)."""
    try:
        namespaces = _enter_namespaces() if config["uid"] is not None else set()
        workdir = _prepare_workdir(config, private_mounts="mnt" in namespaces)
        if "pid" in namespaces:
            _run_as_namespace_init(config, workdir)
        _become_sample(config, workdir)
    except Exception as exc:  # noqa: BLE001 - any failure here is the sandbox's, reported as such
        _report(config["report_fd"], error=f"sandbox setup failed: {type(exc).__name__}: {exc}")
        os._exit(SETUP_FAILED)


def _enter_namespaces() -> set[str]:
    """Unshare each namespace on its own, so one the kernel or container forbids costs only itself."""
    entered = set()
    for name, flag in (("net", CLONE_NEWNET), ("ipc", CLONE_NEWIPC), ("mnt", CLONE_NEWNS), ("pid", CLONE_NEWPID)):
        if _libc.unshare(flag) == 0:
            entered.add(name)
    # Without private propagation, mounts made "in" the new namespace would show up on the host.
    if "mnt" in entered and not _mount(None, "/", None, MS_REC | MS_PRIVATE):
        entered.discard("mnt")
    return entered


def _mount(source, target, fstype, flags, options=None) -> bool:
    """mount(2); False instead of an exception, since every mount here is optional hardening."""
    arguments = [None if text is None else text.encode() for text in (source, target, fstype)]
    data = None if options is None else options.encode()
    return _libc.mount(*arguments, ctypes.c_ulong(flags), data) == 0


def _prepare_workdir(config: dict, private_mounts: bool) -> str:
    """A private tmpfs work dir holding the program, or else the evaluator's temp dir."""
    if not private_mounts:
        return config["parent_dir"]
    with open(config["program"]) as program_file:  # read before /tmp (which may hold it) is masked
        program = program_file.read()
    os.umask(0o022)
    interpreter_dirs = _interpreter_handles()  # opened before any mount can hide them
    masked = [path for path in MASKED_DIRS if os.path.isdir(path)
              and _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, TMPFS_OPTIONS)]
    _expose_interpreter(interpreter_dirs)
    if "/tmp" not in masked:
        return config["parent_dir"]
    workdir = "/tmp/sandbox"
    os.mkdir(workdir, 0o700)
    os.chown(workdir, config["uid"], config["gid"])
    with open(os.path.join(workdir, "program.py"), "w") as program_file:
        program_file.write(program)
    return workdir


# The real interpreter binary, resolved at import (before any mount): a venv's ``bin/python`` is a
# symlink that may live under /tmp, which the sandbox hides.
INTERPRETER = os.path.realpath(sys.executable)


def interpreter_path() -> str:
    return INTERPRETER


def _interpreter_handles() -> dict[str, int]:
    """O_PATH handles of the interpreter's directories, to bind them back once mounts hide them."""
    prefixes = {os.path.realpath(sys.base_prefix), os.path.dirname(interpreter_path())}
    return {prefix: os.open(prefix, os.O_PATH) for prefix in sorted(prefixes)}


def _expose_interpreter(handles: dict[str, int]) -> None:
    """Make the interpreter reachable by the sandbox uid when it lives under a private or masked dir.

    pyenv and conda installs often sit under /root (mode 700), where an unprivileged user cannot
    reach them, and a Python under /tmp is hidden by the private /tmp. In our private mount
    namespace, a blocking directory is covered with an empty tmpfs and only the interpreter's
    prefixes are bound back, read-only: the sample can run Python but sees nothing else of that
    directory (no ~/.cache tokens, no ~/.ssh).
    """
    hidden = {prefix for prefix in handles if not os.path.isdir(prefix) or _first_unsearchable_dir(prefix)}
    for blocker in sorted({_first_unsearchable_dir(prefix) for prefix in hidden} - {None}):
        _mount("tmpfs", blocker, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for prefix, handle in handles.items():
        if prefix in hidden:
            os.makedirs(prefix, exist_ok=True)
            _mount(f"/proc/self/fd/{handle}", prefix, None, MS_BIND | MS_REC)
            _mount(None, prefix, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
        os.close(handle)


def _first_unsearchable_dir(path: str) -> str | None:
    """The first directory on ``path`` that "others" cannot enter, or None if all can be entered."""
    current = "/"
    for part in path.strip("/").split("/"):
        current = os.path.join(current, part)
        if os.path.isdir(current) and not os.stat(current).st_mode & 0o001:
            return current
    return None


def _run_as_namespace_init(config: dict, workdir: str) -> None:
    """Fork PID 1 of the new namespace, which forks the sample and reaps every orphan.

    When PID 1 exits the kernel kills everything left in the namespace, so no background process
    survives the sample. The sample is not PID 1 itself because PID 1 ignores default-action signals
    (SIGXCPU of the CPU limit included) and would collect zombies that count against RLIMIT_NPROC.
    """
    init_pid = os.fork()
    if init_pid == 0:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)  # show only this namespace
        sample_pid = os.fork()
        if sample_pid == 0:
            _become_sample(config, workdir)
        while True:
            pid, wait_status = os.wait()
            if pid == sample_pid:
                break
        _report(config["report_fd"], exit_status=os.waitstatus_to_exitcode(wait_status))
        os._exit(0)
    os.waitpid(init_pid, 0)
    os._exit(0)


def _become_sample(config: dict, workdir: str) -> None:
    """Limit, drop privileges, and exec ``python -I program.py`` in ``workdir``."""
    limits = {resource.RLIMIT_CPU: config["cpu_seconds"], resource.RLIMIT_AS: config["memory_bytes"],
              resource.RLIMIT_FSIZE: FILE_SIZE_LIMIT_BYTES, resource.RLIMIT_NPROC: MAX_PROCESSES,
              resource.RLIMIT_NOFILE: MAX_OPEN_FILES, resource.RLIMIT_CORE: 0}
    for limit, value in limits.items():
        hard = value + 1 if limit == resource.RLIMIT_CPU else value  # SIGXCPU first, SIGKILL a second later
        resource.setrlimit(limit, (value, hard))
    if config["uid"] is not None:
        os.setgroups([])
        os.setgid(config["gid"])
        os.setuid(config["uid"])
    os.umask(0o077)
    os.chdir(workdir)
    env = {**_base_env(), "HOME": workdir, "TMPDIR": workdir}
    os.set_inheritable(config["report_fd"], False)  # closes on exec; stays open to report a failed exec
    try:
        os.execve(interpreter_path(), [interpreter_path(), "-I", "program.py"], env)
    except PermissionError as exc:
        raise PermissionError(f"uid {os.getuid()} cannot run {interpreter_path()}; install Python where "
                              f"every user can read it") from exc


def _report(report_fd: int, **fields) -> None:
    os.write(report_fd, (json.dumps(fields) + "\n").encode())


if __name__ == "__main__":
    _launch(json.loads(sys.argv[1]))
