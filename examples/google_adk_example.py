"""A Google ADK agent under bastion, driven by a scripted model (no network, no API key).

Run: python examples/google_adk_example.py   (needs: pip install 'bastion[google-adk]')
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from google.adk.agents import LlmAgent
from google.adk.apps import App
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.runners import InMemoryRunner
from google.genai import types

import bastion
from bastion.adapters.google_adk import BastionPlugin

POLICY = """
version: 1
name: adk-example
default: deny
rules:
  - id: allow-tools
    tools: [lookup, send_email]
    effect: allow
  - id: no-delete
    tools: [delete_file]
    effect: deny
    message: deleting files is blocked
  - id: mask-body
    tools: [send_email]
    effect: redact
    redact: [args.body]
"""


class ScriptedModel(BaseLlm):
    """Asks for three tools at once, then answers; prints the responses it is shown."""

    model: str = "scripted"
    turns: int = 0

    async def generate_content_async(self, llm_request: LlmRequest, stream: bool = False
                                     ) -> AsyncGenerator[LlmResponse, None]:
        self.turns += 1
        if self.turns == 1:
            calls = [("lookup", {"q": "invoices"}), ("delete_file", {"path": "/data"}),
                     ("send_email", {"to": "ops@example.com", "body": "card 4111 1111 1111 1111"})]
            parts = [types.Part(function_call=types.FunctionCall(name=n, args=a, id=f"c{i}"))
                     for i, (n, a) in enumerate(calls)]
        else:
            for content in llm_request.contents:
                for part in content.parts or []:
                    if part.function_response is not None:
                        r = part.function_response
                        verdict = "denied" if "error" in (r.response or {}) else "allowed"
                        print(f"  model sees {r.name}: {verdict} {r.response}")
            parts = [types.Part(text="all done")]
        usage = types.GenerateContentResponseUsageMetadata(prompt_token_count=1,
                                                           candidates_token_count=1,
                                                           total_token_count=2)
        yield LlmResponse(content=types.Content(role="model", parts=parts), usage_metadata=usage)


def lookup(q: str) -> str:
    """Look something up."""
    print(f"lookup ran with q={q!r}")
    return "42 invoices"


def delete_file(path: str) -> str:
    """Delete a file."""
    print(f"delete_file ran with path={path!r}")
    return "deleted"


def send_email(to: str, body: str) -> str:
    """Send an e-mail."""
    print(f"send_email ran with to={to!r} body={body!r}")
    return "sent"


async def main() -> None:
    with bastion.Kernel.from_text(POLICY) as kernel:
        agent = LlmAgent(name="clerk", model=ScriptedModel(),
                         tools=[lookup, delete_file, send_email])
        app = App(name="example", root_agent=agent, plugins=[BastionPlugin(kernel)])
        runner = InMemoryRunner(app=app)
        session = await runner.session_service.create_session(app_name="example", user_id="u1")
        message = types.Content(role="user", parts=[types.Part(text="tidy up")])
        async for event in runner.run_async(user_id="u1", session_id=session.id,
                                            new_message=message):
            if event.is_final_response() and event.content and event.content.parts:
                print(f"final answer: {event.content.parts[0].text}")


if __name__ == "__main__":
    asyncio.run(main())
