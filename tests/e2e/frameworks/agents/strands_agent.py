"""Strands Agents with its own OpenTelemetry (StrandsTelemetry) and its OpenAI model provider, which streams."""

import json
import os

from strands import Agent, tool
from strands.models.openai import OpenAIModel
from strands.telemetry import StrandsTelemetry
from telemetry import QUESTION, SYSTEM_PROMPT, get_weather

telemetry = StrandsTelemetry()
telemetry.setup_otlp_exporter()
model = OpenAIModel(client_args={"base_url": os.environ["OPENAI_BASE_URL"], "api_key": "sk-test"}, model_id="gpt-4o")
agent = Agent(
    model=model, name="weather_agent", system_prompt=SYSTEM_PROMPT, tools=[tool(get_weather)], callback_handler=None
)
result = agent(QUESTION)
telemetry.tracer_provider.shutdown()
print(json.dumps({"answer": str(result).strip()}))
