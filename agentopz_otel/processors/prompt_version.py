"""Prompt version: which version of an agent's prompt produced a call.

An explicit version attribute wins (normalize reads the known ones; config can add more). Otherwise
the version is `sha-` plus 8 hex digits of a SHA-256 over the system instructions' text, so the same
instructions get the same version in every dialect. Config can give hashes human names.
"""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict, Field

from ..components import Context, Factory
from ..content import system_text
from ..model import AGENT, LLM, Batch, SpanView

UNKNOWN_VERSION = "unknown"


class PromptVersionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attributes: list[str] = Field(
        default_factory=list,
        description="extra span attributes holding an explicit version, checked before the built-in ones",
    )
    names: dict[str, str] = Field(
        default_factory=dict, description="hash version -> human name, e.g. sha-1a2b3c4d: support-v3"
    )
    max_cached_prompts: int = Field(default=10_000, ge=1)


def content_hash(text: str) -> str:
    return "sha-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


class PromptVersionProcessor:
    def __init__(self, config: PromptVersionConfig) -> None:
        self._config = config
        self._extra_attributes = frozenset(config.attributes)
        # Keyed by the hash of the instructions, not the instructions: a cache of 10,000 prompts of
        # 100 KiB would hold a gigabyte. A 64-bit collision between two prompts is not a concern.
        self._by_source: dict[int, str] = {}

    def process(self, batch: Batch) -> None:
        for view in batch.views:
            # An agent span with nothing to go on is left to the runs processor, which versions the run
            # by its LLM calls.
            if view.kind == LLM or (
                view.kind == AGENT and (view.prompt_version or view.system_source or self._extra_attributes)
            ):
                self.assign(view)

    def _explicit(self, view: SpanView) -> str | None:
        if self._extra_attributes:
            for attribute in view.span.attributes:
                if attribute.key in self._extra_attributes and attribute.value.string_value:
                    return attribute.value.string_value
        return view.prompt_version

    def _hashed(self, source: tuple[str, str]) -> str:
        key = hash(source)
        version = self._by_source.get(key)
        if version is None:
            text = system_text(source)
            version = content_hash(text) if text else UNKNOWN_VERSION
            version = self._config.names.get(version, version)
            if len(self._by_source) >= self._config.max_cached_prompts:
                self._by_source.pop(next(iter(self._by_source)))
            self._by_source[key] = version
        return version

    def assign(self, view: SpanView) -> None:
        version = self._explicit(view)
        if version is None:
            version = self._hashed(view.system_source) if view.system_source is not None else UNKNOWN_VERSION
        view.prompt_version = self._config.names.get(version, version)
        if not view.version_attribute:
            view.set_attribute("agentopz.prompt.version", view.prompt_version)


def _create(component_id: str, config: PromptVersionConfig, context: Context) -> PromptVersionProcessor:
    return PromptVersionProcessor(config)


FACTORY = Factory(
    type="prompt_version",
    kind="processor",
    config_type=PromptVersionConfig,
    create=_create,
    requires=("normalize",),
)
