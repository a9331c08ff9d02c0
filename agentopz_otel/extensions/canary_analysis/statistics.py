"""Sequential tests comparing a candidate prompt version with the baseline it replaces (pure, no I/O).

Runs are grouped by when they started (intervals), and each test compares the candidate with the
runs the baseline started in the same intervals; only where there are none (the 100% step) does the
failure-share test compare with the baseline's rate known from before. Every test here keeps its
false-alarm bound however often it is looked at:

- Failure shares: a one-sided Wald SPRT on the odds ratio, conditional on the failures seen in each
  interval (Fisher's noncentral hypergeometric law). Under H0 (odds ratio <= tolerance) the product of
  the per-interval likelihood ratios is a martingale, so by Ville's inequality it ever reaches 1/alpha
  with probability <= alpha, over unlimited looks. Conditioning on each interval's failures makes the
  test immune to anything that moves both versions at once (a provider outage, a traffic burst).
- Cost and duration (skewed, no good parametric model): a one-sided Mann-Whitney U test of the
  candidate against the baseline scaled by the tolerance (scipy.stats.mannwhitneyu), at looks spaced
  by candidate run count (each `growth` times the last), look j spending alpha / (j (j + 1)); these
  sum to alpha, so the family-wise false-alarm rate over unlimited looks is <= alpha.

Every statistic is evidence against H0 in nats, compared with a threshold: a guard fails when the
statistic reaches it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, NamedTuple

Verdict = Literal["pass", "fail", "inconclusive"]
PASS: Verdict = "pass"
FAIL: Verdict = "fail"
INCONCLUSIVE: Verdict = "inconclusive"


@dataclass(frozen=True)
class GuardResult:
    guard: str
    verdict: Verdict
    statistic: float
    threshold: float
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "statistic": round(self.statistic, 4),
            "threshold": round(self.threshold, 4),
            "evidence": self.evidence,
        }


def _log_binomial(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _log_sum_exp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(value - top) for value in values))


def interval_log_likelihood_ratio(
    candidate_runs: int,
    candidate_failures: int,
    baseline_runs: int,
    baseline_failures: int,
    odds_ratio_h0: float,
    odds_ratio_h1: float,
) -> float:
    """ln P(candidate failures | the interval's margins; H1) / P(same; H0).

    Given both versions' runs and the interval's total failures, the candidate's share of them follows
    Fisher's noncentral hypergeometric law with the odds ratio as its parameter; the baseline's failure
    rate drops out. An interval without failures, or without runs of one version, carries no evidence.
    """
    failures = candidate_failures + baseline_failures
    if failures == 0 or candidate_runs == 0 or baseline_runs == 0:
        return 0.0
    lowest = max(0, failures - baseline_runs)
    highest = min(failures, candidate_runs)
    possible = range(lowest, highest + 1)
    terms = [(j, _log_binomial(candidate_runs, j) + _log_binomial(baseline_runs, failures - j)) for j in possible]
    log_h0, log_h1 = math.log(odds_ratio_h0), math.log(odds_ratio_h1)
    normalizer_h0 = _log_sum_exp([term + j * log_h0 for j, term in terms])
    normalizer_h1 = _log_sum_exp([term + j * log_h1 for j, term in terms])
    return candidate_failures * (log_h1 - log_h0) + normalizer_h0 - normalizer_h1


def one_sample_log_likelihood_ratio(
    runs: int, failures: int, baseline_rate: float, odds_ratio_h0: float, odds_ratio_h1: float
) -> float:
    """ln P(failures | H1) / P(failures | H0) for binomial runs whose failure odds are the baseline's
    times the odds ratio: the test at a step with no concurrent baseline, against its known rate."""
    if runs == 0 or not 0 < baseline_rate < 1:
        return 0.0
    odds = baseline_rate / (1 - baseline_rate)
    rate_h0 = odds * odds_ratio_h0 / (1 + odds * odds_ratio_h0)
    rate_h1 = odds * odds_ratio_h1 / (1 + odds * odds_ratio_h1)
    return failures * math.log(rate_h1 / rate_h0) + (runs - failures) * math.log((1 - rate_h1) / (1 - rate_h0))


def rate_upper_bound(failures: int, runs: int, delta: float) -> float:
    """The one-sided 1 - delta Clopper-Pearson upper bound of a failure rate (1 without runs): the
    baseline rate the one-sample test assumes, so that it is too low with probability at most delta."""
    if runs <= 0:
        return 1.0
    if failures >= runs:
        return 1.0
    from scipy.stats import beta

    return float(beta.ppf(1 - delta, failures + 1, runs - failures))


@dataclass(frozen=True)
class RateEvidence:
    """What a failure-share SPRT has accumulated over a rollout."""

    log_likelihood_ratio: float = 0.0
    candidate_runs: int = 0
    candidate_failures: int = 0
    baseline_runs: int = 0
    baseline_failures: int = 0
    # Frozen at the first interval without concurrent baseline runs (the 100% step): the baseline
    # rate's upper bound from its runs before, which the one-sample test compares with from then on.
    baseline_rate_upper: float | None = None
    known_baseline_runs: int = 0

    def add(
        self,
        candidate_runs: int,
        candidate_failures: int,
        baseline_runs: int,
        baseline_failures: int,
        tolerance: float,
        detect_ratio: float,
        delta: float = 0.0,
    ) -> RateEvidence:
        """This evidence plus one interval's counts (the runs started in it, by version).

        With concurrent baseline runs: the conditional two-sample ratio. Without (the candidate serves
        everything): the one-sample ratio against the baseline's rate known so far, bounded above at
        1 - `delta`. Both have mean at most 1 under H0, so their product stays a supermartingale.
        """
        upper = self.baseline_rate_upper
        if baseline_runs > 0:
            log_ratio = interval_log_likelihood_ratio(
                candidate_runs, candidate_failures, baseline_runs, baseline_failures, tolerance, detect_ratio
            )
        elif candidate_runs > 0:
            if upper is None:
                upper = rate_upper_bound(self.baseline_failures, self.baseline_runs, delta)
            log_ratio = one_sample_log_likelihood_ratio(
                candidate_runs, candidate_failures, upper, tolerance, detect_ratio
            )
        else:
            log_ratio = 0.0
        return RateEvidence(
            self.log_likelihood_ratio + log_ratio,
            self.candidate_runs + candidate_runs,
            self.candidate_failures + candidate_failures,
            self.baseline_runs + baseline_runs,
            self.baseline_failures + baseline_failures,
            upper,
            self.known_baseline_runs + (candidate_runs if baseline_runs == 0 else 0),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rate_verdict(
    guard: str, evidence: RateEvidence, alpha: float, beta: float, min_runs: int, design_effect: float = 1.0
) -> GuardResult:
    """Wald's boundaries: fail at ln(1/alpha) (Ville's bound, valid however long the test runs), pass at
    ln(beta / (1 - alpha)) or when neither version failed at all, inconclusive between them or before
    `min_runs` candidate runs. The statistic is the accumulated log likelihood ratio divided by the
    design effect: runs of one targeting key that fail together are that much less evidence."""
    fail_at = math.log(1 / alpha)
    pass_at = math.log(beta / (1 - alpha))
    statistic = evidence.log_likelihood_ratio / design_effect
    details = {
        "candidate_runs": evidence.candidate_runs,
        "candidate_failures": evidence.candidate_failures,
        "baseline_runs": evidence.baseline_runs,
        "baseline_failures": evidence.baseline_failures,
        "candidate_failure_share": _share(evidence.candidate_failures, evidence.candidate_runs),
        "baseline_failure_share": _share(evidence.baseline_failures, evidence.baseline_runs),
        "pass_below": round(pass_at, 4),
        "alpha": round(alpha, 6),
        "min_runs": min_runs,
        "design_effect": round(design_effect, 4),
    }
    if evidence.baseline_rate_upper is not None:
        details["baseline_rate_upper"] = round(evidence.baseline_rate_upper, 6)
        details["candidate_runs_against_known_rate"] = evidence.known_baseline_runs
    if evidence.candidate_runs < min_runs:
        verdict = INCONCLUSIVE
    elif statistic >= fail_at:
        verdict = FAIL
    elif statistic <= pass_at or evidence.candidate_failures + evidence.baseline_failures == 0:
        verdict = PASS
    else:
        verdict = INCONCLUSIVE
    return GuardResult(guard, verdict, statistic, fail_at, details)


# The baseline-shift detector: a CUSUM of the baseline's concurrent runs against its history, for a
# rise of the guard's detect_ratio in the odds. At this many nats the baseline counts as shifted (a
# provider outage); it is capped at twice that so that it falls back within a few intervals once the
# shift ends, instead of paying back everything an outage of hours piled up.
SHIFT_THRESHOLD = math.log(20)
SHIFT_CAP = 2 * SHIFT_THRESHOLD
# An interval's one-sample evidence counts once the baseline's runs of this many later intervals have
# been seen unshifted too: a shift that starts mid-interval shows in the baseline's runs an interval or
# two after it already made the candidate's runs fail.
HISTORY_DELAY = 2


class IntervalCounts(NamedTuple):
    candidate_runs: int
    candidate_failures: int
    baseline_runs: int
    baseline_failures: int


@dataclass(frozen=True)
class HistoryEvidence:
    """The one-sample SPRT of the candidate against the baseline's pre-rollout history, beside the
    concurrent two-sample test, with the veto that keeps a shift hitting both versions out of it.

    The history (the baseline's runs and failures over `history_hours` before the rollout) gives the
    baseline rate's one-sided Clopper-Pearson upper bound `rate_upper` (too low with probability at
    most the delta it was taken at). Each interval's candidate runs add the binomial likelihood ratio
    of odds `detect_ratio` against `tolerance` times that rate. Each interval's concurrent baseline
    runs move `shift`, a capped CUSUM of the same ratio against the history's own rate: while it is at
    SHIFT_THRESHOLD or more, the baseline itself has moved and the interval's candidate evidence (and
    that of the HISTORY_DELAY intervals before, still pending) is dropped. Which intervals count
    depends only on the baseline's runs, independent of the candidate's, so under H0 with a
    stationary baseline the counted ratios still form a product of mean-at-most-1 factors: Ville's
    bound holds for the committed statistic.
    """

    history_runs: int = 0
    history_failures: int = 0
    rate: float = 0.0  # the history's failure share
    rate_upper: float = 1.0
    log_likelihood_ratio: float = 0.0  # committed
    candidate_runs: int = 0  # committed
    candidate_failures: int = 0
    pending: tuple[tuple[float, int, int], ...] = ()  # (log ratio, runs, failures) awaiting the veto
    shift: float = 0.0
    vetoed_runs: int = 0
    vetoed_intervals: int = 0

    @classmethod
    def of(cls, runs: int, failures: int, delta: float) -> HistoryEvidence:
        """A test against a history of `runs` runs with `failures` failures, its rate bounded at 1 - delta."""
        return cls(runs, failures, failures / runs if runs else 0.0, rate_upper_bound(failures, runs, delta))

    def add(self, counts: IntervalCounts, tolerance: float, detect_ratio: float) -> HistoryEvidence:
        """This evidence plus one interval's runs by version."""
        candidate_runs, candidate_failures, baseline_runs, baseline_failures = counts
        # A history without one failure (a rare outcome such as budget_exceeded) has rate 0, against
        # which the baseline's ratio is undefined and the shift would never move: half a failure stands
        # in, so a baseline that starts showing the outcome is a shift, not the candidate's evidence.
        rate = self.rate or 0.5 / (self.history_runs + 1)
        baseline_ratio = one_sample_log_likelihood_ratio(baseline_runs, baseline_failures, rate, 1.0, detect_ratio)
        shift = min(SHIFT_CAP, max(0.0, self.shift + baseline_ratio))
        if shift >= SHIFT_THRESHOLD:
            dropped = (*self.pending, (0.0, candidate_runs, candidate_failures))
            return replace(
                self,
                pending=(),
                shift=shift,
                vetoed_runs=self.vetoed_runs + sum(runs for _, runs, _ in dropped),
                vetoed_intervals=self.vetoed_intervals + len(dropped),
            )
        log_ratio = one_sample_log_likelihood_ratio(
            candidate_runs, candidate_failures, self.rate_upper, tolerance, detect_ratio
        )
        pending = (*self.pending, (log_ratio, candidate_runs, candidate_failures))
        committed, pending = pending[: max(0, len(pending) - HISTORY_DELAY)], pending[-HISTORY_DELAY:]
        return replace(
            self,
            log_likelihood_ratio=self.log_likelihood_ratio + sum(ratio for ratio, _, _ in committed),
            candidate_runs=self.candidate_runs + sum(runs for _, runs, _ in committed),
            candidate_failures=self.candidate_failures + sum(failed for _, _, failed in committed),
            pending=pending,
            shift=shift,
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "pending": [list(item) for item in self.pending]}

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> HistoryEvidence:
        return cls(**{**body, "pending": tuple(tuple(item) for item in body["pending"])})


def history_verdict(
    evidence: HistoryEvidence, alpha: float, beta: float, min_runs: int, design_effect: float = 1.0
) -> tuple[Verdict, dict[str, Any]]:
    """Wald's boundaries on the committed one-sample evidence (divided by the design effect): fail at
    ln(1/alpha), pass at ln(beta / (1 - alpha)), inconclusive before `min_runs` committed candidate runs."""
    statistic = evidence.log_likelihood_ratio / design_effect
    if evidence.candidate_runs < min_runs:
        verdict = INCONCLUSIVE
    elif statistic >= math.log(1 / alpha):
        verdict = FAIL
    elif statistic <= math.log(beta / (1 - alpha)):
        verdict = PASS
    else:
        verdict = INCONCLUSIVE
    details = {
        "verdict": verdict,
        "statistic": round(statistic, 4),
        "threshold": round(math.log(1 / alpha), 4),
        "alpha": round(alpha, 6),
        "history_runs": evidence.history_runs,
        "history_failure_share": round(evidence.rate, 6),
        "history_rate_upper": round(evidence.rate_upper, 6),
        "candidate_runs": evidence.candidate_runs,
        "candidate_failures": evidence.candidate_failures,
        "pending_runs": sum(runs for _, runs, _ in evidence.pending),
        "baseline_shift": round(evidence.shift, 4),
        "baseline_shifted": evidence.shift >= SHIFT_THRESHOLD,
        "vetoed_runs": evidence.vetoed_runs,
    }
    return verdict, details


@dataclass
class _Group:
    """One version's clusters: sums the ANOVA needs, kept up to date as clusters grow."""

    runs: int = 0
    failures: int = 0
    clusters: int = 0
    squared_sizes: int = 0  # sum of n_i^2
    between: float = 0.0  # sum of y_i^2 / n_i


@dataclass
class KeyClusters:
    """Runs and failures per targeting key of each version, for the design effect of the failure test.

    A key's runs (a user, a conversation) share their outcomes, so they carry less evidence than as
    many independent runs. Runs without a key are clusters of one. At most `max_keys` keys are
    tracked per rollout: past it, runs of keys not seen yet are left out of the estimate, which then
    rests on the first `max_keys` keys (a sample of the rollout's keys; every run still counts in the
    test itself).
    """

    max_keys: int = 10_000
    keys: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # version -> key -> [runs, failures]
    groups: dict[str, _Group] = field(default_factory=dict)
    tracked: int = 0

    def add(self, version: str, keyed: dict[str, tuple[int, int]], runs: int, failures: int) -> None:
        """One interval of a version: (runs, failures) per key, and its runs and failures in all."""
        group = self.groups.setdefault(version, _Group())
        known = self.keys.setdefault(version, {})
        keyed_runs = keyed_failures = 0
        for key, (n, y) in keyed.items():
            if n <= 0:
                continue
            counts = known.get(key)
            if counts is None:
                if self.tracked >= self.max_keys:
                    continue
                self.tracked += 1
                counts = known[key] = [0, 0]
                group.clusters += 1
            else:
                group.squared_sizes -= counts[0] * counts[0]
                group.between -= counts[1] * counts[1] / counts[0]
            counts[0] += n
            counts[1] += y
            group.squared_sizes += counts[0] * counts[0]
            group.between += counts[1] * counts[1] / counts[0]
            keyed_runs += n
            keyed_failures += y
        # The interval's runs without a key (or past the cap: left out entirely).
        alone = runs - sum(n for n, _ in keyed.values())
        lone_failures = max(0, min(alone, failures - sum(y for _, y in keyed.values())))
        group.runs += keyed_runs + alone
        group.failures += keyed_failures + lone_failures
        group.clusters += alone
        group.squared_sizes += alone
        group.between += lone_failures

    def correlation(self) -> tuple[float, float]:
        """The within-key correlation of failures and its standard error: one-way ANOVA with each
        version's own mean (so a difference between the versions is not mistaken for clustering),
        clipped to [0, 1], and Swiger's large-sample standard error for unequal cluster sizes.
        (0, 0) while no key has repeated; (0, 1) while keys repeated but only one per version."""
        groups = [group for group in self.groups.values() if group.runs > 0]
        runs = sum(group.runs for group in groups)
        clusters = sum(group.clusters for group in groups)
        between_df, within_df = clusters - len(groups), runs - clusters
        if within_df <= 0:
            return 0.0, 0.0
        if between_df <= 0:
            return 0.0, 1.0
        between = sum(group.between - group.failures**2 / group.runs for group in groups) / between_df
        within = sum(group.failures - group.between for group in groups) / within_df
        size = (runs - sum(group.squared_sizes / group.runs for group in groups)) / between_df
        denominator = between + (size - 1) * within
        rho = min(1.0, max(0.0, (between - within) / denominator)) if denominator > 0 else 0.0
        variance = 2 * (runs - 1) * (1 - rho) ** 2 * (1 + (size - 1) * rho) ** 2 / (size**2 * within_df * between_df)
        return rho, math.sqrt(variance)

    def design_effect(self, z: float = 0.0, scale: float = 1.0) -> float:
        """1 + (sum n_i^2 / N x `scale` - 1) x the correlation's upper bound (the estimate plus `z`
        standard errors, at most 1): the variance inflation of the failure share over clusters of
        unequal sizes; 1 for independent runs. With few repeating keys the bound is wide: conservative.
        `scale` > 1 when these keys are a replica's share of the fleet's runs: a key's runs spread
        over the replicas are that many times more than the replica sees of it."""
        runs = sum(group.runs for group in self.groups.values())
        if runs == 0:
            return 1.0
        mean_size = sum(group.squared_sizes for group in self.groups.values()) / runs * scale
        rho, error = self.correlation()
        return 1.0 + (mean_size - 1.0) * min(1.0, rho + z * error)

    def to_dict(self) -> dict[str, Any]:
        return {"max_keys": self.max_keys, "keys": self.keys, "groups": {v: asdict(g) for v, g in self.groups.items()}}

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> KeyClusters:
        keys = {version: dict(kept) for version, kept in body["keys"].items()}
        groups = {version: _Group(**group) for version, group in body["groups"].items()}
        return cls(body["max_keys"], keys, groups, sum(len(kept) for kept in keys.values()))


def score_log_likelihood_ratio(value: float, mean: float, sd: float, shift: float, higher_is_better: bool) -> float:
    """ln N(value; mean - shift sd, sd) / N(value; mean, sd) (the worse direction for `shift`): one run's
    evidence that the candidate's score is `shift` baseline standard deviations worse."""
    z = (mean - value) / sd if higher_is_better else (value - mean) / sd
    return shift * z - shift * shift / 2


@dataclass(frozen=True)
class ScoreEvidence:
    """A per-run score's SPRT against the baseline: the baseline's mean and variance (Welford) from
    its runs so far, each candidate score weighed against them once the baseline has `min_baseline`
    scores (the candidate's earlier ones wait, at most `max_pending`)."""

    log_likelihood_ratio: float = 0.0
    candidate_runs: int = 0
    candidate_sum: float = 0.0
    baseline_runs: int = 0
    baseline_mean: float = 0.0
    baseline_m2: float = 0.0
    pending: tuple[float, ...] = ()

    @property
    def baseline_sd(self) -> float:
        return math.sqrt(self.baseline_m2 / (self.baseline_runs - 1)) if self.baseline_runs > 1 else 0.0

    def add(
        self,
        candidate: Sequence[float],
        baseline: Sequence[float],
        shift: float,
        higher_is_better: bool,
        min_baseline: int,
        max_pending: int,
    ) -> ScoreEvidence:
        runs, mean, m2 = self.baseline_runs, self.baseline_mean, self.baseline_m2
        for value in baseline:
            runs += 1
            delta = value - mean
            mean += delta / runs
            m2 += delta * (value - mean)
        waiting = (*self.pending, *candidate)
        sd = math.sqrt(m2 / (runs - 1)) if runs > 1 else 0.0
        log_ratio, counted, total = self.log_likelihood_ratio, self.candidate_runs, self.candidate_sum
        if runs >= min_baseline and sd > 0:
            for value in waiting:
                log_ratio += score_log_likelihood_ratio(value, mean, sd, shift, higher_is_better)
                counted += 1
                total += value
            waiting = ()
        return ScoreEvidence(log_ratio, counted, total, runs, mean, m2, waiting[-max_pending:] if waiting else ())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "pending": list(self.pending)}

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> ScoreEvidence:
        return cls(**{**body, "pending": tuple(body["pending"])})


def score_verdict(guard: str, evidence: ScoreEvidence, alpha: float, beta: float, min_runs: int) -> GuardResult:
    """Wald's boundaries as for the failure share: fail at ln(1/alpha), pass at ln(beta / (1 - alpha))."""
    fail_at = math.log(1 / alpha)
    pass_at = math.log(beta / (1 - alpha))
    statistic = evidence.log_likelihood_ratio
    details = {
        "candidate_runs": evidence.candidate_runs,
        "candidate_mean": round(evidence.candidate_sum / evidence.candidate_runs, 6)
        if evidence.candidate_runs
        else None,
        "baseline_runs": evidence.baseline_runs,
        "baseline_mean": round(evidence.baseline_mean, 6) if evidence.baseline_runs else None,
        "baseline_sd": round(evidence.baseline_sd, 6),
        "waiting": len(evidence.pending),
        "pass_below": round(pass_at, 4),
        "alpha": round(alpha, 6),
        "min_runs": min_runs,
    }
    if evidence.candidate_runs < min_runs:
        verdict = INCONCLUSIVE
    elif statistic >= fail_at:
        verdict = FAIL
    elif statistic <= pass_at:
        verdict = PASS
    else:
        verdict = INCONCLUSIVE
    return GuardResult(guard, verdict, statistic, fail_at, details)


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


@dataclass(frozen=True)
class RankLooks:
    """The rank test's position in its look schedule."""

    looks: int = 0
    last: GuardResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"looks": self.looks, "last": None if self.last is None else asdict(self.last)}

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> RankLooks:
        last = body.get("last")
        return cls(body["looks"], None if last is None else GuardResult(**last))


def look_due(looks_done: int, candidate_runs_seen: int, min_runs: int, growth: float) -> bool:
    """Look j + 1 is due once the candidate has min_runs * growth^j runs."""
    return candidate_runs_seen >= math.ceil(min_runs * growth**looks_done - 1e-9)


def look_alpha(look: int, alpha: float) -> float:
    """Alpha spent at look `look` (1-based): alpha / (j (j + 1)), which sums to alpha over all looks."""
    return alpha / (look * (look + 1))


def rank_test(
    guard: str,
    state: RankLooks,
    candidate: Sequence[float],
    baseline: Sequence[float],
    candidate_runs_seen: int,
    tolerance: float,
    alpha: float,
    min_runs: int,
    growth: float,
) -> RankLooks:
    """One-sided Mann-Whitney U of `candidate` against `baseline` scaled by `tolerance`, when a look is due.

    `candidate` and `baseline` are the (bounded) samples of the rollout's period; `candidate_runs_seen`
    counts every candidate run, so looks keep coming once the samples reach their bound. A failed look
    stays failed; between looks the last verdict holds.
    """
    if state.last is not None and state.last.verdict == FAIL:
        return state
    enough = len(candidate) >= min_runs and len(baseline) >= min_runs
    if not enough or not look_due(state.looks, candidate_runs_seen, min_runs, growth):
        if state.last is not None:
            return state
        evidence = {"candidate_runs": len(candidate), "baseline_runs": len(baseline), "min_runs": min_runs}
        return RankLooks(0, GuardResult(guard, INCONCLUSIVE, 0.0, math.log(1 / look_alpha(1, alpha)), evidence))
    # scipy.stats takes a second of CPU to import: not at service start (the extension imports it on a
    # thread before its first look at a rollout).
    from scipy.stats import mannwhitneyu

    look = state.looks + 1
    spent = look_alpha(look, alpha)
    scaled = [value * tolerance for value in baseline]
    p_value = float(mannwhitneyu(candidate, scaled, alternative="greater").pvalue)
    statistic = -math.log(max(p_value, 1e-300))
    threshold = -math.log(spent)
    candidate_median = _median(candidate)
    baseline_median = _median(baseline)
    evidence = {
        "candidate_runs": len(candidate),
        "baseline_runs": len(baseline),
        "candidate_median": candidate_median,
        "baseline_median": baseline_median,
        "median_ratio": round(candidate_median / baseline_median, 4) if baseline_median > 0 else None,
        "p_value": p_value,
        "look": look,
        "alpha_spent": spent,
        "tolerance": tolerance,
        "min_runs": min_runs,
    }
    verdict = FAIL if statistic >= threshold else PASS
    return RankLooks(look, GuardResult(guard, verdict, statistic, threshold, evidence))


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def hard_limit_verdict(
    guard: str, evidence: RateEvidence, counts: dict[str, int], alpha: float, max_runs: int | None
) -> GuardResult:
    """Fails when the candidate shows the counted outcomes more often than the baseline (the relative
    SPRT reaches ln(1/alpha)) or more than `max_runs` times in all (the absolute cap); else passes."""
    total = sum(counts.values())
    fail_at = math.log(1 / alpha)
    details: dict[str, Any] = {
        "candidate_runs_by_outcome": counts,
        "candidate_runs": evidence.candidate_runs,
        "baseline_runs": evidence.baseline_runs,
        "baseline_outcome_runs": evidence.baseline_failures,
        "max_runs": max_runs,
    }
    over_cap = max_runs is not None and total > max_runs
    verdict = FAIL if over_cap or evidence.log_likelihood_ratio >= fail_at else PASS
    return GuardResult(guard, verdict, evidence.log_likelihood_ratio, fail_at, details)
