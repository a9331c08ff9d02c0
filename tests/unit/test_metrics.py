"""The metric families without Prometheus: label caps, the series budget, snapshots."""

from __future__ import annotations

from agentopz_otel.metrics import (
    BUDGET_LABEL,
    OVERFLOW_VALUE,
    CardinalityConfig,
    Counter,
    Family,
    LabelLimiter,
    Overflow,
    Registry,
)


def overflow_counts(registry: Registry) -> dict[str, float]:
    return {labels[0]: series.value for labels, series in registry.label_overflow.items()}


def test_a_label_admits_exactly_its_cap_of_distinct_values():
    overflow: Family[Counter] = Family("overflow_total", "", ("label",), Counter, (None,))
    limiter = LabelLimiter("agent", limit=3, max_length=10, overflow=Overflow(overflow))
    assert [limiter.admit(value) for value in ("a", "b", "c")] == ["a", "b", "c"]
    assert not list(overflow.items())
    assert limiter.admit("d") == OVERFLOW_VALUE
    assert {labels: s.value for labels, s in overflow.items()} == {("agent",): 1}
    # Values admitted before the cap keep their own series; the one past it stays out.
    assert [limiter.admit(value) for value in ("a", "c", "d")] == ["a", "c", OVERFLOW_VALUE]
    assert {labels: s.value for labels, s in overflow.items()} == {("agent",): 2}


def test_a_label_value_of_exactly_the_maximum_length_is_kept():
    overflow: Family[Counter] = Family("overflow_total", "", ("label",), Counter, (None,))
    limiter = LabelLimiter("model", limit=10, max_length=8, overflow=Overflow(overflow))
    assert limiter.admit("x" * 8) == "x" * 8
    assert limiter.admit("y" * 9) == OVERFLOW_VALUE
    assert {labels: s.value for labels, s in overflow.items()} == {("model",): 1}


def test_the_series_budget_admits_exactly_its_limit():
    registry = Registry(CardinalityConfig(max_series=5))
    family = registry.counter("x_total", "x", ("agent",))
    for index in range(5):
        family.series((f"a{index}",)).value += 1
    assert overflow_counts(registry) == {}
    family.series(("a5",)).value += 1
    family.series(("a6",)).value += 1
    assert {labels: s.value for labels, s in family.items()} == {
        **{(f"a{index}",): 1 for index in range(5)},
        (OVERFLOW_VALUE,): 2,
    }
    # The overflow counter's own series is charged too, but never refused.
    assert overflow_counts(registry) == {BUDGET_LABEL: 2}


def test_the_series_budget_is_shared_and_counts_every_histogram_sample():
    buckets = (0.1, 1.0)  # a series exposes 2 buckets, +Inf, _sum and _count: 5 samples
    registry = Registry(CardinalityConfig(max_series=11))
    histogram = registry.histogram("h_seconds", "h", ("agent",), buckets)
    counter = registry.counter("c_total", "c", ("agent",))
    histogram.series(("a",)).observe(0.5)
    histogram.series(("b",)).observe(0.5)
    counter.series(("a",)).value += 1  # 11 of 11 spent
    histogram.series(("c",)).observe(0.5)
    counter.series(("b",)).value += 1
    assert [labels for labels, _ in histogram.items()] == [("a",), ("b",), (OVERFLOW_VALUE,)]
    assert [labels for labels, _ in counter.items()] == [("a",), (OVERFLOW_VALUE,)]
    assert overflow_counts(registry) == {BUDGET_LABEL: 2}


def test_one_series_short_of_a_histogram_goes_to_other():
    registry = Registry(CardinalityConfig(max_series=9))
    histogram = registry.histogram("h_seconds", "h", ("agent",), (0.1, 1.0))
    histogram.series(("a",)).observe(0.5)  # 4 left, a series needs 5
    histogram.series(("b",)).observe(0.5)
    assert [labels for labels, _ in histogram.items()] == [("a",), (OVERFLOW_VALUE,)]


def test_unlabelled_and_unbounded_metrics_are_never_refused():
    registry = Registry(CardinalityConfig(max_series=1))
    registry.counter("x_total", "x", ("agent",)).series(("a",)).value += 1
    registry.counter("late_total", "late").series(()).value += 1
    registry.counter("evicted_total", "evicted", ("reason",), bounded=False).series(("capacity",)).value += 1
    assert overflow_counts(registry) == {}


def test_a_snapshot_keeps_the_values_of_its_moment():
    registry = Registry()
    counter = registry.counter("c_total", "c", ("agent",))
    histogram = registry.histogram("h_seconds", "h", ("agent",), (1.0,))
    counter.series(("a",)).value += 1
    histogram.series(("a",)).observe_with_exemplar(0.5, "ab" * 16)
    snapshot = {family.name: family.series for family in registry.snapshot()}
    counter.series(("a",)).value += 1
    counter.series(("b",)).value += 1
    histogram.series(("a",)).observe(2.0)
    assert snapshot["c_total"] == [(("a",), 1.0)]
    assert snapshot["h_seconds"] == [(("a",), ((1, 0), 0.5, (("ab" * 16, 0.5), None)))]
