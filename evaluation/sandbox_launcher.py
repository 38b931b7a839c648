"""The sandbox launcher: run as ``python -I -S sandbox_launcher.py CONFIG`` by ``sandbox.py``.

A fresh single-threaded process that sets up the isolation and then ``exec``s the program. Doing
the setup here, not in a ``preexec_fn``, keeps it safe when the evaluator runs samples from a
thread pool (Python code between ``fork`` and ``exec`` of a threaded process can deadlock) and
cheap when the evaluator is a big training process (``Popen`` can ``vfork`` without a
``preexec_fn``). It runs as root when the evaluator is root, and ends in ``exec``. Standard
library only: it runs with ``-I -S``, outside the project's environment. What it guarantees is in
``sandbox.py``'s docstring.
"""

import ctypes
import json
import os
import resource
import sys

FILE_SIZE_LIMIT_BYTES = 10 * 1024 * 1024
MAX_PROCESSES = 32
MAX_OPEN_FILES = 64
MASKED_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
"""World-writable directories that get a private tmpfs, so nothing written there outlives the sample."""
TMPFS_OPTIONS = "size=64m,nr_inodes=4096,mode=1777"
SETUP_FAILED = 125
"""Exit status of the launcher when it could not set the sandbox up (the reason goes to the report pipe)."""

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x08000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_RDONLY = 2, 4, 8, 1
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18


def base_env() -> dict[str, str]:
    """The whole environment a sample gets: nothing inherited, so no token or key leaks in."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}  # thread pools eat address space


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
    env = {**base_env(), "HOME": workdir, "TMPDIR": workdir}
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
