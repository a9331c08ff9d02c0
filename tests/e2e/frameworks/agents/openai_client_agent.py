"""A hand-written tool loop on the openai client, instrumented by OpenLIT, opentelemetry-instrumentation-openai-v2
or OpenInference's openai instrumentation (AGENT_INSTRUMENTATION). Those instrument model calls only, so the
agent and tool spans are the application's own, named as the GenAI semantic conventions say."""

import json
import os

from telemetry import QUESTION, SYSTEM_PROMPT, get_weather, logger_provider, tracer_provider

try:
    import httpx2
except ImportError:
    pass
else:
    # openai>=3 moved to the httpx2 fork; instrumentations that still import httpx share its classes.
    httpx2.alias_httpx()

instrumentation = os.environ["AGENT_INSTRUMENTATION"]
providers = []
if instrumentation == "openlit":
    import openlit

    openlit.init(application_name=os.environ["OTEL_SERVICE_NAME"])
elif instrumentation == "openai-v2":
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

    providers = [tracer_provider(), logger_provider()]
    OpenAIInstrumentor().instrument(tracer_provider=providers[0], logger_provider=providers[1])
else:
    from openinference.instrumentation.openai import OpenAIInstrumentor

    providers = [tracer_provider()]
    OpenAIInstrumentor().instrument(tracer_provider=providers[0])

import openai  # noqa: E402
from opentelemetry import trace  # noqa: E402

tracer = trace.get_tracer("weather-app")
client = openai.OpenAI(max_retries=0)
tools = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": QUESTION}]
agent_attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "weather_agent"}
with tracer.start_as_current_span("invoke_agent weather_agent", attributes=agent_attributes):
    while True:
        message = client.chat.completions.create(model="gpt-4o", messages=messages, tools=tools).choices[0].message
        if not message.tool_calls:
            break
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            tool_attributes = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": call.function.name}
            with tracer.start_as_current_span(f"execute_tool {call.function.name}", attributes=tool_attributes):
                result = get_weather(**json.loads(call.function.arguments))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
for provider in providers or [trace.get_tracer_provider()]:
    provider.shutdown()
print(json.dumps({"answer": message.content}))
