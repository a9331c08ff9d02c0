"""Normalize: read each span once into a SpanView, whatever instrumentation dialect produced it.

The dialects are data (`semconv.dialects.DIALECT_TABLE`): per canonical field, the attribute names that
carry it in priority order (newest convention first). A span's attribute keys are read once; the read
plan for that order of keys (`semconv.dialects.read_plan`, kept per order) says which attributes to
read for each field the span's kind uses, and the highest-priority one with a usable value wins, so
duplicate and deprecated names are never added up. This module is the component: its config, its
factory and the Normalizer that applies the table.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from operator import attrgetter
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from pydantic import BaseModel, ConfigDict

from ..bounded_log import BoundedLog
from ..components import Context, Factory
from ..metrics import Counter, Family
from ..records import Evaluation
from ..semconv.dialects import (
    AGENT_NAMED_BY_SPAN,
    MAX_CONTENT_PARTS,
    FieldPlans,
    ReadPlan,
    read_plan,
)
from ..semconv.events import (
    CONTENT_EVENTS,
    FLAG_EVALUATION_EVENT,
    event_content,
    flag_evaluation,
    span_evaluations,
    targeting_key,
)
from ..semconv.failures import FAILED_TOOL_STATUSES, SPAN_STATUS_ERROR, classify_failure
from ..semconv.providers import canonical_provider, split_model_prefix
from ..semconv.values import INVALID, MAX_TOKENS, SKIP, as_text, as_token_count, decoded
from ..spans import AGENT, EVALUATOR, LLM, OTHER, STATUS_ERROR, TOOL, Batch, SpanView


def _native_scan() -> Callable[[bytes, object], list[Scanned] | None] | None:
    """normalize_wire.scan when it is built (not without a C compiler, nor under AGENTOPZ_PURE_PYTHON)
    and knows every member of this opentelemetry-proto's AnyValue; else None: read through protobuf."""
    try:
        from .normalize_wire import ANY_VALUE_FIELDS, scan
    except ImportError:
        return None
    members = {field.number for field in AnyValue.DESCRIPTOR.oneofs_by_name["value"].fields}
    return scan if members <= set(ANY_VALUE_FIELDS) else None


log = logging.getLogger("agentopz_otel.normalize")
# What the native scan gives for a value protobuf must read (an array, a key-value list, bytes, a
# string-table index).
STRUCTURED = object()
# What the native scan gives per span: the attribute keys joined by _SEPARATOR, their values (see
# `_decoded_at`), the trace, span and parent span ids, the start and end times, the status code and
# the number of events.
Scanned = tuple[str, list[Any], bytes, bytes, bytes, int, int, int, int]
scan = _native_scan()

# Read plans kept, one per order of attribute keys (an instrumentation's span of one kind has one or a
# few); a shape whose keys are longer than MAX_PLAN_KEY_CHARS together is planned anew each time.
MAX_PLANS = 256  # at most about 33 KB each (4,096 characters of known keys): about 8 MiB
MAX_PLAN_KEY_CHARS = 4096
_KEY = attrgetter("key")
_SEPARATOR = "\x00"


class NormalizeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Normalizer:
    """Turns an OTLP request into SpanViews; counts attributes whose values cannot be used."""

    def __init__(self, invalid_attributes: Family[Counter]) -> None:
        self._plans: dict[str, ReadPlan] = {}
        self._invalid = invalid_attributes
        self._warnings = BoundedLog(log)

    def process(self, batch: Batch) -> None:
        batch.views = self.views(batch.request, batch.wire)

    def views(self, request: ExportTraceServiceRequest, wire: bytes | None = None) -> list[SpanView]:
        """One view per span; with the request's protobuf bytes (`Batch.wire`) and the native module
        built, the attributes are read from the bytes, which gives the same views at a fraction of the
        cost (both ways are tested against each other)."""
        entries = scan(wire, STRUCTURED) if scan is not None and wire is not None else None
        if entries is not None and len(entries) != sum(
            len(scope_spans.spans)
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
        ):
            entries = None  # bytes that are not the request's: no view is read from them
        scanned = iter(entries) if entries is not None else None
        views: list[SpanView] = []
        add, view = views.append, self.view
        for resource_spans in request.resource_spans:
            service = service_name(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    add(view(span, service, next(scanned, None) if scanned is not None else None))
        return views

    def view(self, span: Span, service: str, scanned: Scanned | None = None) -> SpanView:
        # The protobuf objects are most of the cost: each attribute is walked once for its key, and only
        # the values the plan for this order of keys names are read, best first, until one is usable.
        # Plans are kept by the keys joined into one string: a tuple of the keys for each span costs as
        # much CPU, and measured, it left the process about 3 MiB larger after a few hundred requests.
        # `scanned` is the same read from the request's bytes, without protobuf objects.
        if scanned is None:
            attributes: list[Any] = span.attributes[:]
            shape = _SEPARATOR.join(map(_KEY, attributes))
            view = SpanView(
                span,
                service,
                span.trace_id,
                span.span_id,
                span.parent_span_id,
                span.start_time_unix_nano,
                span.end_time_unix_nano,
            )
            status_code = span.status.code
            has_events = len(span.events) > 0
        else:
            shape, attributes, trace_id, span_id, parent_span_id, start, end, status_code, events = scanned
            view = SpanView(span, service, trace_id, span_id, parent_span_id, start, end)
            has_events = events > 0
        plan = self._plans.get(shape)
        if plan is None or plan.size != len(attributes):
            keys = tuple(map(_KEY, span.attributes))
            plan = read_plan(keys)
            self._remember(shape, keys, plan)
        values: dict[str, Any] = {}
        native = scanned is not None
        read = self._read
        read(span, attributes, native, plan.kind, values)
        kind = values.get("kind")
        if kind is not None:
            read(span, attributes, native, plan.by_kind[kind], values)
        else:
            read(span, attributes, native, plan.inference, values)
            read(span, attributes, native, plan.after_inference[_inferred_kind(values)], values)
        if has_events:
            _read_events(view, span, values)
        _fill(view, span, values, has_events)
        error_type = values.get("error_type")
        if (
            error_type is not None
            or status_code == SPAN_STATUS_ERROR
            or ("tool_status" in values and values["tool_status"].lower() in FAILED_TOOL_STATUSES)
        ):
            if view.kind == TOOL:
                view.status = STATUS_ERROR
            else:
                read(span, attributes, native, plan.on_failure, values)  # the HTTP status says why, if any
                view.status = classify_failure(span, error_type, values.get("http_status"))
        # The span carries a usable agentopz.prompt.version of ours already (it is then the version read).
        if "prompt_version" in values and plan.own_version:
            view.version_attribute = any(
                type(value) is str and value
                for value in (_decoded_at(span, attributes, native, index) for index in plan.own_version)
            )
        return view

    def _read(
        self, span: Span, attributes: list[Any], native: bool, fields: FieldPlans, values: dict[str, Any]
    ) -> None:
        """Each field's value from the first of its attributes that gives a usable one."""
        for field, candidates in fields:
            for index, convert in candidates:
                value = _decoded_at(span, attributes, native, index)
                # The two commonest conversions inline, their usual case only: a call costs as much as the
                # rest of the step. The converters decide everything else, so the outcome is theirs.
                if not (
                    (convert is as_text and type(value) is str and value)
                    or (convert is as_token_count and type(value) is int and 0 < value <= MAX_TOKENS)
                ):
                    value = convert(value)
                if value is SKIP:
                    continue
                if value is INVALID:
                    self._count_invalid(span.attributes[index])
                    continue
                values[field] = value
                break

    def _remember(self, shape: str, keys: tuple[str, ...], plan: ReadPlan) -> None:
        """Keep a plan for spans of the same shape, within MAX_PLANS and MAX_PLAN_KEY_CHARS (the oldest
        goes first): a few instrumentations make few shapes, a sender of random keys can't grow it.

        A shape with the separator in a key is not kept: then a kept shape with as many keys as a span
        can only be that span's own (the check in `view`), however its keys are spelled."""
        if len(shape) > MAX_PLAN_KEY_CHARS or any(_SEPARATOR in key for key in keys):
            return
        plans = self._plans
        if len(plans) >= MAX_PLANS:
            del plans[next(iter(plans))]
        plans[shape] = plan

    def _count_invalid(self, attribute: KeyValue) -> None:
        self._invalid.series((attribute.key,)).value += 1
        which = attribute.value.WhichOneof("value")
        self._warnings.warning(
            attribute.key,
            "span attribute %s ignored: unusable %s %r (counted in agentopz_invalid_attributes_total)",
            attribute.key,
            which,
            getattr(attribute.value, which) if which else None,
        )


def _fill(view: SpanView, span: Span, values: dict[str, Any], has_events: bool) -> None:
    """The view's fields from the values read (compiled, the view's fields are set directly: normalize.pxd)."""
    get = values.get
    model = view.model = get("model", "")
    input_tokens = get("input_tokens")
    output_tokens = get("output_tokens")
    kind = get("kind")
    if kind is None:
        kind = _inferred_kind(values)
    view.agent = get("agent")
    if kind == AGENT_NAMED_BY_SPAN:
        if "graph_node" in values:
            kind = OTHER  # a node of a framework's graph (LangGraph), not an agent of its own
        else:
            kind = AGENT
            if view.agent is None and span.name:
                view.agent = span.name
                view.agent_is_span_name = True
    view.kind = kind
    if kind == LLM:
        provider = canonical_provider(get("provider", ""))
        if "/" in model:
            provider, model = split_model_prefix(provider, model)
            view.model = model
        view.provider = provider
        cache_read = get("cache_read_tokens")
        cache_write = get("cache_write_tokens")
        reasoning = get("reasoning_tokens")
        # Some providers report cache and reasoning tokens beside the input/output counts rather
        # than inside them; the canonical view always includes them.
        if cache_read is not None or cache_write is not None:
            cached = (cache_read or 0) + (cache_write or 0)
            if input_tokens is None or input_tokens < cached:
                input_tokens = (input_tokens or 0) + cached
        if reasoning and (output_tokens is None or output_tokens < reasoning):
            output_tokens = (output_tokens or 0) + reasoning
        view.input_tokens = input_tokens
        view.output_tokens = output_tokens
        view.cache_read_tokens = cache_read
        view.cache_write_tokens = cache_write
        view.reasoning_tokens = reasoning
        view.reported_cost = get("reported_cost")
        view.finish_reason = get("finish_reason")
        view.response_id = get("response_id")
        view.enriched = "enriched" in values
    elif kind == AGENT:
        if view.agent is None:
            view.agent = get("entity_name") or _name_after(span.name, "invoke_agent ")
    elif kind == TOOL:
        view.tool = get("tool") or get("entity_name") or _name_after(span.name, "execute_tool ") or span.name
    if kind in (LLM, AGENT):
        view.prompt_version = get("prompt_version")
        system_source = get("system_source")
        if system_source is None and get("first_role") == "system":
            if "first_content" in values:
                system_source = ("text", values["first_content"])
            elif "system_part.0" in values:
                system_source = ("text", _joined_parts(values, "system_part"))
        view.system_source = system_source
        output = get("output")
        if output is None and "output_part.0" in values:
            output = ("text", _joined_parts(values, "output_part"))
        view.output = output
        view.input = get("input")
        if view.input is None:
            if system_source is not None and system_source[0] in ("messages", "vercel_prompt"):
                view.input = system_source  # the same messages carry the user's request
            elif get("first_role") == "user" and "first_content" in values:
                view.input = ("text", values["first_content"])
    if kind == EVALUATOR:
        _evaluator_span(view, span, values)
    elif has_events or "annotation.0.name" in values:
        view.evaluations = span_evaluations(span, values, view.response_id)


def _decoded_at(span: Span, attributes: list[Any], native: bool, index: int) -> Any:
    """The attribute's value as converters take it: from the span's KeyValues, or as scanned natively
    (where what is not a str, bool, int or float is left to protobuf: see `decoded`)."""
    value = attributes[index]
    if not native:
        return decoded(value.value)
    return decoded(span.attributes[index].value) if value is STRUCTURED else value


def _inferred_kind(values: dict[str, Any]) -> str:
    """The kind of a span no attribute gives one: an LLM call when it names a model and counts tokens."""
    return LLM if values.get("model") and ("input_tokens" in values or "output_tokens" in values) else OTHER


def _joined_parts(values: dict[str, Any], field: str) -> str:
    texts = []
    for index in range(MAX_CONTENT_PARTS):
        text = values.get(f"{field}.{index}")
        if text is not None:
            texts.append(text)
    return "\n".join(texts)


def _read_events(view: SpanView, span: Span, values: dict[str, Any]) -> None:
    """Content events fill the content fields the attributes left empty; a feature-flag evaluation
    gives the variant served."""
    from_attributes = {field for field in ("system_source", "output") if field in values}
    for event in span.events:
        name = event.name
        if name == FLAG_EVALUATION_EVENT:
            if view.flag is None:
                view.flag = flag_evaluation(event.attributes)
                view.targeting_key = targeting_key(event.attributes)
        elif name in CONTENT_EVENTS:
            for field, source in event_content(name, event.attributes, None):
                # Attributes win; among events the first system message and the last choice.
                if field not in from_attributes and (field == "output" or field not in values):
                    values[field] = source


def _evaluator_span(view: SpanView, span: Span, values: dict[str, Any]) -> None:
    """An EVALUATOR span: its verdict (and any annotations) are about the span it links to, or, with no
    link, about the run it sits in."""
    evaluations = span_evaluations(span, values, None) or []
    if "evaluator_score" in values or "evaluator_label" in values:
        name = values.get("evaluator_name") or span.name
        evaluations.append(
            Evaluation(name=name, score=values.get("evaluator_score"), label=values.get("evaluator_label"))
        )
    view.evaluations = evaluations or None
    for link in span.links:
        if len(link.trace_id) == 16:
            view.evaluation_target = (link.trace_id, link.span_id)
            break


def _name_after(name: str, prefix: str) -> str | None:
    return name[len(prefix) :] or None if name.startswith(prefix) else None


def service_name(resource_attributes) -> str:
    for attribute in resource_attributes:
        if attribute.key == "service.name":
            return attribute.value.string_value or "unknown_service"
    return "unknown_service"


def _create(component_id: str, config: NormalizeConfig, context: Context) -> Normalizer:
    return Normalizer(context.metrics.metric("agentopz_invalid_attributes_total"))


FACTORY = Factory(type="normalize", kind="processor", config_type=NormalizeConfig, create=_create)
