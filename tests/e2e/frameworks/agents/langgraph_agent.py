"""LangGraph create_react_agent instrumented by OpenInference's or OpenLLMetry's LangChain instrumentation
(AGENT_INSTRUMENTATION=openinference|openllmetry)."""

import json
import os

from telemetry import QUESTION, SYSTEM_PROMPT, get_weather, tracer_provider

provider = tracer_provider()
if os.environ["AGENT_INSTRUMENTATION"] == "openinference":
    from openinference.instrumentation.langchain import LangChainInstrumentor
else:
    from opentelemetry.instrumentation.langchain import LangchainInstrumentor as LangChainInstrumentor
LangChainInstrumentor().instrument(tracer_provider=provider)

from langchain_openai import ChatOpenAI  # noqa: E402
from langgraph.prebuilt import create_react_agent  # noqa: E402

agent = create_react_agent(ChatOpenAI(model="gpt-4o"), tools=[get_weather], prompt=SYSTEM_PROMPT, name="weather_agent")
result = agent.invoke({"messages": [{"role": "user", "content": QUESTION}]})
provider.shutdown()
print(json.dumps({"answer": result["messages"][-1].content}))
