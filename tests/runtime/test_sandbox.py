"""The sandbox's limits hold for real: each test attacks one limit and checks it from outside.

Levels this machine lacks are skipped with the detector's reason; a level that is required but
missing is refused (tested with injected capabilities, so that test runs everywhere).
"""

from __future__ import annotations

import os
import socket
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from bastion import ConfigError
from bastion.runtime import (
    Capabilities,
    IsolationLevel,
    IsolationUnavailable,
    Sandbox,
    SandboxPolicy,
    detect_isolation,
    kill_all_sandboxes,
    running_sandboxes,
)

CAPS = detect_isolation()
L = IsolationLevel


def need(level: IsolationLevel) -> pytest.MarkDecorator:
    return pytest.mark.skipif(level not in CAPS.levels,
                              reason=f"{level.name} unavailable here: {'; '.join(CAPS.notes)}")


def at(level: IsolationLevel) -> object:
    return pytest.param(level, marks=need(level), id=level.name.lower())


LIMITED = [at(L.RLIMITS), at(L.NAMESPACES), at(L.BWRAP)]
NETLESS = [at(L.NAMESPACES), at(L.BWRAP)]


def box(level: IsolationLevel, **kw: object) -> Sandbox:
    return Sandbox(SandboxPolicy(required_level=level, **{"timeout_s": 3.0, **kw}))  # type: ignore[arg-type]


def survivors(marker: str) -> list[int]:
    """Pids of processes whose environment carries ``marker`` (i.e. started by one run)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if marker.encode() in Path(entry.path, "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


# -- refusal -----------------------------------------------------------------------------------

def test_required_but_unavailable_level_is_refused_before_anything_runs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    def no_spawn(*a: object, **k: object) -> None:
        raise AssertionError("a refused sandbox must not start a process")

    monkeypatch.setattr(subprocess, "Popen", no_spawn)
    only_none = Capabilities(frozenset({L.NONE}), pids=None, notes=("no cgroup",))
    for level in (L.RLIMITS, L.NAMESPACES, L.BWRAP):
        sb = Sandbox(SandboxPolicy(required_level=level), capabilities=only_none)
        with pytest.raises(IsolationUnavailable) as err:
            sb.run_python("print('escaped')")
        assert err.value.required == level.name.lower() and err.value.available == "none"
        assert err.value.code == "isolation_unavailable"


def test_a_stronger_level_satisfies_a_weaker_requirement_and_never_the_reverse() -> None:
    caps = Capabilities(frozenset({L.NONE, L.BWRAP}), pids="cgroup-v1")
    assert caps.pick(L.RLIMITS) == L.BWRAP and caps.pick(L.NONE) == L.NONE
    assert Capabilities(frozenset({L.NONE, L.RLIMITS}), pids="x").pick(L.NAMESPACES) is None


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ConfigError):
        SandboxPolicy(timeout_s=0)
    with pytest.raises(ConfigError):
        SandboxPolicy(required_level=2)  # type: ignore[arg-type]
    for endless in (float("inf"), float("nan"), 10.0**9):  # a timer that never fires
        with pytest.raises(ConfigError, match="timeout_s"):
            SandboxPolicy(timeout_s=endless)


# -- limits --------------------------------------------------------------------------------------

@pytest.mark.parametrize("level", LIMITED)
def test_fork_bomb_is_contained_and_leaves_no_survivor(level: IsolationLevel) -> None:
    marker = f"BASTION_T_{uuid.uuid4().hex}"
    counting = ("import os, time\nn = 0\ntry:\n    while n < 500:\n        if os.fork() == 0:\n"
                "            time.sleep(30); os._exit(0)\n        n += 1\nexcept OSError:\n"
                "    pass\nprint(n)\n")
    r = box(level, max_processes=16, env={marker: "1"}).run_python(counting)
    assert r.exit_code == 0, r.stderr
    assert int(r.stdout) < 16  # forks stopped at the limit
    assert survivors(marker) == []  # the sleeping children did not outlive the run
    bomb = ("import os\nif os.fork() == 0:\n    os.setsid()  # leave the process group\n"
            "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n")
    t = time.monotonic()
    r = box(level, max_processes=16, timeout_s=1.0, env={marker: "1"}).run_python(bomb)
    assert r.timed_out and r.killed_reason == "timeout", r.stderr
    assert time.monotonic() - t < 5
    assert survivors(marker) == []


@pytest.mark.parametrize("level", LIMITED)
def test_memory_hog_is_stopped(level: IsolationLevel) -> None:
    hog = "chunks = []\nwhile True:\n    chunks.append(bytearray(32 * 1024 * 1024))\n"
    r = box(level, memory_bytes=256 * 1024 * 1024).run_python(hog)
    assert not r.ok and "MemoryError" in r.stderr
    assert r.usage.max_rss_kib < 300 * 1024


@pytest.mark.parametrize("level", LIMITED)
def test_cpu_spin_is_killed_by_the_cpu_limit(level: IsolationLevel) -> None:
    r = box(level, cpu_seconds=1, timeout_s=60.0).run_python("while True:\n    pass\n")
    assert r.killed_reason == "cpu_limit" and not r.timed_out


@pytest.mark.parametrize("level", LIMITED)
def test_file_size_limit_holds(level: IsolationLevel) -> None:
    code = "open('big', 'wb').write(b'x' * (2 * 1024 * 1024))\n"
    r = box(level, max_file_bytes=1024 * 1024).run_python(code)
    assert not r.ok and "File too large" in r.stderr


@pytest.mark.parametrize("level", [at(L.NONE), *LIMITED])
def test_sleep_past_the_timeout_is_killed_with_its_group(level: IsolationLevel) -> None:
    marker = f"BASTION_T_{uuid.uuid4().hex}"
    code = "import os, time\nif os.fork() == 0:\n    time.sleep(30)\ntime.sleep(30)\n"
    t = time.monotonic()
    r = box(level, timeout_s=1.0, env={marker: "1"}).run_python(code)
    assert r.timed_out and r.killed_reason == "timeout" and r.exit_code is None
    assert 0.9 < time.monotonic() - t < 4
    assert survivors(marker) == []


# -- network and filesystem ----------------------------------------------------------------------

def _connect_code(port: int) -> str:
    return "\n".join([
        "import socket",
        f"for addr in (('127.0.0.1', {port}), ('1.1.1.1', 53)):",
        "    try:",
        "        socket.create_connection(addr, timeout=1)",
        "        print('connected')",
        "    except OSError as e:",
        "        print('refused', e)",
        ""])


@pytest.fixture
def listener() -> object:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    yield srv
    srv.close()


@pytest.mark.parametrize("level", NETLESS)
def test_network_connect_fails(level: IsolationLevel, listener: socket.socket) -> None:
    r = box(level).run_python(_connect_code(listener.getsockname()[1]))
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("refused") for line in lines), lines


def test_control_without_namespaces_the_same_connect_succeeds(listener: socket.socket) -> None:
    r = box(L.NONE).run_python(_connect_code(listener.getsockname()[1]))
    assert r.stdout.startswith("connected")  # proves the test above can detect a leak


@need(L.BWRAP)
def test_write_outside_the_work_dir_fails_under_bwrap() -> None:
    outside = tempfile.mkdtemp(dir="/var/tmp")
    try:
        code = (f"open('inside.txt', 'w').write('ok')\nprint(open('inside.txt').read())\n"
                f"for p in ({outside + '/x'!r}, '/etc/bastion-escape', '/root/x'):\n"
                "    try:\n        open(p, 'w').write('escaped')\n        print('wrote', p)\n"
                "    except OSError as e:\n        print('denied', e.errno)\n")
        r = box(L.BWRAP).run_python(code)
        assert r.exit_code == 0, r.stderr
        assert r.stdout.splitlines()[0] == "ok" and "wrote" not in r.stdout
        assert os.listdir(outside) == [] and not os.path.exists("/etc/bastion-escape")
    finally:
        os.rmdir(outside)


@need(L.BWRAP)
def test_total_writes_in_the_work_dir_are_bounded_under_bwrap() -> None:
    """Many files each under the file-size limit cannot fill the host disk: under bwrap the
    work directory lives on the sandbox's sized tmpfs."""
    code = ("import os\nn = 0\ntry:\n    for i in range(64):\n"
            "        with open(f'f{i}', 'wb') as f:\n            f.write(b'x' * (4 << 20))\n"
            "        n += 1\nexcept OSError as e:\n    print('stopped', e.errno, n)\n"
            "print('files', n, sorted(os.listdir('.'))[:2])\n")
    r = box(L.BWRAP, memory_bytes=64 << 20, max_file_bytes=8 << 20, timeout_s=30.0,
            ).run_python(code)
    assert r.exit_code == 0, r.stderr
    assert "stopped 28" in r.stdout  # ENOSPC, long before 64 files x 4 MiB = 256 MiB
    written = int(r.stdout.split("stopped 28 ")[1].split()[0])
    assert written <= 16  # 64 MiB of tmpfs holds at most 16 files of 4 MiB


@need(L.NAMESPACES)
def test_namespaces_level_makes_no_filesystem_claim() -> None:
    """Documented limit: NAMESPACES does not isolate the filesystem; BWRAP does."""
    outside = tempfile.mkdtemp(dir="/var/tmp")
    try:
        os.chmod(outside, 0o777)
        r = box(L.NAMESPACES).run_python(f"open({outside + '/x'!r}, 'w').write('1')\n")
        assert r.exit_code == 0 and os.path.exists(outside + "/x")
    finally:
        for name in os.listdir(outside):
            os.unlink(os.path.join(outside, name))
        os.rmdir(outside)


@pytest.mark.parametrize("level", [at(L.NONE), *LIMITED])
def test_work_dir_is_private_and_removed(level: IsolationLevel) -> None:
    code = "import os\nprint(sorted(os.listdir('.')))\nopen('left', 'w').write('1')\n" \
           "print(os.getcwd())\n"
    first = box(level).run_python(code)
    second = box(level).run_python(code)
    assert first.stdout.splitlines()[0] == second.stdout.splitlines()[0] == "['main.py']"
    cwd = first.stdout.splitlines()[1]
    if level < L.BWRAP:
        assert not os.path.exists(cwd)


# -- supervision --------------------------------------------------------------------------------

def test_output_is_truncated_and_stdin_is_passed() -> None:
    code = "import sys\nsys.stdout.write(sys.stdin.read() * 100000)\n"
    r = Sandbox(SandboxPolicy(required_level=L.NONE, max_output_bytes=1000)).run_python(
        code, stdin=b"ab")
    assert r.exit_code == 0 and r.stdout == "ab" * 500 and r.stdout_truncated


def test_kill_all_sandboxes_stops_running_runs() -> None:
    results = []
    sb = Sandbox(SandboxPolicy(required_level=CAPS.best, timeout_s=20.0))
    th = threading.Thread(target=lambda: results.append(sb.run_python("import time\n"
                                                                      "time.sleep(30)\n")))
    th.start()
    deadline = time.monotonic() + 5
    while running_sandboxes() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    t = time.monotonic()
    assert kill_all_sandboxes("kill_switch") == 1
    th.join(5)
    assert time.monotonic() - t < 2
    assert results[0].killed_reason == "kill_switch" and not results[0].timed_out
    assert running_sandboxes() == 0


def test_bwrap_shows_no_host_secrets_or_sockets(tmp_path: Path) -> None:
    """Review findings: bwrap once mounted the whole host read-only, so code could read
    /etc/shadow and connect to host unix sockets (PostgreSQL, MariaDB)."""
    import socket as _socket

    if IsolationLevel.BWRAP not in detect_isolation().levels:
        pytest.skip(f"bwrap unavailable: {detect_isolation().notes}")
    listener = _socket.socket(_socket.AF_UNIX)
    path = str(tmp_path / "host.sock")
    listener.bind(path)
    listener.listen(1)
    code = f"""
import socket
for p in ['/etc/shadow', {str(Path.cwd() / 'pyproject.toml')!r}]:
    try:
        open(p).read(1); print('read', p)
    except OSError:
        print('hidden')
s = socket.socket(socket.AF_UNIX)
try:
    s.connect({path!r}); print('connected')
except OSError:
    print('hidden')
"""
    result = Sandbox(SandboxPolicy(required_level=IsolationLevel.BWRAP, timeout_s=5)).run_python(
        code)
    listener.close()
    assert result.stdout.split() == ["hidden", "hidden", "hidden"], result


@need(L.BWRAP)
def test_the_private_tmp_is_bounded_by_the_memory_limit() -> None:
    """Review finding: files in the sandbox's tmpfs /tmp were memory outside the limit."""
    code = textwrap.dedent("""\
        n = 0
        try:
            with open('/tmp/fill', 'wb') as f:
                for _ in range(64):
                    f.write(b'x' * (8 << 20))
                    f.flush()
                    n += 8
        except OSError as e:
            print('stopped', n, e.errno)
        else:
            print('wrote', n)
        """)
    r = Sandbox(SandboxPolicy(required_level=L.BWRAP, timeout_s=10, memory_bytes=128 << 20,
                              max_file_bytes=1 << 30)).run_python(code)
    assert r.stdout.startswith("stopped"), (r.stdout, r.stderr)
    assert int(r.stdout.split()[1]) <= 128
