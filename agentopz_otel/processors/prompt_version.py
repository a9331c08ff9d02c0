"""Prompt version: which version of an agent's prompt produced a call.

An explicit version attribute wins (normalize reads the known ones; config can add more). Next comes
the variant an OpenFeature flag evaluation served (a `feature_flag.evaluation` span event, as the
OpenFeature OpenTelemetry hook records it). Otherwise the version is `sha-` plus 8 hex digits of a
SHA-256 over the system instructions' text, so the same instructions get the same version in every
dialect. Config can give hashes human names.
"""

from __future__ import annotations

import hashlib

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from pydantic import BaseModel, ConfigDict, Field

from ..components import Context, Factory
from ..content import system_text
from ..semconv.events import CONTENT_EVENTS, event_content, log_event_name
from ..spans import AGENT, LLM, Batch, SpanView, add_attribute

UNKNOWN_VERSION = "unknown"
VERSION_ATTRIBUTE = "agentopz.prompt.version"
# Where a span's version came from, most authoritative first: a run takes the best its spans offer.
FROM_ATTRIBUTE = 0
FROM_FLAG = 1
FROM_HASH = 2
FROM_NOTHING = 3


class PromptVersionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attributes: list[str] = Field(
        default_factory=list,
        description="extra span attributes holding an explicit version, checked before the built-in ones",
    )
    flag_keys: list[str] = Field(
        default_factory=list,
        description="feature flags whose served variant is the prompt version; empty: any flag evaluation",
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
        self._flag_keys = frozenset(config.flag_keys)
        # Keyed by the hash of the instructions, not the instructions: a cache of 10,000 prompts of
        # 100 KiB would hold a gigabyte. A 64-bit collision between two prompts is not a concern.
        self._by_source: dict[int, str] = {}
        # The pipeline turns this off when no exporter reads the spans (service.Pipeline).
        self.enrich_spans = True

    def process(self, batch: Batch) -> None:
        for view in batch.views:
            if view.flag is not None and (not self._flag_keys or view.flag[0] in self._flag_keys):
                view.flag_version = view.flag[1]  # read by runs, whatever span it is on
            # An agent span with nothing to go on is left to the runs processor, which versions the run
            # by its LLM calls.
            if view.kind == LLM or (
                view.kind == AGENT
                and (view.prompt_version or view.flag_version or view.system_source or self._extra_attributes)
            ):
                self.assign(view)

    def process_logs(self, request: ExportLogsServiceRequest) -> None:
        """Content events sent as log records: the instructions' hash goes on the record for the runs
        processor, which versions the record's run by it."""
        for resource_logs in request.resource_logs:
            for scope_logs in resource_logs.scope_logs:
                for log_record in scope_logs.log_records:
                    name = log_event_name(log_record)
                    if name not in CONTENT_EVENTS:
                        continue
                    for field, source in event_content(name, log_record.attributes, log_record.body):
                        if field == "system_source" and (version := self._hashed(source)) != UNKNOWN_VERSION:
                            add_attribute(log_record.attributes, VERSION_ATTRIBUTE, version)

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
        view.prompt_version_from = FROM_ATTRIBUTE
        if version is None:
            version = view.flag_version
            view.prompt_version_from = FROM_FLAG
        if version is None:
            version = self._hashed(view.system_source) if view.system_source is not None else UNKNOWN_VERSION
            view.prompt_version_from = FROM_HASH if version != UNKNOWN_VERSION else FROM_NOTHING
        view.prompt_version = self._config.names.get(version, version)
        if self.enrich_spans and not view.version_attribute:
            view.set_attribute(VERSION_ATTRIBUTE, view.prompt_version)


def _create(component_id: str, config: PromptVersionConfig, context: Context) -> PromptVersionProcessor:
    return PromptVersionProcessor(config)


FACTORY = Factory(
    type="prompt_version",
    kind="processor",
    config_type=PromptVersionConfig,
    create=_create,
    requires=("normalize",),
)
