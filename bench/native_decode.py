#!/usr/bin/env python
"""Prototype figure for a native decoder: OTLP protobuf bytes straight into normalize's view fields.

    .venv/bin/python bench/native_decode.py                                   # in-process figures
    .venv/bin/python bench/bench.py --runs --duration 12 --warmup 3 --json /tmp/bench.json
    .venv/bin/python bench/native_decode.py --bench-json /tmp/bench.json     # + end-to-end projection

Compiles bench/native_decode/decode.c with the C compiler into a temporary directory (skips with a
message when there is none) and loads it with ctypes. It decodes bench.py's own requests and checks
that every span it decodes natively gives the same SpanView as the service's path (receiver parse,
then Normalizer), field by field. Spans the prototype does not cover (another dialect's keys, events,
a failed call, a value that is not the usual type) are marked by the decoder and read in Python, from
their own bytes. It prints CPU µs per span (best of --repeat): protobuf parse + normalize as the
service does it, the native decode alone, and the native decode with the SpanViews built from its
output. Then it runs bench/pipeline_stages.py and substitutes the native figure for its receive and
normalize stages; with --bench-json (bench.py's results of the same pipeline) it adds the measured
gRPC and event-loop cost per span and sets the projection against rotel's spans per CPU-second.
This is a measurement, not the service's code path.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from agentopz_otel.metrics import Registry
from agentopz_otel.processors.normalize import Normalizer
from agentopz_otel.receivers.otlp import parse_protobuf_request, remove_invalid_spans
from agentopz_otel.semconv.dialects import (
    _OPENINFERENCE_KINDS,
    _SEMCONV_OPERATIONS,
    ATTRIBUTE_TABLE,
    ON_FAILURE_FIELDS,
)
from agentopz_otel.semconv.values import as_first_text, as_token_count
from agentopz_otel.spans import EVALUATOR, SpanView
from bench import build_payloads

SOURCE = Path(__file__).resolve().parent / "native_decode" / "decode.c"
STAGES = Path(__file__).resolve().parent / "pipeline_stages.py"

# Must match decode.c: conversions, span flags, header layout, slot markers.
TEXT, COUNT, FIRST_TEXT = 0, 1, 2
FALLBACK, INVALID_IDS = 1, 2
(FLAGS, SPAN_OFFSET, SPAN_LENGTH, TRACE_ID, SPAN_ID, PARENT_ID, PARENT_LENGTH) = range(7)
(NAME, NAME_LENGTH, START, END, SERVICE, SERVICE_LENGTH, PRESENT, HEADER) = range(7, 15)
NUMBER = -2
PER_SLOT = 3  # name (its position in the key table), value or offset, length or marker

# The attributes decoded natively: the OpenTelemetry GenAI semantic conventions' and OpenInference's
# names of the fields normalize's view takes, with what turns the decoded value into the field's (None:
# as it is; a value that gives None leaves the span to Python, as an operation no kind is known for).
# Every other name of the dialect table makes its span fall back to Python.
_tag: Callable[[str], Callable[[str], tuple[str, str]]] = lambda tag: lambda text: (tag, text)  # noqa: E731
COVERED: dict[str, Callable[[Any], Any] | None] = {
    "gen_ai.operation.name": _SEMCONV_OPERATIONS.get,
    "gen_ai.provider.name": None,
    "gen_ai.system": None,
    "gen_ai.response.model": None,
    "gen_ai.request.model": None,
    "gen_ai.usage.input_tokens": None,
    "gen_ai.usage.prompt_tokens": None,
    "gen_ai.usage.output_tokens": None,
    "gen_ai.usage.completion_tokens": None,
    "gen_ai.usage.cache_read.input_tokens": None,
    "gen_ai.usage.cache_read_input_tokens": None,
    "gen_ai.usage.cache_write.input_tokens": None,
    "gen_ai.usage.cache_creation.input_tokens": None,
    "gen_ai.usage.cache_creation_input_tokens": None,
    "gen_ai.usage.cache_write_input_tokens": None,
    "gen_ai.usage.reasoning.output_tokens": None,
    "gen_ai.usage.reasoning_tokens": None,
    "gen_ai.usage.details.reasoning_tokens": None,
    "gen_ai.agent.name": None,
    "gen_ai.tool.name": None,
    "gen_ai.response.finish_reasons": None,
    "gen_ai.response.id": None,
    "gen_ai.system_instructions": _tag("parts"),
    "gen_ai.input.messages": _tag("messages"),
    "gen_ai.output.messages": _tag("messages"),
    # OpenInference; an EVALUATOR span reads its links, which the prototype does not decode.
    "openinference.span.kind": {name: kind for name, kind in _OPENINFERENCE_KINDS.items() if kind != EVALUATOR}.get,
    "llm.provider": None,
    "llm.system": None,
    "llm.model_name": None,
    "llm.token_count.prompt": None,
    "llm.token_count.completion": None,
    "llm.token_count.prompt_details.cache_read": None,
    "agent.name": None,
    "tool.name": None,
    "llm.input_messages.0.message.role": None,
    "llm.input_messages.0.message.content": None,
    "llm.output_messages.0.message.content": _tag("text"),
    "output.value": _tag("response"),
    "input.value": _tag("json_or_text"),
}
# Read only for a failed call, which falls back: left out of the table, so never looked at.
NOT_READ = frozenset(name for name, (field, _, _) in ATTRIBUTE_TABLE.items() if field in ON_FAILURE_FIELDS)


class NativeSpan(NamedTuple):
    """What SpanView and Normalizer._fill read of a span, from the decoder's output."""

    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    name: str
    start_time_unix_nano: int
    end_time_unix_nano: int


class Decoder:
    """The compiled decoder, configured with the key table."""

    def __init__(self, library: Path) -> None:
        self._lib = ctypes.CDLL(str(library))
        self._lib.decode.restype = ctypes.c_int64
        self._lib.decode.argtypes = (ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_int64)
        fields = list(dict.fromkeys(ATTRIBUTE_TABLE[name][0] for name in COVERED))
        # Per name of the key table: its field and what turns its decoded value into the field's.
        self.names: list[tuple[str, Callable[[Any], Any] | None]] = []
        names, slot, priority, conversion = [], [], [], []
        for name, (field, rank, converter) in ATTRIBUTE_TABLE.items():
            if name in NOT_READ:
                continue
            names.append(name.encode())
            self.names.append((field, COVERED.get(name)))
            priority.append(rank)
            if name not in COVERED:
                slot.append(-1)
                conversion.append(TEXT)
                continue
            slot.append(fields.index(field))
            conversion.append(
                COUNT if converter is as_token_count else FIRST_TEXT if converter is as_first_text else TEXT
            )
        self._keys = b"".join(names)  # the table points into these bytes: kept while the library is
        ints = ctypes.c_int32 * len(names)
        status = self._lib.configure(
            self._keys,
            ints(*map(len, names)),
            ints(*slot),
            ints(*priority),
            ints(*conversion),
            len(names),
            len(fields),
        )
        if status != 0:
            raise RuntimeError("the key table does not fit the decoder")
        self.stride = HEADER + PER_SLOT * len(fields)
        self._out = array("q", bytes(8 * self.stride * 1024))

    def decode(self, body: bytes) -> list[int] | None:
        """The decoder's numbers for each span in request order, or None when the bytes are malformed."""
        while True:
            address, _ = self._out.buffer_info()
            capacity = len(self._out) // self.stride
            count = self._lib.decode(body, len(body), address, capacity)
            if count == -1:
                return None
            if count >= 0:
                return self._out[: count * self.stride].tolist()
            self._out = array("q", bytes(8 * self.stride * (-2 - count)))


def native_views(body: bytes, decoder: Decoder, normalizer: Normalizer) -> list[SpanView] | None:
    """The request's views from the native decoder's output; spans it left to Python are read there."""
    numbers = decoder.decode(body)
    if numbers is None:
        return None
    views: list[SpanView] = []
    add = views.append
    services: dict[int, str] = {}
    names = decoder.names
    for base in range(0, len(numbers), decoder.stride):
        flags = numbers[base]
        if flags & INVALID_IDS:
            continue  # the receiver drops it
        offset = numbers[base + SERVICE]
        service = services.get(offset)
        if service is None:
            length = numbers[base + SERVICE_LENGTH]
            service = services[offset] = body[offset : offset + length].decode() if length else "unknown_service"
        if flags & FALLBACK:
            add(python_view(body, numbers, base, service, normalizer))
            continue
        values: dict[str, Any] = {}
        start = base + HEADER
        for at in range(start, start + PER_SLOT * numbers[base + PRESENT], PER_SLOT):
            field, convert = names[numbers[at]]
            value, length = numbers[at + 1], numbers[at + 2]
            if length != NUMBER:
                value = body[value : value + length].decode()
            if convert is not None and (value := convert(value)) is None:
                break
            values[field] = value
        else:
            add(native_view(body, numbers, base, service, values))
            continue
        add(python_view(body, numbers, base, service, normalizer))
    return views


def python_view(body: bytes, numbers: list[int], base: int, service: str, normalizer: Normalizer) -> SpanView:
    """A span the prototype leaves to Python, parsed from its own bytes."""
    offset = numbers[base + SPAN_OFFSET]
    return normalizer.view(Span.FromString(body[offset : offset + numbers[base + SPAN_LENGTH]]), service)


def native_view(body: bytes, numbers: list[int], base: int, service: str, values: dict[str, Any]) -> SpanView:
    """The view of a natively decoded span: SpanView and normalize's own filling, over a NativeSpan."""
    trace, span_id, parent, name = (
        numbers[base + TRACE_ID],
        numbers[base + SPAN_ID],
        numbers[base + PARENT_ID],
        numbers[base + NAME],
    )
    span = NativeSpan(
        body[trace : trace + 16],
        body[span_id : span_id + 8],
        body[parent : parent + numbers[base + PARENT_LENGTH]],
        body[name : name + numbers[base + NAME_LENGTH]].decode(),
        numbers[base + START],
        numbers[base + END],
    )
    view = SpanView(span, service)  # type: ignore[arg-type]
    Normalizer._fill(view, span, values, False)  # type: ignore[arg-type]
    return view


def compile_decoder(directory: Path) -> Path | None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    library = directory / "decode.so"
    subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(library), str(SOURCE)], check=True)
    return library


def new_normalizer() -> Normalizer:
    return Normalizer(Registry().metric("agentopz_invalid_attributes_total"))


COMPARED = tuple(name for name in SpanView.__slots__ if name != "span")


def compare(payloads: list[tuple[bytes, int]], decoder: Decoder) -> tuple[int, int, list[str]]:
    """(spans decoded natively, spans left to Python, mismatches) against the service's path."""
    native = fallback = 0
    mismatches: list[str] = []
    for body, _ in payloads:
        request = parse_protobuf_request(body)
        remove_invalid_spans(request)
        expected = new_normalizer().views(request)
        got = native_views(body, decoder, new_normalizer())
        if got is None or len(got) != len(expected):
            mismatches.append(f"request: {len(expected)} views expected, got {None if got is None else len(got)}")
            continue
        for want, have in zip(expected, got, strict=True):
            if isinstance(have.span, Span):
                fallback += 1
                continue
            native += 1
            for name in COMPARED:
                if getattr(want, name) != getattr(have, name):
                    mismatches.append(f"{name}: {getattr(want, name)!r} != {getattr(have, name)!r}")
    return native, fallback, mismatches


def best_us_per_span(
    works: dict[str, Callable[[bytes], object]], payloads: list[tuple[bytes, int]], repeat: int
) -> dict[str, float]:
    """Each work's best CPU µs per span over all payloads, measured in turns so that all see the same
    load from other work on the machine."""
    spans = sum(count for _, count in payloads)
    best = dict.fromkeys(works, float("inf"))
    for _ in range(repeat):
        for name, work in works.items():
            started = time.process_time()
            for body, _ in payloads:
                work(body)
            best[name] = min(best[name], time.process_time() - started)
    return {name: seconds / spans * 1e6 for name, seconds in best.items()}


def python_path(body: bytes, normalizer: Normalizer) -> None:
    request = parse_protobuf_request(body)
    remove_invalid_spans(request)
    normalizer.views(request)


def pipeline_stages(no_runs: bool) -> dict[str, float]:
    """bench/pipeline_stages.py's best µs per span, by stage."""
    command = [sys.executable, str(STAGES), "--requests", "100"] + (["--no-runs"] if no_runs else [])
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    print(output, end="")
    return {m[1].strip(): float(m[2]) for m in re.finditer(r"^(.+?)\s+([\d.]+)\s+[\d.]+$", output, re.MULTILINE)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="repetitions per figure; the best is printed")
    parser.add_argument("--payloads", type=int, default=32)
    parser.add_argument("--spans-per-request", type=int, default=512)
    parser.add_argument("--no-runs", action="store_true", help="project the pipeline without the runs processor")
    parser.add_argument("--bench-json", type=Path, help="bench.py --json results of the same pipeline and rotel")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        library = compile_decoder(Path(directory))
        if library is None:
            print("skipped: no C compiler (cc or gcc) on PATH to build bench/native_decode/decode.c")
            return
        decoder = Decoder(library)
    payloads = build_payloads(args.payloads, args.spans_per_request, 7, b"\x01" * 8)
    native, fallback, mismatches = compare(payloads, decoder)
    print(f"decoded natively {native} spans, left to Python {fallback} ({fallback / (native + fallback):.1%})")
    print(f"mismatches against receiver parse + Normalizer: {len(mismatches)}")
    for field, count in Counter(line.partition(":")[0] for line in mismatches).most_common():
        print(f"  {field}: {count}, first: {next(line for line in mismatches if line.startswith(field + ':'))}")

    gc.set_threshold(50_000, 50, 100)  # as the service runs
    gc.freeze()
    normalizer = new_normalizer()
    figures = best_us_per_span(
        {
            "python": lambda body: python_path(body, normalizer),
            "decode": decoder.decode,
            "views": lambda body: native_views(body, decoder, normalizer),
        },
        payloads,
        args.repeat,
    )
    python, decode_only, with_views = figures["python"], figures["decode"], figures["views"]
    print(f"µs per span, best of {args.repeat} in turns, {len(payloads)} requests x {args.spans_per_request} spans")
    print(f"  protobuf parse + ids + normalize (Python) {python:8.2f}")
    print(f"  native decode alone                       {decode_only:8.2f}")
    print(f"  native decode + SpanViews (+ fallbacks)   {with_views:8.2f}")

    stages = pipeline_stages(args.no_runs)
    replaced = stages["receive (parse, ids)"] + stages["Normalizer"]
    overhead = rotel = None
    if args.bench_json is not None:
        results = {entry["name"].partition(" ")[0]: entry["load"] for entry in json.loads(args.bench_json.read_text())}
        service = results["agentopz-otel"]["spans_per_cpu_second"]
        rotel = results["rotel"]["spans_per_cpu_second"]
        overhead = 1e6 / service - stages["total"]
        print(f"end to end now (bench.py): {service:,.0f} spans per CPU-second = {1e6 / service:.2f} µs a span,")
        print(f"  of which gRPC and the event loop {overhead:.2f} µs beyond the in-process stages above;")
        print(f"  rotel in the same run: {rotel:,.0f} spans per CPU-second, ratio now {service / rotel:.2f}x")
    else:
        print("(--bench-json from bench.py of the same pipeline adds the end-to-end projection against rotel)")
    print(f"projected: the stages' total {stages['total']:.2f} µs - receive and normalize {replaced:.2f} + native")
    print(f"{'variant':<44} {'native':>7} {'in process':>11} {'spans/CPU-s':>12} {'e2e spans/CPU-s':>16} {'ratio':>6}")
    variants = (
        ("native decode, SpanViews built in Python", with_views),
        ("floor: SpanViews built natively too", decode_only),
    )
    for name, native_us in variants:
        in_process = stages["total"] - replaced + native_us
        line = f"{name:<44} {native_us:>7.2f} {in_process:>11.2f} {1e6 / in_process:>12,.0f}"
        if overhead is not None and rotel is not None:
            end_to_end = 1e6 / (in_process + overhead)
            line += f" {end_to_end:>16,.0f} {end_to_end / rotel:>5.2f}x"
        print(line)


if __name__ == "__main__":
    main()
