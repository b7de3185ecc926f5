"""What OS isolation this machine offers, detected once, and how each level wraps a command.

Levels are cumulative; each one includes every guarantee of the levels below it:

``NONE``
    A separate process in its own session and process group, a private temporary working
    directory, a scrubbed environment and a wall-clock timeout. Nothing else.
``RLIMITS``
    Plus kernel-enforced limits: CPU seconds (``RLIMIT_CPU``), address space (``RLIMIT_AS``),
    file size (``RLIMIT_FSIZE``), open files, no core dumps, and a process-count limit. The
    process-count limit uses a cgroup ``pids`` controller when one is writable; otherwise
    ``RLIMIT_NPROC``, which the kernel ignores for uid 0, so for root without a cgroup this level
    is *unavailable*.
``NAMESPACES``
    Plus ``unshare(1)``: new user (mapped to the caller's uid), network (loopback only, down),
    pid (with its own ``/proc``), mount, ipc and uts namespaces; ``setpriv(1)`` then sets
    no-new-privs and clears the capability bounding set. **No filesystem isolation**: writes
    outside the work directory are limited only by the file permissions of the calling user.
``BWRAP``
    Plus ``bwrap(1)``: only the system's programs and libraries (and the Python installation)
    are visible, read-only — no home directories, /var, /run or host sockets; ``/tmp`` is a
    private tmpfs holding the work directory (``/tmp/sandbox``), and with a small ``/dev/shm``
    it is the only writable place, both sized out of the memory limit; minimal read-only
    ``/dev``, all
    capabilities dropped, nested user namespaces disabled, the sandbox dies with its parent.

Detection (``detect_isolation``) runs a real probe for each level — it creates and removes a
cgroup and runs ``true`` under each wrapper — so a level is reported only if it worked here.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

SANDBOX_DIR = "/tmp/sandbox"  # where BWRAP mounts the work directory inside the sandbox


class IsolationLevel(enum.IntEnum):
    """Ordered isolation levels; a higher level includes every guarantee of a lower one."""

    NONE = 0
    RLIMITS = 1
    NAMESPACES = 2
    BWRAP = 3


@dataclass(frozen=True, slots=True)
class Capabilities:
    """The isolation this machine offers, as probed; ``notes`` say why a level is missing."""

    levels: frozenset[IsolationLevel]
    pids: str | None  # "cgroup-v1" | "cgroup-v2" | "rlimit" | None
    cgroup_root: str | None = None
    unshare: str | None = None
    setpriv: str | None = None
    bwrap: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def best(self) -> IsolationLevel:
        return max(self.levels)

    def pick(self, required: IsolationLevel) -> IsolationLevel | None:
        """The weakest available level that is at least ``required``; ``None`` if there is none."""
        fitting = [lvl for lvl in self.levels if lvl >= required]
        return min(fitting) if fitting else None


# -- process-count limit through a cgroup ----------------------------------------------------

def _find_cgroup_pids_root() -> tuple[str, str] | None:
    """The mount point of a cgroup hierarchy that offers the ``pids`` controller, and its kind."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        parts = line.split()
        if len(parts) < 4:
            continue
        point, fstype, opts = parts[1], parts[2], parts[3].split(",")
        if fstype == "cgroup" and "pids" in opts:
            return point, "cgroup-v1"
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "cgroup2":
            try:
                controllers = Path(parts[1], "cgroup.controllers").read_text().split()
            except OSError:
                continue
            if "pids" in controllers:
                return parts[1], "cgroup-v2"
    return None


class PidsCgroup:
    """One cgroup with a ``pids.max`` limit holding exactly one sandbox's processes.

    The child joins it between fork and exec (``join_fd`` is written from the child), so no
    process of the sandbox ever runs outside it; ``kill`` therefore reaches every descendant,
    including those that left the process group with ``setsid``.
    """

    def __init__(self, root: str, kind: str, name: str, max_pids: int):
        base = Path(root, "bastion-sandbox")
        base.mkdir(exist_ok=True)
        if kind == "cgroup-v2":
            for parent in (Path(root), base):
                (parent / "cgroup.subtree_control").write_text("+pids")
        self.path = base / name
        self.kind = kind
        self.path.mkdir()
        (self.path / "pids.max").write_text(str(max_pids))
        self.join_fd = os.open(self.path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def kill(self) -> None:
        """SIGKILL every process in the cgroup until it is empty (``pids.max`` bounds the work)."""
        kill_file = self.path / "cgroup.kill"
        if self.kind == "cgroup-v2":
            with contextlib.suppress(OSError):  # gone already: the run ended meanwhile
                kill_file.write_text("1")
        for _ in range(200):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def remove(self) -> None:
        os.close(self.join_fd)
        self.kill()
        for _ in range(100):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                self.kill()
                os.sched_yield()


# -- wrappers ------------------------------------------------------------------------------

def wrap(level: IsolationLevel, caps: Capabilities, argv: list[str], workdir: str, *,
         tmp_bytes: int = 64 << 20, inputs: tuple[str, ...] = ()) -> list[str]:
    """The argv that runs ``argv`` at ``level``; the caller has checked the level is available.
    ``tmp_bytes`` bounds the sandbox's writable memory (bwrap): its private ``/tmp`` and
    ``/dev/shm`` together (``/dev`` is otherwise read-only). Under bwrap the work directory is a
    directory on that ``/tmp``, so everything the program writes counts against ``tmp_bytes``;
    the ``inputs`` (plain names of files in ``workdir``) are bound into it one by one, each
    still bounded by the file-size limit."""
    if level <= IsolationLevel.RLIMITS:
        return list(argv)
    if level == IsolationLevel.NAMESPACES:
        assert caps.unshare and caps.setpriv
        return [caps.unshare, "--user", "--map-root-user", "--net", "--pid", "--fork",
                "--kill-child", "--mount", "--mount-proc", "--ipc", "--uts", "--",
                caps.setpriv, "--no-new-privs", "--bounding-set=-all", "--inh-caps=-all", "--",
                *argv]
    assert caps.bwrap
    # bwrap's /dev is an unsized tmpfs the sandbox can write to: make it read-only and give
    # /dev/shm (POSIX shared memory, semaphores) an eighth of the budget, /tmp the rest
    shm_bytes = max(tmp_bytes // 8, 4096)
    return [caps.bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
            "--disable-userns", "--cap-drop", "ALL", "--uid", "65534", "--gid", "65534",
            "--hostname", "sandbox", *_system_view(), "--dev", "/dev",
            "--size", str(shm_bytes), "--tmpfs", "/dev/shm", "--remount-ro", "/dev",
            "--proc", "/proc",
            "--size", str(max(tmp_bytes - shm_bytes, 4096)), "--tmpfs", "/tmp",
            "--dir", SANDBOX_DIR,
            *(arg for name in inputs for arg in (
                "--bind", os.path.join(workdir, name), f"{SANDBOX_DIR}/{name}")),
            "--remount-ro", "/",
            "--chdir", SANDBOX_DIR, "--", *argv]


# What a sandboxed program sees of the host: the system's programs and libraries, read-only, and
# nothing else — no /root, /home, /var, /run (no host unix sockets: databases, brokers), no
# /etc beyond the dynamic loader's files, no checkout or state store.
_SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
                 "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives",
                 "/etc/localtime")


def _system_view() -> list[str]:
    args: list[str] = []
    for path in (*_SYSTEM_PATHS, *_interpreter_dirs()):
        if os.path.islink(path) and path.count("/") == 1:  # merged /usr: /bin -> usr/bin
            args += ["--symlink", os.readlink(path), path]
        elif os.path.exists(path):
            args += ["--ro-bind", path, path]
    return args


def _interpreter_dirs() -> list[str]:
    """The Python installation (which may live under /root, e.g. pyenv), read-only."""
    prefix = os.path.realpath(sys.base_prefix)
    return [] if prefix.startswith("/usr") or prefix == "/" else [prefix]


def _probe(argv: list[str]) -> str | None:
    """Run a probe; ``None`` on success, else a one-line reason."""
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"exit {done.returncode}"
    return None


def _probe_cgroup() -> tuple[str, str] | str:
    found = _find_cgroup_pids_root()
    if found is None:
        return "no cgroup hierarchy with the 'pids' controller is mounted"
    root, kind = found
    try:
        probe = PidsCgroup(root, kind, f"probe-{os.getpid()}", 4)
        probe.remove()
    except OSError as exc:
        return f"cgroup {root!r} is not usable: {exc}"
    return root, kind


@functools.lru_cache(maxsize=1)
def detect_isolation() -> Capabilities:
    """Probe this machine once per process (cached) and return what it offers.

    Steps:
    1. Find a writable cgroup ``pids`` controller (create and remove a probe cgroup). Without
       one, a non-root caller falls back to ``RLIMIT_NPROC``; root gets no process-count limit,
       so ``RLIMITS`` and everything above it are unavailable.
    2. Run ``true`` under the ``unshare``+``setpriv`` wrapper; success makes ``NAMESPACES``
       available.
    3. Run ``true`` under the ``bwrap`` wrapper; success makes ``BWRAP`` available.
    """
    notes: list[str] = []
    levels = {IsolationLevel.NONE}
    cg = _probe_cgroup()
    cgroup_root: str | None = None
    pids: str | None
    if isinstance(cg, tuple):
        cgroup_root, pids = cg
    elif os.geteuid() != 0:
        pids = "rlimit"
        notes.append(f"{cg}; using RLIMIT_NPROC (counts every process of this uid)")
    else:
        pids = None
        notes.append(f"{cg}; RLIMIT_NPROC does not bind uid 0, so no process-count limit")
    unshare, setpriv, bwrap = (shutil.which(t) for t in ("unshare", "setpriv", "bwrap"))
    caps = Capabilities(frozenset(levels), pids, cgroup_root, unshare, setpriv, bwrap)
    if pids is not None:
        levels.add(IsolationLevel.RLIMITS)
        true = shutil.which("true") or "/bin/true"
        if unshare and setpriv:
            why = _probe(wrap(IsolationLevel.NAMESPACES, caps, [true], "/"))
            if why is None:
                levels.add(IsolationLevel.NAMESPACES)
            else:
                notes.append(f"unshare probe failed: {why}")
        else:
            notes.append("unshare(1) or setpriv(1) not found (util-linux)")
        if bwrap:
            why = _probe(wrap(IsolationLevel.BWRAP, caps, [true], "/tmp"))
            if why is None:
                levels.add(IsolationLevel.BWRAP)
            else:
                notes.append(f"bwrap probe failed: {why}")
        else:
            notes.append("bwrap not found (apt-get install -y bubblewrap)")
    return Capabilities(frozenset(levels), pids, cgroup_root, unshare, setpriv, bwrap,
                        tuple(notes))
