"""A function-calling agent strategy on bastion's base class, shaped like Dify's official one
(``langgenius/dify-official-plugins``, ``agent-strategies/cot_agent``): ask the model, run the
tool calls it makes, feed each result back as a tool message, until it answers in text.

Like the official strategy it turns a tool error into text for the model, so a bastion stop is
caught here and still ends the run (``GovernedAgentStrategy.invoke``).

No ``from __future__ import annotations``: the SDK loads this file without registering it in
``sys.modules``, so pydantic could not resolve postponed annotations."""

import json
from collections.abc import Generator
from typing import Any

from dify_plugin.entities.agent import AgentInvokeMessage
from dify_plugin.entities.model.llm import LLMModelConfig, LLMResult
from dify_plugin.entities.model.message import (
    AssistantPromptMessage,
    PromptMessage,
    ToolPromptMessage,
    UserPromptMessage,
)
from dify_plugin.entities.tool import ToolInvokeMessage, ToolProviderType
from dify_plugin.interfaces.agent import AgentModelConfig, ToolEntity
from pydantic import BaseModel

import bastion.adapters.dify as governed  # the module: the SDK loads one subclass per file


class FunctionCallingParams(BaseModel):
    query: str
    model: AgentModelConfig
    tools: list[ToolEntity] | None
    maximum_iterations: int = 5


class FunctionCallingStrategy(governed.GovernedAgentStrategy):
    def _invoke(self, parameters: dict[str, Any]) -> Generator[AgentInvokeMessage, None, None]:
        params = FunctionCallingParams(**parameters)
        tools = {tool.identity.name: tool for tool in params.tools or []}
        prompt_tools = self._init_prompt_tools(params.tools)
        messages: list[PromptMessage] = [*params.model.history_prompt_messages,
                                         UserPromptMessage(content=params.query)]
        config = LLMModelConfig(**params.model.model_dump(mode="json"))
        for _ in range(params.maximum_iterations):
            result = self.session.model.llm.invoke(model_config=config, prompt_messages=messages,
                                                   tools=prompt_tools, stream=False)
            assert isinstance(result, LLMResult)
            calls = result.message.tool_calls
            messages.append(AssistantPromptMessage(content=result.message.content or "",
                                                   tool_calls=calls))
            if not calls:
                yield self.create_text_message(str(result.message.content))
                return
            for call in calls:
                tool = tools[call.function.name]
                args = json.loads(call.function.arguments or "{}")
                text = ""
                try:
                    for message in self.invoke_tool(
                            ToolProviderType(tool.provider_type), tool.identity.provider,
                            tool.identity.name, {**tool.runtime_parameters, **args}):
                        if isinstance(message.message, ToolInvokeMessage.TextMessage):
                            text += message.message.text
                        elif isinstance(message.message, ToolInvokeMessage.JsonMessage):
                            text += json.dumps(message.message.json_object)
                except Exception as exc:  # as the official strategy: the model reads the error
                    text = f"tool invoke error: {exc}"
                yield self.create_json_message({"tool": call.function.name, "response": text})
                messages.append(ToolPromptMessage(content=text, tool_call_id=call.id,
                                                  name=call.function.name))
        yield self.create_text_message("maximum iterations reached")
