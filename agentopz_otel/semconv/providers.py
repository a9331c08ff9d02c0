"""Model providers as instrumentations name them, mapped to the provider id used in labels and pricing."""

from __future__ import annotations

import functools

from genai_prices import data_snapshot

# Provider names as instrumentations spell them -> the provider id used in labels and pricing.
PROVIDER_ALIASES = {
    "az.ai.openai": "azure",
    "azure.ai.openai": "azure",
    "az.ai.inference": "azure",
    "azure.ai.inference": "azure",
    "azure_openai": "azure",
    "azure-openai": "azure",
    "vertex_ai": "google",
    "gcp.vertex_ai": "google",
    "gemini": "google",
    "gcp.gemini": "google",
    "gcp.gen_ai": "google",
    "google.generative-ai": "google",
    "google.vertex": "google",
    "aws.bedrock": "aws",
    "bedrock": "aws",
    "amazon-bedrock": "aws",
    "mistral_ai": "mistral",
    "mistralai": "mistral",
    "x_ai": "x-ai",
    "xai": "x-ai",
}
# Vercel AI SDK and others append the API they used (`openai.chat`, `openai.responses`): the provider is
# what comes before.
API_FLAVOURS = frozenset({"chat", "responses", "completion", "completions", "messages", "embedding", "embeddings"})
# Values that name the framework, not the model provider (Strands reports `gen_ai.system=strands-agents`):
# the provider is unknown, and the model is priced by model alone.
FRAMEWORK_PROVIDER_VALUES = frozenset(
    {
        "strands-agents",
        "strands",
        "langchain",
        "langgraph",
        "llamaindex",
        "llama_index",
        "pydantic-ai",
        "pydantic_ai",
        "openai-agents",
        "openai_agents",
        "crewai",
        "autogen",
        "semantic_kernel",
        "haystack",
        "dspy",
        "agno",
        "litellm",
        "mastra",
    }
)
UNKNOWN_PROVIDER = ""
# Model-name prefixes that name a provider (`openai/gpt-4o-mini`, as LiteLLM-style clients send them).
MODEL_PREFIX_PROVIDERS = frozenset(
    {provider.id for provider in data_snapshot.get_snapshot().providers} | set(PROVIDER_ALIASES)
)


@functools.lru_cache(maxsize=1024)  # every LLM span asks; the answers are few
def canonical_provider(value: str) -> str:
    """The model provider a reported provider value stands for; "" when the value names no provider."""
    provider = value.lower()
    if provider in FRAMEWORK_PROVIDER_VALUES:
        return UNKNOWN_PROVIDER
    base, dot, flavour = provider.rpartition(".")
    if dot and flavour in API_FLAVOURS:
        provider = base
    return PROVIDER_ALIASES.get(provider, provider)


def split_model_prefix(provider: str, model: str) -> tuple[str, str]:
    """(provider, model) with a provider prefix of the model name taken as the provider, when the reported
    provider does not say otherwise (an aggregator such as openrouter keeps `openai/gpt-4o` as its model)."""
    prefix, slash, name = model.partition("/")
    if slash and name:
        named = canonical_provider(prefix)
        if named in MODEL_PREFIX_PROVIDERS and provider in (UNKNOWN_PROVIDER, named):
            return named, name
    return provider, model
