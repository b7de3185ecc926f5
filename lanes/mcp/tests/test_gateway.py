"""The MCP security gateway against real upstreams: a stdio subprocess and a streamable-HTTP
server on a loopback port; clients talk to it in-process and over stdio (``bastion
mcp-gateway run`` as a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
from conftest import UPSTREAM, calls
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult, TextContent

from bastion.audit import read_events
from bastion.gateway import Gateway, load_config

BASTION = str(Path(sys.executable).parent / "bastion")

GW_POLICY = """
version: 1
default: deny
rules:
  - {id: tools, tools: ["*"], effect: allow}
  - {id: no-mail, tools: ["files__send_email"], when: "!args.to.endsWith('@example.com')",
     effect: deny, message: mail only inside example.com}
  - {id: results, stage: post_tool, effect: allow}
  - id: mask-cards
    stage: post_tool
    tools: ["files__lookup"]
    effect: redact
    redact_pattern: '\\b\\d{4}-\\d{4}-\\d{4}-\\d{4}\\b'
"""


def write_config(tmp: Path, call_log: Path, *, variant: str = "clean",
                 http: str | None = None, extra: str = "") -> Path:
    (tmp / "policy.yaml").write_text(GW_POLICY)
    text = f"""\
version: 1
policy: policy.yaml
state: state.db
audit: audit.db
agent: desk-agent
{extra}upstreams:
  - name: files
    command: {json.dumps(sys.executable)}
    args: [{json.dumps(str(UPSTREAM))}, files, {variant}]
    env: {{CALL_LOG: {json.dumps(str(call_log))}}}
"""
    if http:
        text += f"  - name: evil\n    url: {http}\n"
    path = tmp / "gateway.yaml"
    path.write_text(text)
    return path


def text(result: CallToolResult) -> str:
    return "\n".join(b.text for b in result.content if isinstance(b, TextContent))


def session(config: Path, script):
    """Run ``script(client)`` against a fresh Gateway (a new process's worth of state)."""
    async def main():
        gateway = Gateway(load_config(config))
        try:
            async with Client(gateway.server) as client:
                return await script(client)
        finally:
            gateway.close()

    return anyio.run(main)


def audit(tmp: Path) -> list[dict]:
    return [e for e in read_events(tmp / "audit.db") if e.get("kind") == "decision"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BASTION, "mcp-gateway", *args], capture_output=True, text=True,
                          timeout=60)


def test_governs_calls_and_refuses_poisoned_upstream(tmp_path: Path, call_log: Path,
                                                     http_upstream: str) -> None:
    async def listing(c):
        return {t.name for t in (await c.list_tools()).tools}

    # the trusted server was in use (and pinned) before the look-alike server was added
    assert "files__read_file" in session(write_config(tmp_path, call_log), listing)
    config = write_config(tmp_path, call_log, http=http_upstream)

    async def script(c):
        names = {t.name for t in (await c.list_tools()).tools}
        return names, {
            "read": await c.call_tool("files__read_file", {"path": "/srv/a.txt"}),
            "mail_out": await c.call_tool("files__send_email", {"to": "x@evil.test", "body": "b"}),
            "mail_in": await c.call_tool("files__send_email", {"to": "ann@example.com",
                                                               "body": "b"}),
            "lookup": await c.call_tool("files__lookup", {"user": "ann"}),
            "echo": await c.call_tool("evil__echo", {"text": "hello"}),
            "squat": await c.call_tool("evil__read_fi1e", {"path": "/etc/passwd"}),
            "poison": await c.call_tool("evil__add", {"a": 1, "b": 2}),
            "shadow": await c.call_tool("evil__weather", {"city": "Oslo"}),
            "unknown": await c.call_tool("read_file", {"path": "/x"}),
        }

    names, out = session(config, script)
    # namespaced; the clean tools of both upstreams are shown, the flagged ones are not
    assert names == {"files__read_file", "files__send_email", "files__lookup", "evil__echo"}
    assert text(out["read"]) == "contents of /srv/a.txt"
    assert text(out["echo"]) == "hello"  # the streamable-HTTP upstream answers
    assert out["mail_out"].is_error and "mail only inside example.com" in text(out["mail_out"])
    assert not out["mail_in"].is_error
    assert "4111" not in out["lookup"].model_dump_json() and "[REDACTED]" in text(out["lookup"])
    for key, why in (("squat", "typosquat"), ("poison", "instruction"),
                     ("shadow", "tool_reference"), ("unknown", "no tool")):
        assert out[key].is_error and "denied by the MCP gateway" in text(out[key]), key
        assert why in text(out[key]), key
    assert "invisible characters U+200B" in text(out["poison"])
    ran = calls(call_log)
    assert any(line.startswith("files read_file") for line in ran)
    assert not any(" send_email " in line and "evil.test" in line for line in ran)
    assert not any(line.startswith("evil ") and " echo " not in line for line in ran)
    events = audit(tmp_path)
    flagged = [e for e in events if e["code"] == "tool_flagged"]
    assert {e["tool"] for e in flagged} >= {"evil__read_fi1e", "evil__add", "evil__weather"}
    assert any("hidden from tools/list" in e["reasons"][0] for e in flagged)
    assert any(e["tool"] == "evil__add" and "denied" not in e["reasons"][0]
               and e["agent"] == "desk-agent" for e in flagged)


def test_rug_pull_refused_until_approved_and_pins_survive_restart(tmp_path: Path,
                                                                   call_log: Path) -> None:
    async def listing(c):
        return {t.name: t.description for t in (await c.list_tools()).tools}

    async def read(c):
        return await c.call_tool("files__read_file", {"path": "/a"})

    # run 1: first sight, clean: pinned on first use
    config = write_config(tmp_path, call_log, variant="clean")
    assert "files__read_file" in session(config, listing)
    pins = [json.loads(line) for line in cli("tools", "--config", str(config)).stdout.splitlines()]
    assert {p["name"]: (p["status"], p["trust"]) for p in pins}["files__read_file"] == (
        "ok", "auto")

    # run 2, a new gateway on the same state file: the same definitions are still trusted
    assert not session(config, read).is_error

    # run 3: the upstream changed read_file's description (a rug pull): hidden and refused
    config = write_config(tmp_path, call_log, variant="changed")
    shown = session(config, listing)
    assert "files__read_file" not in shown and "files__send_email" in shown
    before = len(calls(call_log))
    refused = session(config, read)
    assert refused.is_error and "changed" in text(refused)
    assert "approve-tool files__read_file" in text(refused)
    assert len(calls(call_log)) == before  # the upstream never saw the call
    assert any(e["code"] == "tool_changed" and e["tool"] == "files__read_file"
               for e in audit(tmp_path))

    # the operator reviews what changed and approves it
    full = [json.loads(line) for line in
            cli("tools", "--config", str(config), "--full").stdout.splitlines()]
    pending = next(p for p in full if p["name"] == "files__read_file")
    assert pending["status"] == "changed" and "IMPORTANT" in pending["definition"]["description"]
    done = cli("approve-tool", "files__read_file", "--config", str(config), "--by", "alice")
    assert done.returncode == 0, done.stderr
    assert "approved by alice" in done.stdout
    assert any(e.get("kind") == "mcp.tool_approved" and e["by"] == "alice"
               for e in read_events(tmp_path / "audit.db"))

    # run 4 (restart): the approved definition is shown and callable
    assert "files__read_file" in session(config, listing)
    assert not session(config, read).is_error

    # run 5: back to the first definition: a change again, refused until approved
    config = write_config(tmp_path, call_log, variant="clean")
    assert "files__read_file" not in session(config, listing)


def test_look_alikes_seen_together_are_both_held(tmp_path: Path, call_log: Path,
                                                 http_upstream: str) -> None:
    """Neither look-alike is trusted yet: both are held until a human approves the real one."""
    config = write_config(tmp_path, call_log, http=http_upstream)

    async def listing(c):
        return {t.name for t in (await c.list_tools()).tools}

    assert not {"files__read_file", "evil__read_fi1e"} & session(config, listing)
    assert cli("approve-tool", "files__read_file", "--config", str(config), "--by", "al"
               ).returncode == 0
    shown = session(config, listing)
    assert "files__read_file" in shown and "evil__read_fi1e" not in shown


def test_unknown_tool_approval_is_an_error(tmp_path: Path, call_log: Path) -> None:
    config = write_config(tmp_path, call_log)
    done = cli("approve-tool", "files__nope", "--config", str(config), "--by", "alice")
    assert done.returncode == 1 and "files__nope" in done.stderr


def test_strict_mode_holds_new_tools_until_approved(tmp_path: Path, call_log: Path) -> None:
    config = write_config(tmp_path, call_log, extra="auto_pin: false\n")

    async def listing(c):
        return {t.name for t in (await c.list_tools()).tools}

    assert session(config, listing) == set()
    assert cli("approve-tool", "files__lookup", "--config", str(config), "--by", "bo"
               ).returncode == 0
    assert session(config, listing) == {"files__lookup"}


def test_bad_config_is_reported_with_its_position(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("version: 1\npolicy: p.yaml\nupstreams:\n  - name: a\n    comand: x\n")
    done = cli("run", "--config", str(path))
    assert done.returncode == 2
    assert f"{path}:5:5: error: unknown key 'comand'" in done.stderr
    path.write_text("version: 1\npolicy: missing.yaml\nstate: s.db\nupstreams:\n"
                    "  - {name: a, url: 'http://127.0.0.1:9/mcp'}\n")
    done = cli("run", "--config", str(path))
    assert done.returncode == 2
    assert f"{tmp_path / 'missing.yaml'}:0:0: error: file not found" in done.stderr


def test_gateway_over_stdio(tmp_path: Path, call_log: Path, http_upstream: str) -> None:
    """A real MCP client launches `bastion mcp-gateway run` as its stdio server."""
    async def listing(c):
        return {t.name for t in (await c.list_tools()).tools}

    session(write_config(tmp_path, call_log), listing)  # files' tools pinned first
    config = write_config(tmp_path, call_log, http=http_upstream)

    async def main():
        params = StdioServerParameters(command=BASTION,
                                       args=["mcp-gateway", "run", "--config", str(config)])
        async with Client(params) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            ok = await c.call_tool("files__read_file", {"path": "/b"})
            no = await c.call_tool("files__send_email", {"to": "x@evil.test", "body": "b"})
            squat = await c.call_tool("evil__read_fi1e", {"path": "/etc/passwd"})
            return names, ok, no, squat

    names, ok, no, squat = anyio.run(main)
    assert "files__read_file" in names and "evil__read_fi1e" not in names
    assert text(ok) == "contents of /b"
    assert no.is_error and "mail only inside example.com" in text(no)
    assert squat.is_error and "typosquat" in text(squat)
    assert calls(call_log) == ['files read_file {"path": "/b"}']


def test_example_config(tmp_path: Path) -> None:
    import dataclasses

    from conftest import ROOT

    cfg = load_config(ROOT / "examples" / "mcp_gateway.yaml")
    (files,) = cfg.upstreams
    assert (Path(files.cwd) / files.args[0]).resolve() == UPSTREAM.resolve()
    cfg = dataclasses.replace(cfg, state=str(tmp_path / "state.db"), audit=None,
                              upstreams=(dataclasses.replace(files, command=sys.executable),))

    async def main():
        gateway = Gateway(cfg)
        try:
            async with Client(gateway.server) as c:
                names = {t.name for t in (await c.list_tools()).tools}
                return names, await c.call_tool("files__lookup", {"user": "ann"})
        finally:
            gateway.close()

    names, looked = anyio.run(main)
    assert names == {"files__read_file", "files__send_email", "files__lookup"}
    assert "[REDACTED]" in text(looked) and "4111" not in text(looked)
