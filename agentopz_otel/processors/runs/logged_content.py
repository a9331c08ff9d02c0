"""Content that instrumentations send as log records (GenAI content events), kept per trace until its run
finishes: log records and spans travel separately and either may arrive first."""

from __future__ import annotations

from collections import OrderedDict

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from ...semconv.events import CONTENT_EVENTS, event_content, log_event_name
from ..prompt_version import FROM_HASH, VERSION_ATTRIBUTE
from .assembly import Group

# Traces whose content log records are held at once (each holds at most one output of max_output_chars).
MAX_TRACES = 10_000
# Estimated memory of a trace's content, for runs.max_memory_bytes: beside its output and version.
TRACE_CONTENT_BYTES = 250


class TraceContent:
    __slots__ = ("output", "output_time", "prompt_version", "seen")

    @property
    def bytes(self) -> int:
        return (
            TRACE_CONTENT_BYTES
            + len(self.prompt_version or "")
            + (len(self.output[1]) if self.output is not None else 0)
        )

    def __init__(self, seen: float) -> None:
        self.seen = seen
        self.prompt_version: str | None = None
        self.output: tuple[str, str] | None = None
        self.output_time = -1


class LoggedContent:
    """Per trace: the first instructions' version and the latest output sent as content log records."""

    def __init__(self, hold_seconds: float, max_output_chars: int, max_traces: int = MAX_TRACES) -> None:
        self._traces: OrderedDict[bytes, TraceContent] = OrderedDict()
        self._max_traces = max_traces
        self._hold_seconds = hold_seconds
        self._max_output_chars = max_output_chars
        self.bytes = 0  # estimated memory of what is held

    def process_logs(self, request: ExportLogsServiceRequest, now: float) -> None:
        for resource_logs in request.resource_logs:
            for scope_logs in resource_logs.scope_logs:
                for log_record in scope_logs.log_records:
                    name = log_event_name(log_record)
                    if name in CONTENT_EVENTS and len(log_record.trace_id) == 16:
                        self._keep(log_record, name, now)

    def _keep(self, log_record, name: str, now: float) -> None:
        version = next((kv.value.string_value for kv in log_record.attributes if kv.key == VERSION_ATTRIBUTE), None)
        output = dict(event_content(name, log_record.attributes, log_record.body)).get("output")
        if output is not None and len(output[1]) > self._max_output_chars:
            output = None  # too large to hold: content checks say unknown
        if version is None and output is None:
            return
        content = self._traces.get(log_record.trace_id)
        if content is None:
            content = self._traces[log_record.trace_id] = TraceContent(now)
            while len(self._traces) > self._max_traces:
                self._drop_oldest()
        else:
            self.bytes -= content.bytes
        if version and content.prompt_version is None:
            content.prompt_version = version
        record_time = log_record.time_unix_nano or log_record.observed_time_unix_nano
        if output is not None and record_time >= content.output_time:
            content.output, content.output_time = output, record_time
        self.bytes += content.bytes

    def _drop_oldest(self) -> None:
        self.bytes -= self._traces.popitem(last=False)[1].bytes

    def shed(self, excess: int) -> int:
        """Forget the oldest traces' content until `excess` bytes are free (or none is left); the bytes freed."""
        before = self.bytes
        while self._traces and before - self.bytes < excess:
            self._drop_oldest()
        return before - self.bytes

    def apply(self, group: Group) -> None:
        """Give a finishing run the content its trace sent as log records, where its spans had none."""
        content = self._traces.pop(group.trace.trace_id, None)
        if content is None:
            return
        self.bytes -= content.bytes
        group.offer_version(content.prompt_version, FROM_HASH)
        if group.output is None and content.output is not None:
            group.output = content.output

    def expire(self, now: float) -> None:
        while self._traces and now - next(iter(self._traces.values())).seen > self._hold_seconds:
            self._drop_oldest()
