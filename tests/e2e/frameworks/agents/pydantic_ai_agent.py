"""pydantic-ai with its OpenTelemetry instrumentation (Agent.instrument_all); AGENT_INCLUDE_CONTENT=0 turns
content capture off."""

import json
import os

from telemetry import QUESTION, SYSTEM_PROMPT, get_weather, tracer_provider

provider = tracer_provider()

from pydantic_ai import Agent, InstrumentationSettings  # noqa: E402
from pydantic_ai.models.openai import OpenAIChatModel  # noqa: E402
from pydantic_ai.providers.openai import OpenAIProvider  # noqa: E402

Agent.instrument_all(InstrumentationSettings(include_content=os.environ.get("AGENT_INCLUDE_CONTENT", "1") == "1"))
model = OpenAIChatModel("gpt-4o", provider=OpenAIProvider(base_url=os.environ["OPENAI_BASE_URL"], api_key="sk-test"))
agent = Agent(model, name="weather_agent", system_prompt=SYSTEM_PROMPT, tools=[get_weather])
result = agent.run_sync(QUESTION)
provider.shutdown()
print(json.dumps({"answer": result.output}))
