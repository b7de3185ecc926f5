"""Review of the sandbox (issue 6): what code under BWRAP can see, reach and fill, input file
names, and that a required level is never silently weakened."""

from __future__ import annotations

import os
import socket
import tempfile
import textwrap
import uuid
from pathlib import Path

import pytest

from bastion import BastionError, GovernanceDenied, Kernel
from bastion.flow import parse_catalog
from bastion.runtime import (
    Capabilities,
    IsolationGuard,
    IsolationLevel,
    IsolationUnavailable,
    RingGuard,
    Sandbox,
    SandboxPolicy,
    code_tool,
    detect_isolation,
)

CAPS = detect_isolation()
L = IsolationLevel
need_bwrap = pytest.mark.skipif(L.BWRAP not in CAPS.levels,
                                reason=f"bwrap unavailable here: {'; '.join(CAPS.notes)}")


def _bwrap(**kw: object) -> Sandbox:
    return Sandbox(SandboxPolicy(required_level=L.BWRAP, **{"timeout_s": 10.0, **kw}))  # type: ignore[arg-type]


@need_bwrap
def test_bwrap_dev_is_read_only_and_dev_shm_is_bounded() -> None:
    """Finding: bwrap's /dev (and /dev/shm on it) was an unsized writable tmpfs, so a run could
    put gigabytes of host memory there, past the memory limit and the bound on its writes."""
    code = textwrap.dedent("""\
        try:
            open('/dev/x', 'w').write('1'); print('dev-writable')
        except OSError as e:
            print('dev', e.errno)
        n = 0
        try:
            for i in range(40):
                with open(f'/dev/shm/f{i}', 'wb') as f:
                    f.write(b'x' * (4 << 20))
                n += 1
        except OSError as e:
            print('shm', e.errno)
        print('mib', n * 4)
        open('/dev/null', 'w').write('still a device')
        """)
    r = _bwrap(memory_bytes=64 << 20, max_file_bytes=8 << 20).run_python(code)
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.split("\n")
    assert lines[0] == "dev 30" and lines[1] == "shm 28", r.stdout  # EROFS, then ENOSPC
    assert int(lines[2].split()[1]) <= 8  # an eighth of 64 MiB


@need_bwrap
def test_bwrap_shows_no_host_environment_checkout_store_or_supervisor(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = f"hunter2-{uuid.uuid4().hex}"
    monkeypatch.setenv("BASTION_REVIEW_SECRET", secret)
    store = tmp_path / "state.db"
    store.write_text("flags")
    code = textwrap.dedent(f"""\
        import os, signal
        seen = [os.environ.get('BASTION_REVIEW_SECRET', '')]
        for pid in os.listdir('/proc'):
            if pid.isdigit():
                for name in ('environ', 'cmdline'):
                    try:
                        seen.append(open(f'/proc/{{pid}}/{{name}}', 'rb').read().decode('latin1'))
                    except OSError:
                        pass
        seen.append(open('/proc/self/mountinfo').read())
        print('SECRET' if any({secret!r} in s for s in seen) else 'no-secret')
        for path in ({str(store)!r}, {str(Path.cwd() / 'pyproject.toml')!r}, '/etc/passwd',
                     '/root/.ssh', '/var', '/run', '/sys/fs/cgroup', '/proc/sysrq-trigger'):
            print('visible' if os.path.exists(path) else 'hidden', path)
        print('mounts-name-checkout' if {str(Path.cwd())!r} in seen[-1] else 'no-checkout')
        try:
            os.kill({os.getpid()}, 0); print('supervisor-signalable')
        except ProcessLookupError:
            print('no-supervisor')
        """)
    r = _bwrap().run_python(code)
    assert r.exit_code == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0] == "no-secret" and out[-2:] == ["no-checkout", "no-supervisor"], r.stdout
    assert all(line.startswith("hidden") for line in out[1:-2]), r.stdout


@need_bwrap
def test_bwrap_reaches_no_host_socket() -> None:
    abstract = f"\0bastion-review-{uuid.uuid4().hex}"
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(abstract)
    unix.listen(1)
    tcp = socket.create_server(("127.0.0.1", 0))
    port = tcp.getsockname()[1]
    code = textwrap.dedent(f"""\
        import socket
        for family, address in ((socket.AF_UNIX, {abstract!r}), (socket.AF_INET,
                                ('127.0.0.1', {port}))):
            s = socket.socket(family)
            s.settimeout(2)
            try:
                s.connect(address); print('connected')
            except OSError:
                print('refused')
        """)
    try:
        r = _bwrap().run_python(code)
    finally:
        unix.close()
        tcp.close()
    assert r.stdout.split() == ["refused", "refused"], (r.stdout, r.stderr)


@pytest.mark.parametrize("name", ["../escape", "/etc/cron.d/x", "a/b", "..", ".", "", "a\0b"])
def test_input_file_names_cannot_leave_the_work_directory(name: str, tmp_path: Path) -> None:
    sandbox = Sandbox(SandboxPolicy(required_level=L.NONE, timeout_s=5.0))
    with pytest.raises(BastionError):
        sandbox.run(["/bin/true"], files={name: b"payload"})
    assert not Path(tempfile.gettempdir(), "escape").exists()


@need_bwrap
def test_an_input_file_cannot_be_swapped_for_a_symlink() -> None:
    code = textwrap.dedent("""\
        import os
        for step in (lambda: os.remove('data'), lambda: os.rename('data', 'moved'),
                     lambda: os.symlink('/etc/shadow', 'data')):
            try:
                step(); print('done')
            except OSError as e:
                print('refused', e.errno)
        """)
    r = _bwrap().run(["/usr/bin/env", "python3", "-I", "main.py"],
                     files={"main.py": code.encode(), "data": b"input"})
    assert r.stdout.split("\n")[:3] == ["refused 16"] * 2 + ["refused 17"], (r.stdout, r.stderr)


def test_a_required_level_is_never_weakened_for_code() -> None:
    """The guard's ring may ask for less than the tool's own policy: the stronger one holds,
    and a machine without it refuses rather than running weaker."""
    catalog = parse_catalog("version: 1\ntools:\n  run_python: {class: code}\n")
    weak = Capabilities(levels=frozenset({L.NONE, L.RLIMITS}), pids="cgroup-v1",
                        notes=("no bwrap here",))
    with Kernel.from_text("version: 1\nrules:\n  - {id: all, effect: allow}\n", audit=False,
                          catalog=catalog) as kernel:
        rings = RingGuard(catalog, ring_of=lambda agent: 1, state=kernel.state)
        relaxed = IsolationGuard(catalog, rings, capabilities=weak,
                                 required=dict.fromkeys(range(4), L.NONE))
        kernel.add_guard(rings)
        kernel.add_guard(relaxed)
        run = code_tool(kernel, relaxed, agent_id="analyst",
                        policy=SandboxPolicy(required_level=L.BWRAP))
        with pytest.raises(IsolationUnavailable):
            run("open('/tmp/pwned', 'w')")
    with Kernel.from_text("version: 1\nrules:\n  - {id: all, effect: allow}\n", audit=False,
                          catalog=catalog) as kernel:
        rings = RingGuard(catalog, ring_of=lambda agent: 0, state=kernel.state)
        strict = IsolationGuard(catalog, rings, capabilities=weak)  # RING_ISOLATION: BWRAP
        kernel.add_guard(rings)
        kernel.add_guard(strict)
        with pytest.raises(GovernanceDenied) as info:  # even ring 0: denied, nothing runs
            code_tool(kernel, strict, agent_id="root")("print(1)")
        assert info.value.decision.code == "guard"


@need_bwrap
def test_posix_shared_memory_still_works_under_bwrap() -> None:
    code = ("import multiprocessing as mp\nlock = mp.Lock()\nwith lock:\n    print('locked')\n")
    r = _bwrap().run_python(code)
    assert r.exit_code == 0 and r.stdout == "locked\n", r.stderr


def test_sandbox_does_not_leak_the_callers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-leak")
    r = Sandbox(SandboxPolicy(required_level=L.NONE, timeout_s=5.0)).run(
        ["/usr/bin/env"])
    assert r.exit_code == 0 and "do-not-leak" not in r.stdout
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "do-not-leak"
