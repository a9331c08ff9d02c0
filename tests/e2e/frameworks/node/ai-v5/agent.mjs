// Vercel AI SDK 5: generateText with a tool, its legacy `ai.*` spans switched on by experimental_telemetry,
// exported with the OpenTelemetry JS SDK over OTLP/HTTP (OTEL_EXPORTER_OTLP_ENDPOINT).
import { createOpenAI } from "@ai-sdk/openai";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { BatchSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { NodeTracerProvider } from "@opentelemetry/sdk-trace-node";
import { generateText, stepCountIs, tool } from "ai";
import { z } from "zod";

const provider = new NodeTracerProvider({
  resource: resourceFromAttributes({ "service.name": process.env.OTEL_SERVICE_NAME }),
  spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter())],
});
provider.register();

const openai = createOpenAI({ baseURL: process.env.OPENAI_BASE_URL, apiKey: process.env.OPENAI_API_KEY });
const result = await generateText({
  model: openai.chat("gpt-4o"),
  system: process.env.AGENT_SYSTEM_PROMPT,
  prompt: "What is the weather in Paris?",
  tools: {
    get_weather: tool({
      description: "Current weather for a city.",
      inputSchema: z.object({ city: z.string() }),
      execute: async ({ city }) => `Sunny, 21 C in ${city}`,
    }),
  },
  stopWhen: stepCountIs(5),
  experimental_telemetry: { isEnabled: true, functionId: "weather_agent" },
});
await provider.shutdown();
console.log(JSON.stringify({ answer: result.text }));
