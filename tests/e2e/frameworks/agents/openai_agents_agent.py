"""OpenAI Agents SDK with openinference-instrumentation-openai-agents."""

import json

from telemetry import QUESTION, SYSTEM_PROMPT, get_weather, tracer_provider

provider = tracer_provider()

from agents import Agent, Runner, function_tool, set_tracing_disabled  # noqa: E402
from openinference.instrumentation.openai_agents import OpenAIAgentsInstrumentor  # noqa: E402

OpenAIAgentsInstrumentor().instrument(tracer_provider=provider)
set_tracing_disabled(False)
agent = Agent(name="weather_agent", instructions=SYSTEM_PROMPT, model="gpt-4o", tools=[function_tool(get_weather)])
result = Runner.run_sync(agent, QUESTION)
provider.shutdown()
print(json.dumps({"answer": result.final_output}))
