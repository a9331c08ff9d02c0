"""The runs processor's settings (`processors: runs:` in the config file)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..quality import QualityConfig
from .outcome import RunLimit

RUN_DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
RUN_COST_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50)


class RunLogConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(default=None, description="JSON lines file; '-' for stdout; unset: no file")
    otlp: bool = Field(default=True, description="also send each record as an OTLP log record to OTLP exporters")


class CheckpointConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    storage: str = Field(description="id of a storage extension")
    interval_seconds: float = Field(
        default=30.0,
        gt=0,
        description="a save starts this often, or when the one before is done if that is later (it takes at most "
        "a tenth of the event loop: about 10 s for 100,000 open runs); a crash loses the run assembly since",
    )


class RunsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_seconds: float = Field(default=5.0, gt=0, description="quiet time after the root arrived")
    root_wait_seconds: float = Field(
        default=30.0, gt=0, description="how long a finished agent span waits for a parent that may be an agent"
    )
    abandon_after_seconds: float = Field(
        default=300.0, gt=0, description="quiet time after which a run whose root never came is abandoned"
    )
    late_window_seconds: float = Field(default=300.0, ge=0, description="how long finished runs are remembered")
    max_open_runs: int = Field(default=100_000, ge=1)
    max_held_root_bytes: int = Field(
        default=128 * 1024 * 1024,
        ge=0,
        description="run root spans held until their run finishes, in serialized bytes; past it a root goes on "
        "at once, without the run's totals",
    )
    max_memory_bytes: int = Field(
        default=256 * 2**20,
        ge=2**20,
        description="estimated memory of everything held for runs (open runs with their held calls, root "
        "spans and content; finished traces kept for late spans; remembered span ids; evaluations and content "
        "log records waiting for their run; remembered response ids); past it the oldest finished traces are "
        "forgotten, then the oldest content and evaluations waiting for their run (counted in "
        "agentopz_evaluations_unmatched_total), then the oldest open runs evicted (agentopz_evicted_runs_total"
        '{reason="memory"})',
    )
    max_spans_per_trace: int = Field(
        default=10_000, ge=1, description="span ids remembered per trace; spans past it skip run assembly"
    )
    max_remembered_span_ids: int = Field(
        default=500_000,
        ge=0,
        description="span ids kept so a span received again (an exporter's retry) is not counted twice, over "
        "open traces and finished ones in their late window; past it the oldest finished traces are forgotten",
    )
    tick_seconds: float = Field(default=0.5, gt=0)
    duration_buckets: list[float] = Field(default_factory=lambda: list(RUN_DURATION_BUCKETS))
    cost_buckets: list[float] = Field(default_factory=lambda: list(RUN_COST_BUCKETS))
    limits: list[RunLimit] = Field(default_factory=list)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    run_log: RunLogConfig = Field(default_factory=RunLogConfig)
    slo_file: str | None = Field(
        default=None, description="SLO file whose latency and cost thresholds are added as bucket boundaries"
    )
    checkpoint: CheckpointConfig | None = Field(
        default=None, description="keep open runs across restarts in a storage extension; unset: a restart loses them"
    )

    @model_validator(mode="after")
    def _slo_buckets(self) -> RunsConfig:
        if self.slo_file:
            from ...slo import cost_thresholds, latency_thresholds, load_spec

            spec = load_spec(self.slo_file)
            self.duration_buckets = sorted({*self.duration_buckets, *latency_thresholds(spec)})
            self.cost_buckets = sorted({*self.cost_buckets, *cost_thresholds(spec)})
        return self
