"""Quality: a verdict (pass, fail, unknown) for every finished run, from configured checks and from
evaluations that evaluators report (gen_ai.evaluation.result events and log records, OpenInference
annotations).

Checks are selected per agent and service (glob patterns). Content checks need the run's final
output; when content capture is off they give `unknown`, never `fail`. A check that raises is a
check error: counted, logged, and never a pass. Third-party checks are callables registered under
the `agentopz_otel.checks` entry point group (see `PluginCheck`).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..content import output_text
from ..records import CHECK_ERROR, FAIL, PASS, UNKNOWN, Evaluation

log = logging.getLogger("agentopz_otel.quality")

PLUGIN_GROUP = "agentopz_otel.checks"

DEFAULT_REFUSAL_PHRASES = (
    "i can't help with",
    "i cannot help with",
    "i can't assist",
    "i cannot assist",
    "i'm unable to",
    "i am unable to",
    "i'm not able to help",
    "i won't be able to",
    "i'm sorry, but i can't",
    "i'm sorry, but i cannot",
    "as an ai language model",
)
PASS_LABELS = frozenset({"pass", "passed", "correct", "true", "yes", "good", "relevant", "faithful", "factual"})
FAIL_LABELS = frozenset({"fail", "failed", "incorrect", "false", "no", "bad", "irrelevant", "hallucinated"})


@dataclass(frozen=True)
class CheckResult:
    verdict: str  # pass | fail | unknown
    reason: str = ""


@dataclass
class FinishedRun:
    """What a check sees: the run's totals plus its final output, if content was captured."""

    service: str
    agent: str
    prompt_version: str
    steps: int
    llm_calls: int
    tool_calls: int
    tool_errors: int
    cost_usd: float | None
    duration_seconds: float | None
    tools: frozenset[str]
    finish_reason: str | None
    output_source: tuple[str, str] | None = None
    _output: str | None = field(default=None, repr=False)

    @property
    def output(self) -> str | None:
        """The final output as text, or None when the run's content was not captured."""
        if self._output is None and self.output_source is not None:
            self._output = output_text(self.output_source)
        return self._output


# -- checks --------------------------------------------------------------------------------------


class _Check(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, description="the `check` label; default: the type")

    @property
    def label(self) -> str:
        return self.name or self.type  # type: ignore[attr-defined]


class JsonSchemaCheck(_Check):
    type: Literal["json_schema"]
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    schema_file: Path | None = None
    _validator: Any = None

    @model_validator(mode="after")
    def _compile(self) -> JsonSchemaCheck:
        if (self.schema_ is None) == (self.schema_file is None):
            raise ValueError("give exactly one of schema or schema_file")
        schema = self.schema_
        if self.schema_file is not None:
            try:
                schema = json.loads(self.schema_file.read_text())
            except (OSError, ValueError) as error:
                raise ValueError(f"cannot load schema_file {self.schema_file}: {error}") from None
        validator_type = jsonschema.validators.validator_for(schema)
        try:
            validator_type.check_schema(schema)
        except jsonschema.SchemaError as error:
            raise ValueError(f"not a valid JSON schema: {error.message}") from None
        self._validator = validator_type(schema)
        return self

    def evaluate(self, run: FinishedRun) -> CheckResult:
        output = run.output
        if output is None:
            return CheckResult(UNKNOWN, "no output captured")
        try:
            document = json.loads(output)
        except ValueError:
            return CheckResult(FAIL, "output is not JSON")
        if self._validator.is_valid(document):
            return CheckResult(PASS)
        return CheckResult(FAIL, jsonschema.exceptions.best_match(self._validator.iter_errors(document)).message)


class RegexCheck(_Check):
    type: Literal["regex"]
    pattern: str
    must_match: bool = True

    @model_validator(mode="after")
    def _compile(self) -> RegexCheck:
        try:
            re.compile(self.pattern)
        except re.error as error:
            raise ValueError(f"pattern is not a valid regular expression: {error}") from None
        return self

    def evaluate(self, run: FinishedRun) -> CheckResult:
        output = run.output
        if output is None:
            return CheckResult(UNKNOWN, "no output captured")
        found = re.search(self.pattern, output) is not None
        if found == self.must_match:
            return CheckResult(PASS)
        return CheckResult(FAIL, f"output {'does not match' if self.must_match else 'matches'} {self.pattern!r}")


class LengthCheck(_Check):
    type: Literal["not_empty", "min_length", "max_length"]
    value: int = Field(default=1, ge=0, description="characters (min_length, max_length)")

    def evaluate(self, run: FinishedRun) -> CheckResult:
        output = run.output
        if output is None:
            return CheckResult(UNKNOWN, "no output captured")
        length = len(output.strip()) if self.type == "not_empty" else len(output)
        if self.type == "max_length":
            ok = length <= self.value
        else:
            ok = length >= (1 if self.type == "not_empty" else self.value)
        return CheckResult(PASS) if ok else CheckResult(FAIL, f"output length {length}")


class RefusalCheck(_Check):
    type: Literal["refusal"]
    phrases: list[str] = Field(default_factory=lambda: list(DEFAULT_REFUSAL_PHRASES))

    def evaluate(self, run: FinishedRun) -> CheckResult:
        output = run.output
        if output is None:
            return CheckResult(UNKNOWN, "no output captured")
        text = output.lower()
        found = next((phrase for phrase in self.phrases if phrase.lower() in text), None)
        return CheckResult(FAIL, f"refusal: {found!r}") if found else CheckResult(PASS)


class FinishReasonCheck(_Check):
    type: Literal["finish_reason"]
    allowed: list[str] | None = None
    fail_on: list[str] = Field(default_factory=lambda: ["length", "content_filter", "max_tokens", "safety"])

    def evaluate(self, run: FinishedRun) -> CheckResult:
        reason = run.finish_reason
        if reason is None:
            return CheckResult(UNKNOWN, "no finish reason reported")
        normalized = reason.lower()
        if self.allowed is not None:
            ok = normalized in {r.lower() for r in self.allowed}
        else:
            ok = normalized not in {r.lower() for r in self.fail_on}
        return CheckResult(PASS) if ok else CheckResult(FAIL, f"finish reason {reason!r}")


# Threshold checks: check type -> the FinishedRun field it bounds.
_THRESHOLD_FIELDS = {
    "max_steps": "steps",
    "max_tool_calls": "tool_calls",
    "max_tool_errors": "tool_errors",
    "max_cost_usd": "cost_usd",
    "max_duration_seconds": "duration_seconds",
}


class ThresholdCheck(_Check):
    type: Literal["max_steps", "max_tool_calls", "max_tool_errors", "max_cost_usd", "max_duration_seconds"]
    value: float = Field(ge=0)

    def evaluate(self, run: FinishedRun) -> CheckResult:
        actual = getattr(run, _THRESHOLD_FIELDS[self.type])
        if actual is None:
            return CheckResult(UNKNOWN, f"{_THRESHOLD_FIELDS[self.type]} not known")
        if actual <= self.value:
            return CheckResult(PASS)
        return CheckResult(FAIL, f"{_THRESHOLD_FIELDS[self.type]} {actual:g} > {self.value:g}")


class ToolsCheck(_Check):
    type: Literal["required_tools", "forbidden_tools"]
    tools: list[str] = Field(min_length=1)

    def evaluate(self, run: FinishedRun) -> CheckResult:
        if self.type == "required_tools":
            missing = [tool for tool in self.tools if tool not in run.tools]
            return CheckResult(FAIL, f"not called: {', '.join(missing)}") if missing else CheckResult(PASS)
        called = [tool for tool in self.tools if tool in run.tools]
        return CheckResult(FAIL, f"called: {', '.join(called)}") if called else CheckResult(PASS)


class PluginCheck(_Check):
    """A check from another package: `plugin` names an entry point in the `agentopz_otel.checks` group.

    The entry point is a callable `(run: FinishedRun, options: dict) -> CheckResult`.
    """

    type: Literal["plugin"]
    plugin: str
    options: dict[str, Any] = Field(default_factory=dict)
    _function: Any = None

    @model_validator(mode="after")
    def _load(self) -> PluginCheck:
        found = [entry for entry in entry_points(group=PLUGIN_GROUP) if entry.name == self.plugin]
        if not found:
            raise ValueError(f"no entry point {self.plugin!r} in group {PLUGIN_GROUP} (is its package installed?)")
        self._function = found[0].load()
        if not callable(self._function):
            raise ValueError(f"entry point {self.plugin!r} is not callable")
        return self

    @property
    def label(self) -> str:
        return self.name or self.plugin

    def evaluate(self, run: FinishedRun) -> CheckResult:
        result = self._function(run, self.options)
        if not isinstance(result, CheckResult) or result.verdict not in (PASS, FAIL, UNKNOWN):
            raise TypeError(f"plugin {self.plugin!r} returned {result!r}, not a CheckResult with pass/fail/unknown")
        return result


Check = Annotated[
    JsonSchemaCheck
    | RegexCheck
    | LengthCheck
    | RefusalCheck
    | FinishReasonCheck
    | ThresholdCheck
    | ToolsCheck
    | PluginCheck,
    Field(discriminator="type"),
]


class CheckSet(BaseModel):
    """Checks for the runs of agents matching `agent` and `service` (glob patterns)."""

    model_config = ConfigDict(extra="forbid")

    agent: str = "*"
    service: str = "*"
    checks: list[Check] = Field(min_length=1)

    def matches(self, service: str, agent: str) -> bool:
        return fnmatch.fnmatchcase(agent, self.agent) and fnmatch.fnmatchcase(service, self.service)


class EvaluationRule(BaseModel):
    """How an evaluation's score or label becomes pass or fail."""

    model_config = ConfigDict(extra="forbid")

    min_score: float | None = None
    max_score: float | None = None
    pass_labels: list[str] | None = None
    fail_labels: list[str] | None = None


class QualityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checks: list[CheckSet] = Field(default_factory=list, description="every matching set applies")
    evaluations: dict[str, EvaluationRule] = Field(
        default_factory=dict, description="pass rules by evaluation name; '*' applies to the rest"
    )
    max_output_chars: int = Field(
        default=65_536, ge=1, description="longer outputs are not held (content checks give unknown)"
    )


def evaluation_verdict(evaluation: Evaluation, rules: dict[str, EvaluationRule]) -> str:
    rule = rules.get(evaluation.name) or rules.get("*")
    label = evaluation.label.strip().lower() if evaluation.label else None
    if rule is not None:
        if label is not None and rule.fail_labels is not None and label in {x.lower() for x in rule.fail_labels}:
            return FAIL
        if label is not None and rule.pass_labels is not None:
            return PASS if label in {x.lower() for x in rule.pass_labels} else FAIL
        score = evaluation.score
        if score is not None and math.isfinite(score) and (rule.min_score is not None or rule.max_score is not None):
            low_ok = rule.min_score is None or score >= rule.min_score
            high_ok = rule.max_score is None or score <= rule.max_score
            return PASS if low_ok and high_ok else FAIL
    if label in PASS_LABELS:
        return PASS
    if label in FAIL_LABELS:
        return FAIL
    return UNKNOWN


@dataclass
class Verdict:
    verdict: str
    failed_checks: list[str]
    results: list[tuple[str, str]]  # (check label, verdict) for agentopz_quality_checks_total


class QualityEvaluator:
    def __init__(self, config: QualityConfig) -> None:
        self.config = config

    def judge(self, run: FinishedRun, evaluations: Sequence[Evaluation]) -> Verdict:
        results: list[tuple[str, str]] = []
        failed: list[str] = []
        for check_set in self.config.checks:
            if not check_set.matches(run.service, run.agent):
                continue
            for check in check_set.checks:
                try:
                    result = check.evaluate(run)
                except Exception:
                    log.exception("quality check %r raised on a run of %s/%s", check.label, run.service, run.agent)
                    results.append((check.label, CHECK_ERROR))
                    continue
                results.append((check.label, result.verdict))
                if result.verdict == FAIL:
                    failed.append(check.label)
        for evaluation in evaluations:
            if evaluation_verdict(evaluation, self.config.evaluations) == FAIL:
                failed.append(f"evaluation:{evaluation.name}")
        verdicts = {verdict for _, verdict in results} | {
            evaluation_verdict(e, self.config.evaluations) for e in evaluations
        }
        if failed:
            overall = FAIL
        elif CHECK_ERROR in verdicts or UNKNOWN in verdicts or not verdicts:
            overall = UNKNOWN  # an errored or undecided check never makes a pass
        else:
            overall = PASS
        return Verdict(overall, failed, results)
