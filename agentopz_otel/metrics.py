"""Plain, lock-free metric families with bounded label values.

Everything runs on one asyncio event loop, so a series is a slot incremented in place: no locks and
no per-observation allocation once a series exists. Label values pass a per-label cardinality cap
(new values past it become `other`, counted in `agentopz_label_overflow_total{label}`).
Exposition goes through prometheus_client's collector interface (exporters/prometheus.py).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

OVERFLOW_VALUE = "other"

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


class LabelLimiter:
    """Admits up to `limit` distinct values of one label, then maps new ones to `other`."""

    def __init__(self, label: str, limit: int, max_length: int, overflow: Family[Counter]) -> None:
        self.label = label
        self._limit = limit
        self._max_length = max_length
        self._seen: set[str] = set()
        self._overflow = overflow

    def admit(self, value: str) -> str:
        admitted = self.peek(value)
        if admitted != value:
            self._overflow.series((self.label,)).value += 1
        return admitted

    def peek(self, value: str) -> str:
        """As `admit`, without counting an overflow: for views that repeat what series already reported."""
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit or len(value) > self._max_length:
            return OVERFLOW_VALUE
        self._seen.add(value)
        return value


S = TypeVar("S", Counter, Gauge, Histogram)


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
        overflow: Family[Counter] | None = None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.kind = kind
        self.buckets = buckets
        self._limiters = tuple(limiters)
        self._max_series = max_series
        self._overflow = overflow
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
        if series is None and self._max_series is not None and len(self._by_labels) >= self._max_series:
            # The product of the per-label caps can still be large: cap the family as a whole.
            assert self._overflow is not None
            self._overflow.series(("__series__",)).value += 1
            admitted = (OVERFLOW_VALUE,) * len(admitted)
            series = self._by_labels.get(admitted)
        if series is None:
            series = Histogram(self.buckets) if self.kind is Histogram else self.kind()
            self._by_labels[admitted] = series
        if admitted == labels:
            self._by_raw[labels] = series
        return series

    def items(self) -> Iterable[tuple[tuple[str, ...], S]]:
        return self._by_labels.items()


class Registry:
    """All metric families of one service instance; every component records into it."""

    def __init__(self, cardinality: CardinalityConfig | None = None) -> None:
        self.cardinality = cardinality or CardinalityConfig()
        self.families: list[Family] = []
        self._by_name: dict[str, Family] = {}
        # Called before each exposition, for gauges computed from state (runs in flight).
        self.before_collect: list[Callable[[], None]] = []
        self._limiters: dict[str, LabelLimiter] = {}
        self.label_overflow: Family[Counter] = Family(
            "agentopz_label_overflow_total",
            "Label values replaced by 'other' because a label (or, as __series__, a metric) reached its cap.",
            ("label",),
            Counter,
            (None,),
        )
        self.families.append(self.label_overflow)

    def _limiter(self, label: str) -> LabelLimiter:
        limiter = self._limiters.get(label)
        if limiter is None:
            limit = self.cardinality.limits.get(label, self.cardinality.default_limit)
            limiter = LabelLimiter(label, limit, self.cardinality.max_value_length, self.label_overflow)
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
        family = Family(name, doc, labels, kind, limiters, buckets, max_series, self.label_overflow)
        self.families.append(family)
        self._by_name[name] = family
        return family

    def counter(self, name: str, doc: str, labels: Sequence[str] = (), bounded: bool = True) -> Family[Counter]:
        return self._family(name, doc, labels, Counter, bounded)

    def gauge(self, name: str, doc: str, labels: Sequence[str] = (), bounded: bool = True) -> Family[Gauge]:
        return self._family(name, doc, labels, Gauge, bounded)

    def histogram(
        self, name: str, doc: str, labels: Sequence[str], buckets: Iterable[float], bounded: bool = True
    ) -> Family[Histogram]:
        return self._family(name, doc, labels, Histogram, bounded, tuple(sorted(set(buckets))))
