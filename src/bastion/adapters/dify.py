"""Dify: an agent-strategy base class whose every tool call goes through the kernel first.

The Dify plugin SDK has no pre-tool or post-tool hook: an agent strategy (a subclass of
``dify_plugin.interfaces.agent.AgentStrategy``) calls tools itself, through
``self.session.tool.invoke(provider_type, provider, tool_name, parameters)``, a backwards
invocation to the Dify daemon. ``GovernedAgentStrategy.invoke_tool`` takes the same arguments
and is that call under the kernel. For each call, in order:

1. Decide a ``pre_tool`` action (``ToolGate.before``) for ``tool_name`` (``provider/tool_name``
   with ``qualified=True``) and the parameters.
2. Not allowed: the tool is not invoked; the strategy receives one text message, the denial
   (for ``require_approval`` it names the approval id: Dify strategies cannot pause, and the
   same call runs once ``kernel.approve(id, by=...)`` granted it). A stop (kill switch, budget)
   raises ``RunStopped`` instead, and the strategy's ``invoke`` raises it again at its next
   message even if the strategy caught it, which ends the agent node with an error.
3. Allowed: the tool is invoked with the kernel's arguments (redacted where a rule said so);
   its messages are collected, decided at ``post_tool`` (``ToolGate.after``) and passed on
   unchanged, replaced by the redaction, or replaced by the denial message.

Only calls made through ``invoke_tool`` are governed: a strategy that calls
``self.session.tool.invoke`` itself bypasses the gate, since the SDK offers no hook to stop it.
The SDK is synchronous (gevent), so there is no async path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator, Mapping
from typing import Any, ClassVar

from dify_plugin.entities.agent import AgentInvokeMessage
from dify_plugin.entities.tool import ToolInvokeMessage
from dify_plugin.interfaces.agent import AgentStrategy

from bastion.adapters._core import RunStopped, Source, ToolGate
from bastion.kernel import Decision, Kernel

__all__ = ["Governed", "GovernedAgentStrategy"]

From = Callable[[Any], Mapping[str, Any]]  # the running strategy -> {"id": ...}


class Governed:
    """The gate a ``GovernedAgentStrategy`` subclass names in its ``governed`` attribute.

    ``agent``, ``session`` and ``context`` are mappings or zero-argument callables;
    ``agent_from``/``session_from`` derive them from the running strategy instead, e.g.
    ``session_from=lambda s: {"id": s.session.conversation_id or s.session.session_id}``.
    """

    def __init__(self, kernel: Kernel, *, agent: Source = None, session: Source = None,
                 context: Source = None, agent_from: From | None = None,
                 session_from: From | None = None, qualified: bool = False):
        self.gate = ToolGate(kernel, agent=agent, session=session, context=context)
        self.agent_from, self.session_from, self.qualified = agent_from, session_from, qualified

    def invoke(self, strategy: AgentStrategy, provider_type: Any, provider: str, tool_name: str,
               parameters: Mapping[str, Any], credential_id: str | None = None
               ) -> Generator[ToolInvokeMessage, None, None]:
        """The tool's messages as the model may see them; raises ``RunStopped`` on a stop."""
        over: dict[str, Source] = {}
        if self.agent_from is not None:
            over["agent"] = functools.partial(self.agent_from, strategy)
        if self.session_from is not None:
            over["session"] = functools.partial(self.session_from, strategy)
        name = f"{provider}/{tool_name}" if self.qualified else tool_name
        pre = self.gate.before(name, parameters, **over)
        if not pre.run:
            if pre.stop:
                raise RunStopped(pre.decision)
            yield _message(pre.message)
            return
        try:
            messages = list(strategy.session.tool.invoke(
                provider_type, provider, tool_name, pre.args, credential_id=credential_id))
        except Exception as exc:
            self.gate.failed(pre, exc)
            raise
        try:
            result = _result(messages)
        except Exception as exc:  # a result we cannot show the kernel is not shown at all
            self.gate.failed(pre, exc)
            yield _message(f"The result of tool '{name}' was withheld: bastion could not read "
                           f"it ({type(exc).__name__}: {exc}). Decision {pre.decision.id}.")
            return
        post = self.gate.after(pre, result)
        if not post.allowed:
            if post.stop and post.decision is not None:
                raise RunStopped(post.decision)
            yield _message(post.message)
        elif post.result is not result and post.result != result:  # redacted, marked or
            yield _message(post.result)                                # quarantined
        else:
            yield from messages


class GovernedAgentStrategy(AgentStrategy):  # type: ignore[misc]
    """Base for agent strategies whose tools run under bastion: call ``self.invoke_tool``.

    Set ``governed = Governed(kernel, ...)`` on the subclass; without it every tool call is
    denied. Import this module, not the class (``import bastion.adapters.dify as bd``): the SDK
    loads the one ``AgentStrategy`` subclass a strategy file defines, and an imported base
    class would be a second.
    """

    governed: ClassVar[Governed | None] = None
    _bastion_stop: Decision | None = None

    def invoke(self, parameters: dict[str, Any]) -> Generator[AgentInvokeMessage, None, None]:
        """The SDK's entry point; ends the run with ``RunStopped`` once a call was stopped."""
        self._bastion_stop = None
        messages = super().invoke(parameters)
        try:
            for message in messages:
                self._raise_if_stopped()
                yield message
            self._raise_if_stopped()
        finally:
            messages.close()

    def invoke_tool(self, provider_type: Any, provider: str, tool_name: str,
                    parameters: Mapping[str, Any], credential_id: str | None = None
                    ) -> Generator[ToolInvokeMessage, None, None]:
        """``self.session.tool.invoke`` under the kernel (module docstring, steps 1-3)."""
        governed = type(self).governed
        if governed is None:
            yield _message(f"The tool call '{tool_name}' was denied: no bastion gate is set "
                           f"on {type(self).__name__}.governed.")
            return
        try:
            yield from governed.invoke(self, provider_type, provider, tool_name, parameters,
                                       credential_id)
        except RunStopped as stop:
            self._bastion_stop = self._bastion_stop or stop.decision
            raise

    def _raise_if_stopped(self) -> None:
        if self._bastion_stop is not None:
            raise RunStopped(self._bastion_stop)


def _message(value: Any) -> ToolInvokeMessage:
    """One tool message holding ``value``: JSON for a mapping or list, text otherwise."""
    if isinstance(value, Mapping | list):
        return ToolInvokeMessage(type=ToolInvokeMessage.MessageType.JSON,
                                 message=ToolInvokeMessage.JsonMessage(json_object=value))
    text = value if isinstance(value, str) else str(value)
    return ToolInvokeMessage(type=ToolInvokeMessage.MessageType.TEXT,
                             message=ToolInvokeMessage.TextMessage(text=text))


def _result(messages: list[ToolInvokeMessage]) -> Any:
    """What the kernel sees as ``result``: a text or JSON message's value, a list for several
    messages; other kinds (files, blobs, variables, logs) as their JSON form."""
    values: list[Any] = []
    for m in messages:
        if isinstance(m.message, ToolInvokeMessage.TextMessage):
            values.append(m.message.text)
        elif isinstance(m.message, ToolInvokeMessage.JsonMessage):
            values.append(m.message.json_object)
        else:
            values.append(m.model_dump(mode="json"))
    return values[0] if len(values) == 1 else values
