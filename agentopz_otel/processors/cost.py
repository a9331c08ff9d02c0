"""Cost: the USD price of each LLM call.

Prices come from config overrides first, then the `genai-prices` catalogue (by provider and model, or by
model alone when the span names no provider the catalogue knows), then a cost the span reports itself.
A (provider, model) pair is resolved once and cached as per-token rates, because a catalogue lookup
costs far more than the arithmetic. A call nobody can price is `unknown`: counted in
agentopz_llm_unpriced_calls_total, logged once per model (rate limited, names clipped), and never
summed as $0.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal

from genai_prices import Usage, data_snapshot
from genai_prices.data_snapshot import find_provider_by_id
from genai_prices.types import ModelPrice, TieredPrices
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .. import catalogue
from ..bounded_log import BoundedLog
from ..components import Context, Factory
from ..metrics import Counter, Family
from ..spans import LLM, Batch, SpanView

# agentopz.cost.source values. catalog_model_only: priced from the price catalogue by the model name
# alone, the span named no provider the price catalogue knows.
SOURCE_CATALOG, SOURCE_CATALOG_MODEL_ONLY, SOURCE_OVERRIDE, SOURCE_REPORTED, SOURCE_UNKNOWN = catalogue.enum(
    "cost_source"
)

log = logging.getLogger("agentopz_otel.cost")


class PriceOverride(BaseModel):
    """A price for models matching `model` (a glob) or `model_regex`, in USD per million tokens."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    model_regex: str | None = None
    provider: str | None = None
    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_read: float | None = Field(default=None, ge=0, description="default: the input price")
    cache_write: float | None = Field(default=None, ge=0, description="default: the input price")
    reasoning: float | None = Field(default=None, ge=0, description="default: the output price")

    @model_validator(mode="after")
    def _one_pattern(self) -> PriceOverride:
        if (self.model is None) == (self.model_regex is None):
            raise ValueError("give exactly one of model (a glob) or model_regex")
        if self.model_regex is not None:
            try:
                re.compile(self.model_regex)
            except re.error as error:
                raise ValueError(f"model_regex is not a valid regular expression: {error}") from None
        return self

    def matches(self, provider: str, model: str) -> bool:
        if self.provider is not None and self.provider != provider:
            return False
        if self.model_regex is not None:
            return re.fullmatch(self.model_regex, model) is not None
        return fnmatch.fnmatchcase(model, self.model or "")


class CostConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    catalog: bool = Field(default=True, description="price from the bundled genai-prices catalogue")
    overrides: list[PriceOverride] = Field(default_factory=list)
    max_cached_models: int = Field(
        default=10_000, ge=1, description="priced names kept, and as many unpriced ones; the oldest go first"
    )
    max_lookups_per_second: int = Field(
        default=200,
        ge=1,
        description="catalogue lookups of new names; past it a new name is looked up when it comes again",
    )


@dataclass(frozen=True)
class Rates:
    """USD per token; a call's cost is linear in its token counts."""

    input: float
    output: float
    cache_read: float
    cache_write: float
    reasoning: float
    source: str

    def price(self, view: SpanView) -> float:
        cache_read = view.cache_read_tokens or 0
        cache_write = view.cache_write_tokens or 0
        reasoning = view.reasoning_tokens or 0
        return (
            ((view.input_tokens or 0) - cache_read - cache_write) * self.input
            + cache_read * self.cache_read
            + cache_write * self.cache_write
            + ((view.output_tokens or 0) - reasoning) * self.output
            + reasoning * self.reasoning
        )


@dataclass(frozen=True)
class TieredRates:
    """A catalogue price that depends on the request size: computed by genai-prices per call."""

    model_price: ModelPrice
    source: str = SOURCE_CATALOG

    def price(self, view: SpanView) -> float:
        usage = Usage(
            input_tokens=view.input_tokens or 0,
            output_tokens=view.output_tokens or 0,
            cache_read_tokens=view.cache_read_tokens or 0,
            cache_write_tokens=view.cache_write_tokens or 0,
            output_reasoning_tokens=view.reasoning_tokens or 0,
        )
        return float(self.model_price.calc_price(usage)["total_price"])


Pricer = Rates | TieredRates

_MILLION = 1_000_000
MAX_CACHED_NAME_CHARS = 512
# genai-prices memoises every lookup by model name, without a bound. The caches here make that
# redundant, so it is emptied whenever it passes this size rather than grow with hostile names.
CATALOGUE_MEMO_LIMIT = 1_000


def _override_rates(override: PriceOverride) -> Rates:
    return Rates(
        input=override.input / _MILLION,
        output=override.output / _MILLION,
        cache_read=(override.input if override.cache_read is None else override.cache_read) / _MILLION,
        cache_write=(override.input if override.cache_write is None else override.cache_write) / _MILLION,
        reasoning=(override.output if override.reasoning is None else override.reasoning) / _MILLION,
        source=SOURCE_OVERRIDE,
    )


def catalog_pricer(provider: str, model: str) -> Pricer | None:
    """Rates from genai-prices for (provider, model), or None when the catalogue does not know it.

    A provider the catalogue knows is only ever priced with its own prices; any other provider value
    (none, a self-hosted server, a framework's name) is priced by the model name alone."""
    snapshot = data_snapshot.get_snapshot()
    known_provider = bool(provider) and find_provider_by_id(snapshot.providers, provider) is not None
    try:
        _, model_info = snapshot.find_provider_model(model, None, provider if known_provider else None, None)
    except LookupError:
        return None
    source = SOURCE_CATALOG if known_provider else SOURCE_CATALOG_MODEL_ONLY
    model_price = model_info.get_prices(datetime.now(tz=timezone.utc))
    if any(isinstance(value, TieredPrices) for value in model_price.__dict__.values()):
        return TieredRates(model_price, source)

    # The catalogue's prices are linear here, so the price of one million tokens of each kind gives
    # the per-token rate with genai-prices' own rules (e.g. cache reads default to the input price).
    def per_token(**usage: int) -> float:
        return float(model_price.calc_price(Usage(**usage))["total_price"] / Decimal(_MILLION))

    return Rates(
        input=per_token(input_tokens=_MILLION),
        output=per_token(output_tokens=_MILLION),
        cache_read=per_token(input_tokens=_MILLION, cache_read_tokens=_MILLION),
        cache_write=per_token(input_tokens=_MILLION, cache_write_tokens=_MILLION),
        reasoning=per_token(output_tokens=_MILLION, output_reasoning_tokens=_MILLION),
        source=source,
    )


def _bound_catalogue_memo() -> None:
    snapshot = data_snapshot.get_snapshot()
    for name in ("_lookup_cache", "_provider_cache", "_provider_misses"):
        memo = getattr(snapshot, name, None)
        if memo is not None and len(memo) > CATALOGUE_MEMO_LIMIT:
            memo.clear()


class CostProcessor:
    def __init__(self, config: CostConfig, unpriced: Family[Counter]) -> None:
        self._config = config
        self._overrides = [(override, _override_rates(override)) for override in config.overrides]
        # Priced and unpriced names are cached apart, so a stream of unknown names cannot push the
        # known ones out; either answer is one dict lookup.
        self._pricers: dict[tuple[str, str], Pricer] = {}
        self._unknown: dict[tuple[str, str], None] = {}
        # A lookup costs ~0.3 ms: a stream of distinct names would take the CPU. Past the rate a new
        # name waits until it comes again (hostile names rarely do; real ones always do).
        self._deferred: dict[int, None] = {}
        self._lookups_left = config.max_lookups_per_second
        self._lookup_window_end = 0.0
        self._unpriced = unpriced
        self._warnings = BoundedLog(log)
        self._rate_warning = BoundedLog(log)
        # The pipeline turns this off when no exporter reads the spans (service.Pipeline).
        self.enrich_spans = True

    def pricer(self, provider: str, model: str) -> Pricer | None:
        key = (provider, model)
        pricer = self._pricers.get(key)
        if pricer is not None or key in self._unknown:
            return pricer
        # A name too long to cache is no model the catalogue knows: only the overrides are tried.
        cacheable = len(model) + len(provider) <= MAX_CACHED_NAME_CHARS
        pricer = next((rates for override, rates in self._overrides if override.matches(provider, model)), None)
        if pricer is None and self._config.catalog and model and cacheable:
            if not self._may_look_up(key):
                return None
            pricer = catalog_pricer(provider, model)
            _bound_catalogue_memo()
        if pricer is None:
            self._warnings.warning(
                key,
                "no price for provider=%r model=%r: its calls are counted in agentopz_llm_unpriced_calls_total; "
                "add a cost.overrides entry to price it",
                provider,
                model,
            )
        if cacheable:
            cache = self._unknown if pricer is None else self._pricers
            if len(cache) >= self._config.max_cached_models:
                cache.pop(next(iter(cache)))
            cache[key] = pricer
        return pricer

    def _may_look_up(self, key: tuple[str, str]) -> bool:
        now = time.monotonic()
        if now >= self._lookup_window_end:
            self._lookup_window_end = now + 1.0
            self._lookups_left = self._config.max_lookups_per_second
        if self._lookups_left > 0:
            self._lookups_left -= 1
            return True
        digest = hash(key)
        if digest in self._deferred:
            del self._deferred[digest]
            return True  # it came again: looked up whatever the rate
        if len(self._deferred) >= self._config.max_cached_models:
            self._deferred.pop(next(iter(self._deferred)))
        self._deferred[digest] = None
        self._rate_warning.warning(
            "max_lookups_per_second",
            "more than cost.max_lookups_per_second (%d) new model names a second: a new name's first call is "
            "left unpriced and it is looked up when it comes again",
            self._config.max_lookups_per_second,
        )
        return False

    def process(self, batch: Batch) -> None:
        for view in batch.views:
            if view.kind == LLM:
                self.price(view)

    def price(self, view: SpanView) -> None:
        pricer = self.pricer(view.provider, view.model)
        if pricer is not None:
            view.cost = pricer.price(view)
            view.cost_source = pricer.source
        elif view.reported_cost is not None:
            view.cost = view.reported_cost
            view.cost_source = SOURCE_REPORTED
        else:
            view.cost_source = SOURCE_UNKNOWN
            self._unpriced.series((view.provider, view.model)).value += 1
        if self.enrich_spans and not view.enriched:
            if view.cost is not None:
                view.set_attribute("agentopz.cost.usd", view.cost)
            view.set_attribute("agentopz.cost.source", view.cost_source)


def _create(component_id: str, config: CostConfig, context: Context) -> CostProcessor:
    unpriced = context.metrics.metric("agentopz_llm_unpriced_calls_total")
    return CostProcessor(config, unpriced)


FACTORY = Factory(type="cost", kind="processor", config_type=CostConfig, create=_create, requires=("normalize",))
