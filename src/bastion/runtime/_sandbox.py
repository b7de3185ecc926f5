"""Run a code-execution tool in a separate, limited, isolated process.

``Sandbox(policy).run(argv)`` / ``.run_python(code)`` returns a typed ``SandboxResult`` or raises
``IsolationUnavailable`` *before anything runs* when the machine cannot give the isolation the
policy requires. It never falls back to a weaker level. Levels are described in
``bastion.runtime._isolation``.

Every live sandbox is in a process-wide registry so that ``kill_all_sandboxes`` (called by the
kill switch) can stop them all; a killed run returns with ``killed_reason`` set.
"""

from __future__ import annotations

import contextlib
import contextvars
import operator
import os
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import IO

from bastion._errors import ConfigError
from bastion.runtime._errors import IsolationUnavailable, SandboxError
from bastion.runtime._isolation import (
    Capabilities,
    IsolationLevel,
    PidsCgroup,
    detect_isolation,
    wrap,
)

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxPolicy:
    """Limits for one sandboxed run. Parsed once; invalid values raise ``ConfigError``.

    ``required_level`` is a floor: the run uses the weakest available level at or above it.
    """

    required_level: IsolationLevel = IsolationLevel.NAMESPACES
    timeout_s: float = 10.0
    cpu_seconds: int = 5
    memory_bytes: int = 512 * MiB
    max_file_bytes: int = 16 * MiB
    max_processes: int = 32
    max_open_files: int = 256
    max_output_bytes: int = 64 * 1024
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.timeout_s, int | float) or isinstance(self.timeout_s, bool) \
                or not 0 < self.timeout_s <= _MAX_TIMEOUT_S:  # NaN and inf too
            raise ConfigError(f"sandbox policy: 'timeout_s' must be a number of seconds above "
                              f"0 and at most {_MAX_TIMEOUT_S}")
        for name, most in (("cpu_seconds", _MAX_LIMIT), ("memory_bytes", _MAX_LIMIT),
                           ("max_file_bytes", _MAX_LIMIT), ("max_processes", _PID_MAX_LIMIT),
                           ("max_open_files", _nr_open()), ("max_output_bytes", _MAX_LIMIT)):
            value = getattr(self, name)  # what setrlimit, pids.max and a byte count can take
            try:  # an integer by another type (IntEnum, numpy's) is its integer; bool is not
                number = operator.index(value) if not isinstance(value, bool) else None
            except TypeError:
                number = None
            if number is None or not 0 < number <= most:
                raise ConfigError(f"sandbox policy: {name!r} must be a positive integer of at "
                                  f"most {most}")
            object.__setattr__(self, name, int(number))
        if not isinstance(self.required_level, IsolationLevel):
            raise ConfigError("sandbox policy: 'required_level' must be an IsolationLevel")


_MAX_TIMEOUT_S = 86_400.0  # a day: a timer can hold it (threading.TIMEOUT_MAX is far larger)
_MAX_LIMIT = (1 << 62) - 1  # below RLIM_INFINITY and what setrlimit's C type holds
_PID_MAX_LIMIT = 4_194_304  # the most pids.max (and a pid) can be on Linux


def _nr_open() -> int:
    """The most open files a process may be allowed (``fs.nr_open``; 1 << 20 by default)."""
    try:
        return int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        return 1 << 20


@dataclass(frozen=True, slots=True)
class ResourceUsage:
    """What the run used, from ``wait4`` (CPU includes waited-for descendants)."""

    cpu_user_s: float
    cpu_system_s: float
    max_rss_kib: int
    wall_s: float


@dataclass(frozen=True, slots=True)
class SandboxResult:
    """The outcome of one run. ``signal`` is set when the process was ended by a signal.

    ``killed_reason`` is ``"timeout"``, ``"cpu_limit"``, ``"file_size_limit"``, the reason given
    to ``kill_all_sandboxes`` (e.g. ``"kill_switch"``), or ``None``.
    """

    exit_code: int | None
    signal: int | None
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    timed_out: bool
    killed_reason: str | None
    level: IsolationLevel
    usage: ResourceUsage

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.killed_reason is None


class _Live:
    """A running sandbox: its process group and cgroup, killable from any thread."""

    def __init__(self, pid: int, cgroup: PidsCgroup | None, labels: Mapping[str, str]):
        self.pid = pid
        self.cgroup = cgroup
        self.labels = dict(labels)
        self.reason: str | None = None
        self.reaped = False  # set before the leader is reaped: its pgid may then be reused
        self._lock = threading.Lock()

    def kill(self, reason: str) -> None:
        with self._lock:
            if self.reaped:
                return
            if self.reason is None:
                self.reason = reason
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            if self.cgroup is not None:
                self.cgroup.kill()

    def reaping(self) -> None:
        """No kill after this: the leader is about to be reaped."""
        with self._lock:
            self.reaped = True


_LIVE: dict[int, _Live] = {}
_LIVE_LOCK = threading.Lock()
_LABELS: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "bastion_sandbox_labels", default=MappingProxyType({}))


@contextlib.contextmanager
def labelled(**labels: str) -> Iterator[None]:
    """Label the sandboxes started inside the block (``agent``, ``session``, ``tool``) so a
    scoped kill switch can find them."""
    token = _LABELS.set({**_LABELS.get(), **labels})
    try:
        yield
    finally:
        _LABELS.reset(token)


def kill_all_sandboxes(reason: str = "kill_switch") -> int:
    """SIGKILL every running sandbox of this process (group and cgroup); return how many."""
    return kill_sandboxes(lambda labels: True, reason)


def kill_sandboxes(match: Callable[[Mapping[str, str]], bool], reason: str) -> int:
    """SIGKILL the running sandboxes of this process whose labels ``match``."""
    with _LIVE_LOCK:
        live = [run for run in _LIVE.values() if match(run.labels)]
    failures: list[BaseException] = []
    for run in live:
        try:
            run.kill(reason)
        except Exception as exc:  # one run that cannot be killed must not spare the others
            failures.append(exc)
    if failures:
        raise SandboxError(f"sandbox: {len(failures)} of {len(live)} runs could not be killed: "
                           f"{failures[0]!r}")
    return len(live)


def running_sandboxes() -> int:
    with _LIVE_LOCK:
        return len(_LIVE)


def _writer(stream: IO[bytes], data: bytes | None) -> None:
    with contextlib.suppress(OSError, ValueError):  # the run ended or closed its stdin
        if data:
            stream.write(data)
        stream.close()


def _reader(stream: IO[bytes], limit: int, out: list[bytes], flags: list[bool]) -> None:
    """Keep the first ``limit`` bytes of ``stream`` and drain (and count as truncated) the rest."""
    kept = 0
    while chunk := stream.read1(65536):  # type: ignore[attr-defined]
        if kept < limit:
            out.append(chunk[: limit - kept])
        if kept + len(chunk) > limit:
            flags.append(True)
        kept += len(chunk)
    stream.close()


def _uid_process_count(uid: int) -> int:
    n = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    n += 1
            except OSError:
                continue
    return n


class Sandbox:
    """Runs commands under one ``SandboxPolicy``; thread-safe, one process per run."""

    def __init__(self, policy: SandboxPolicy | None = None, *,
                 capabilities: Capabilities | None = None,
                 clock: Callable[[], float] = time.monotonic, python: str | None = None,
                 stop: Callable[[], str | None] | None = None):
        self.policy = policy or SandboxPolicy()
        # asked once a run is registered: a reason kills it at once (a kill switch engaged
        # after the decision but before the run could be found by ``kill_sandboxes``)
        self._stop = stop
        self.caps = capabilities if capabilities is not None else detect_isolation()
        self._clock = clock
        # the real interpreter, not a venv's symlink: bwrap gives the sandbox its own /tmp, so
        # a venv (or checkout) under /tmp would not exist inside it
        self.python = python or os.path.realpath(sys.executable)

    def level(self) -> IsolationLevel:
        """The level a run will use; raises ``IsolationUnavailable`` when none fits."""
        chosen = self.caps.pick(self.policy.required_level)
        if chosen is None:
            raise IsolationUnavailable(self.policy.required_level.name.lower(),
                                       self.caps.best.name.lower(),
                                       "; ".join(self.caps.notes) or "not supported here")
        return chosen

    def run_python(self, code: str, *, stdin: bytes | None = None) -> SandboxResult:
        """Run a Python snippet (``python -I main.py`` in the work directory)."""
        return self.run([self.python, "-I", "-B", "main.py"], stdin=stdin,
                        files={"main.py": code.encode()})

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None,
            files: Mapping[str, bytes] | None = None) -> SandboxResult:
        """Run ``argv`` in a fresh sandbox.

        Steps:
        1. Choose the level (``level()``); if none fits, raise ``IsolationUnavailable`` before
           creating anything.
        2. Create a private work directory (mode 0700) and write ``files`` into it.
        3. Create the pids cgroup when that is the mechanism (at every level: it is how the kill
           reaches a descendant that left the process group); at ``RLIMITS`` and above, also
           set the rlimits.
        4. Fork; in the child, before exec: join the cgroup, set every rlimit, start a new
           session (so the process group id is the child's pid).
        5. Register the run in the live registry; kill it at once if ``stop`` gives a reason;
           arm the wall-clock timer.
        6. Read stdout/stderr on threads, keeping at most ``max_output_bytes`` of each.
        7. Wait for the child without reaping it, then SIGKILL its process group and cgroup so
           no descendant outlives the run; then reap it with ``wait4`` for resource usage.
        8. Deregister; remove the cgroup and the work directory.
        """
        import subprocess

        if not argv:
            raise ConfigError("sandbox: empty argv")
        level = self.level()
        pol = self.policy
        workdir = tempfile.mkdtemp(prefix="bastion-sbx-")
        cgroup: PidsCgroup | None = None
        try:
            for name, data in (files or {}).items():
                target = Path(workdir, name)
                if target.parent != Path(workdir) or name in (".", "..") or "\0" in name:
                    raise ConfigError(f"sandbox: file name {name!r} must be a plain name")
                target.write_bytes(data)
            limits: list[tuple[int, int, int]] = []
            if level >= IsolationLevel.RLIMITS:
                limits = self._rlimits()
            # at every level: the cgroup is how the kill reaches a descendant that left the
            # process group (setsid)
            if self.caps.pids and self.caps.pids.startswith("cgroup") and self.caps.cgroup_root:
                cgroup = PidsCgroup(self.caps.cgroup_root, self.caps.pids,
                                    f"{os.getpid()}-{threading.get_ident()}-"
                                    f"{time.monotonic_ns()}", pol.max_processes)
            wrapped = wrap(level, self.caps, list(argv), workdir, tmp_bytes=pol.memory_bytes,
                           inputs=tuple(files or ()))
            return self._spawn(level, wrapped, workdir,
                               limits, cgroup, stdin)
        except (OSError, subprocess.SubprocessError) as exc:  # a limit the kernel refused
            raise SandboxError(f"sandbox: cannot run {argv[0]!r}: {exc}") from exc
        finally:
            if cgroup is not None:
                cgroup.remove()
            shutil.rmtree(workdir, ignore_errors=True)

    def _rlimits(self) -> list[tuple[int, int, int]]:
        pol = self.policy
        limits = [(resource.RLIMIT_CPU, pol.cpu_seconds, pol.cpu_seconds + 1),
                  (resource.RLIMIT_AS, pol.memory_bytes, pol.memory_bytes),
                  (resource.RLIMIT_FSIZE, pol.max_file_bytes, pol.max_file_bytes),
                  (resource.RLIMIT_NOFILE, pol.max_open_files, pol.max_open_files),
                  (resource.RLIMIT_CORE, 0, 0)]
        if self.caps.pids == "rlimit":
            n = _uid_process_count(os.getuid()) + pol.max_processes
            limits.append((resource.RLIMIT_NPROC, n, n))
        return limits

    def _spawn(self, level: IsolationLevel, argv: list[str], workdir: str,
               limits: list[tuple[int, int, int]], cgroup: PidsCgroup | None,
               stdin: bytes | None) -> SandboxResult:
        import subprocess

        pol = self.policy
        home = "/tmp/sandbox" if level == IsolationLevel.BWRAP else workdir
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home,
               "LANG": "C.UTF-8", **pol.env}
        join_fd = cgroup.join_fd if cgroup is not None else -1

        def in_child() -> None:  # runs between fork and exec: no locks, no allocation-heavy work
            if join_fd >= 0:
                os.write(join_fd, b"0")
            for which, soft, hard in limits:
                resource.setrlimit(which, (soft, hard))

        started = self._clock()
        proc = subprocess.Popen(argv, cwd=workdir, env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, preexec_fn=in_child, close_fds=True)
        live = _Live(proc.pid, cgroup, _LABELS.get())
        with _LIVE_LOCK:
            _LIVE[proc.pid] = live
        if self._stop is not None:
            try:
                why = self._stop()
            except Exception as exc:  # cannot tell whether to stop: stop
                why = f"stop check failed: {type(exc).__name__}"
            if why is not None:
                live.kill(why)
        timer = threading.Timer(pol.timeout_s, live.kill, ("timeout",))
        timer.daemon = True
        timer.start()
        outs: tuple[list[bytes], list[bytes]] = ([], [])
        flags: tuple[list[bool], list[bool]] = ([], [])
        assert proc.stdin and proc.stdout and proc.stderr
        readers = [threading.Thread(target=_reader, daemon=True,
                                    args=(s, pol.max_output_bytes, o, f))
                   for s, o, f in zip((proc.stdout, proc.stderr), outs, flags, strict=True)]
        for t in readers:
            t.start()
        # written on a thread: a child (or a descendant) that holds stdin without reading it
        # must not hold the run past its timeout
        writer = threading.Thread(target=_writer, args=(proc.stdin, stdin), daemon=True)
        writer.start()
        try:
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
            timer.cancel()
            live.kill(live.reason or "cleanup")  # the leader is a zombie: its pgid is still ours
            live.reaping()  # no kill after this one, from a snapshot taken before either
            with _LIVE_LOCK:
                _LIVE.pop(proc.pid, None)
            _, status, ru = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            timer.cancel()
            with _LIVE_LOCK:
                _LIVE.pop(proc.pid, None)
        wall = self._clock() - started
        for t in readers:
            t.join(timeout=2.0)
        reason = None if live.reason == "cleanup" else live.reason
        code: int | None = proc.returncode
        sig: int | None = None
        if code is not None and code < 0:
            sig, code = -code, None
        elif level == IsolationLevel.BWRAP and code is not None and code > 128:
            sig, code = code - 128, None  # bwrap reports a signalled child as 128 + signal
        if reason is None and sig == signal.SIGXCPU:
            reason = "cpu_limit"
        elif reason is None and code != 0 and ru.ru_utime + ru.ru_stime >= pol.cpu_seconds:
            reason = "cpu_limit"  # a wrapper may report SIGXCPU/SIGKILL of its child as an exit
        elif reason is None and sig == signal.SIGXFSZ:
            reason = "file_size_limit"
        return SandboxResult(
            exit_code=code, signal=sig,
            stdout=b"".join(outs[0]).decode(errors="replace"),
            stderr=b"".join(outs[1]).decode(errors="replace"),
            stdout_truncated=bool(flags[0]), stderr_truncated=bool(flags[1]),
            timed_out=reason == "timeout", killed_reason=reason, level=level,
            usage=ResourceUsage(ru.ru_utime, ru.ru_stime, ru.ru_maxrss, wall))
