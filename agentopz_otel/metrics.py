"""Plain, lock-free metric families with bounded label values.

Everything records on one asyncio event loop, so a series is a slot incremented in place: no locks
and no per-observation allocation once a series exists. Label values pass a per-label cardinality cap
(new values past it become `other`, counted in `agentopz_label_overflow_total{label}`); new series
also pass a per-metric cap and one budget for the whole registry, sized so a scrape stays small.
Exposition copies the values on the event loop (`Registry.snapshot`) and formats the copy elsewhere
(exposition.py), so the hot path needs no lock.
"""

from __future__ import annotations

import inspect
import logging
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from . import catalogue
from .bounded_log import BoundedLog
from .text import visible_direction_controls

log = logging.getLogger("agentopz_otel.metrics")

OVERFLOW_VALUE = "other"
# agentopz_label_overflow_total{label=...} values for the caps that are not one label's.
METRIC_CAP_LABEL = "__series__"
BUDGET_LABEL = "__budget__"

# GenAI semantic-convention buckets for gen_ai.client.operation.duration, in seconds.
CALL_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)


class CardinalityConfig(BaseModel):
    """Caps on distinct label values; a value past its cap is reported as `other`."""

    model_config = ConfigDict(extra="forbid")

    default_limit: int = Field(default=200, ge=1)
    limits: dict[str, int] = Field(
        default_factory=lambda: {"service": 100, "agent": 500, "model": 200, "provider": 50, "tool": 500}
    )
    max_value_length: int = Field(default=128, ge=8)
    max_series_per_metric: int = Field(
        default=10_000, ge=1, description="past it, new label combinations all go to one series of 'other'"
    )
    max_series: int = Field(
        default=10_000,
        ge=1,
        description="Prometheus series of all metrics together (a histogram's buckets, sum and count each "
        "count); past it, new label combinations go to their metric's series of 'other'",
    )


class Counter:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0


class Gauge(Counter):
    __slots__ = ()


class Histogram:
    __slots__ = ("bounds", "count", "counts", "exemplars", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0
        self.exemplars: list[tuple[str, float] | None] | None = None

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def observe_with_exemplar(self, value: float, trace_id: str) -> None:
        index = bisect_left(self.bounds, value)
        self.counts[index] += 1
        self.sum += value
        self.count += 1
        if self.exemplars is None:
            self.exemplars = [None] * len(self.counts)
        self.exemplars[index] = (trace_id, value)


class Overflow:
    """Where values and series sent to `other` are reported: counted in agentopz_label_overflow_total
    by `label`, and warned about once per label and reason."""

    def __init__(self, counter: Family[Counter]) -> None:
        self.counter = counter
        self._warnings = BoundedLog(log)

    def __call__(self, label: str, message: str, *args: object) -> None:
        self.counter.series((label,)).value += 1
        self._warnings.warning((label, message), message, *args)


class LabelLimiter:
    """Admits up to `limit` distinct values of one label, then maps new ones to `other`."""

    def __init__(self, label: str, limit: int, max_length: int, overflow: Overflow) -> None:
        self.label = label
        self._limit = limit
        self._max_length = max_length
        self._seen: set[str] = set()
        self._overflow = overflow

    def admit(self, value: str) -> str:
        if value in self._seen:
            return value
        value = visible_direction_controls(value)
        if value in self._seen:
            return value
        if len(value) > self._max_length:
            self._overflow(
                self.label,
                "label %s: values longer than service.cardinality.max_value_length (%d) are reported as 'other', "
                "as %r was",
                self.label,
                self._max_length,
                value,
            )
            return OVERFLOW_VALUE
        if len(self._seen) >= self._limit:
            self._overflow(
                self.label,
                "label %s reached its cap of %d distinct values (service.cardinality.limits): new values are "
                "reported as 'other', as %r was",
                self.label,
                self._limit,
                value,
            )
            return OVERFLOW_VALUE
        self._seen.add(value)
        return value

    def peek(self, value: str) -> str:
        """As `admit`, without counting or logging an overflow: for views that repeat what series reported."""
        value = visible_direction_controls(value)
        if value in self._seen:
            return value
        if len(value) > self._max_length or len(self._seen) >= self._limit:
            return OVERFLOW_VALUE
        self._seen.add(value)
        return value


class SeriesBudget:
    """Prometheus series left for the whole registry; spent only when a series is created."""

    __slots__ = ("limit", "remaining")

    def __init__(self, series: int) -> None:
        self.limit = self.remaining = series


def series_cost(buckets: tuple[float, ...], kind: type) -> int:
    """Exposition samples of one series: a histogram has a bucket per bound and +Inf, a sum and a count."""
    return len(buckets) + 3 if kind is Histogram else 1


S = TypeVar("S", Counter, Gauge, Histogram)


@dataclass(frozen=True)
class FamilySnapshot:
    """One metric's series as they were at a moment: (labels, value) for counters and gauges,
    (labels, (bucket counts, sum, exemplars)) for histograms."""

    name: str
    documentation: str
    labelnames: tuple[str, ...]
    kind: type
    buckets: tuple[float, ...]
    series: list[tuple[tuple[str, ...], object]]


class Family(Generic[S]):
    """One metric: a name, help text, label names and its series."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        kind: type[S],
        limiters: Sequence[LabelLimiter | None],
        buckets: tuple[float, ...] = (),
        max_series: int | None = None,
        overflow: Overflow | None = None,
        budget: SeriesBudget | None = None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.kind = kind
        self.buckets = buckets
        self._limiters = tuple(limiters)
        self._max_series = max_series
        self._overflow = overflow
        self._budget = budget
        self._cost = series_cost(self.buckets, kind)
        self._by_labels: dict[tuple[str, ...], S] = {}
        # Raw label tuples that passed the caps unchanged; overflowing tuples are not cached so a
        # hostile sender cannot grow this map past the caps.
        self._by_raw: dict[tuple[str, ...], S] = {}

    def series(self, labels: tuple[str, ...]) -> S:
        found = self._by_raw.get(labels)
        if found is not None:
            return found
        admitted = tuple(
            value if limiter is None else limiter.admit(value)
            for value, limiter in zip(labels, self._limiters, strict=True)
        )
        series = self._by_labels.get(admitted)
        if series is None and self._max_series is not None:
            # The product of the per-label caps can still be large: cap the family, then the registry.
            if len(self._by_labels) >= self._max_series:
                cap = METRIC_CAP_LABEL
                message = "metric %s reached service.cardinality.max_series_per_metric (%d): new series go to 'other'"
                limit = self._max_series
            elif self._budget is not None and self._budget.remaining < self._cost:
                cap = BUDGET_LABEL
                message = "metric %s: all metrics reached service.cardinality.max_series (%d): new series go to 'other'"
                limit = self._budget.limit
            else:
                cap = None
            if cap is not None:
                assert self._overflow is not None
                self._overflow(cap, message, self.name, limit)
                admitted = (OVERFLOW_VALUE,) * len(admitted)
                series = self._by_labels.get(admitted)
        if series is None:
            # A metric's series of 'other' is always created, so the budget can be exceeded by at most
            # one series per metric.
            series = Histogram(self.buckets) if self.kind is Histogram else self.kind()
            self._by_labels[admitted] = series
            if self._budget is not None:
                self._budget.remaining -= self._cost
        if admitted == labels:
            self._by_raw[labels] = series
        return series

    def cached(self, labels: tuple[str, ...]) -> S | None:
        """The series of `labels` when they passed every cap unchanged (a caller may keep it), else None."""
        return self._by_raw.get(labels)

    def items(self) -> Iterable[tuple[tuple[str, ...], S]]:
        return self._by_labels.items()

    def snapshot(self) -> FamilySnapshot:
        """A copy of every series' value, taken at once on the event loop and safe to format elsewhere."""
        if self.kind is Histogram:
            series: list = [
                (labels, (tuple(h.counts), h.sum, tuple(h.exemplars) if h.exemplars else None))
                for labels, h in self._by_labels.items()
            ]
        else:
            series = [(labels, s.value) for labels, s in self._by_labels.items()]
        return FamilySnapshot(self.name, self.documentation, self.labelnames, self.kind, self.buckets, series)


class Registry:
    """All metric families of one service instance; every component records into it."""

    def __init__(self, cardinality: CardinalityConfig | None = None) -> None:
        self.cardinality = cardinality or CardinalityConfig()
        self.families: list[Family] = []
        self._by_name: dict[str, Family] = {}
        # Called before each exposition, for gauges computed from state (runs in flight).
        self.before_collect: list[Callable[[], Awaitable[None] | None]] = []
        self._limiters: dict[str, LabelLimiter] = {}
        self.budget = SeriesBudget(self.cardinality.max_series)
        overflow = catalogue.metric("agentopz_label_overflow_total")
        self.label_overflow: Family[Counter] = Family(
            overflow.name, overflow.help, overflow.labels, Counter, (None,), budget=self.budget
        )
        self.families.append(self.label_overflow)
        self._overflow = Overflow(self.label_overflow)

    def _limiter(self, label: str) -> LabelLimiter:
        limiter = self._limiters.get(label)
        if limiter is None:
            limit = self.cardinality.limits.get(label, self.cardinality.default_limit)
            limiter = LabelLimiter(label, limit, self.cardinality.max_value_length, self._overflow)
            self._limiters[label] = limiter
        return limiter

    def label_value(self, label: str, value: str) -> str:
        """`value` as the metrics report it under `label` (itself, or `other` past the cap), for views
        that must agree with the metrics; a value no series has used yet is admitted while there is room."""
        return self._limiter(label).peek(value)

    def _family(
        self, name: str, doc: str, labels: Sequence[str], kind: type[S], bounded: bool, buckets=()
    ) -> Family[S]:
        existing = self._by_name.get(name)
        if existing is not None:  # components of several pipelines share one family
            return existing
        limiters = [self._limiter(label) if bounded else None for label in labels]
        max_series = self.cardinality.max_series_per_metric if bounded and labels else None
        family = Family(name, doc, labels, kind, limiters, buckets, max_series, self._overflow, self.budget)
        self.families.append(family)
        self._by_name[name] = family
        return family

    async def refresh(self) -> None:
        """Recompute the gauges that come from state; a hook may be a coroutine that yields to the
        event loop between slices of a long computation."""
        for hook in self.before_collect:
            result = hook()
            if inspect.isawaitable(result):
                await result

    def snapshot(self) -> list[FamilySnapshot]:
        """Every family's values at this moment."""
        return [family.snapshot() for family in self.families]

    def metric(self, name: str, buckets: Sequence[float] = ()) -> Family:
        """The family declared as `name` in the catalogue, with the type, help and labels declared there;
        a histogram's `buckets` come from the caller (some from config)."""
        spec = catalogue.metric(name)
        if spec.type == "histogram":
            if not buckets:
                raise ValueError(f"histogram {name} needs buckets")
            return self.histogram(name, spec.help, spec.labels, buckets, bounded=spec.capped)
        kind = self.counter if spec.type == "counter" else self.gauge
        return kind(name, spec.help, spec.labels, bounded=spec.capped)

    def counter(self, name: str, doc: str, labels: Sequence[str] = (), bounded: bool = True) -> Family[Counter]:
        return self._family(name, doc, labels, Counter, bounded)

    def gauge(self, name: str, doc: str, labels: Sequence[str] = (), bounded: bool = True) -> Family[Gauge]:
        return self._family(name, doc, labels, Gauge, bounded)

    def histogram(
        self, name: str, doc: str, labels: Sequence[str], buckets: Iterable[float], bounded: bool = True
    ) -> Family[Histogram]:
        return self._family(name, doc, labels, Histogram, bounded, tuple(sorted(set(buckets))))
