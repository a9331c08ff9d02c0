"""The service's YAML config: receivers, processors, exporters, extensions and service.pipelines.

Loading validates every component's section against its factory's typed config, so a bad file fails
before anything starts, with the path of the bad key and the reason.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import models_json_schema

from .bearer import TokenConfig
from .components import ENTRY_POINT_GROUPS, ComponentKind, Factory, component_type, factories
from .httpserver import HttpServerConfig
from .metrics import CardinalityConfig
from .netaddr import Endpoint
from .registry import builtin_factories

_ENV_REFERENCE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the key and the reason."""


class AdminConfig(HttpServerConfig):
    endpoint: Endpoint = "127.0.0.1:9464"
    # The admin bearer token for mutations; without one, mutations are accepted from loopback only.
    auth: TokenConfig | None = None
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="host names (besides IP addresses and localhost) requests may name in their Host header, "
        "e.g. the name Prometheus scrapes or a reverse proxy forwards; every other name is refused",
    )


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    receivers: list[str] = Field(min_length=1)
    processors: list[str] = Field(default_factory=list)
    exporters: list[str] = Field(min_length=1)


class ServiceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    admin: AdminConfig = Field(default_factory=AdminConfig)
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    cardinality: CardinalityConfig = Field(default_factory=CardinalityConfig)
    shutdown_timeout_seconds: float = Field(default=10.0, gt=0)
    # Extensions to start, by id; each must be defined under `extensions:`.
    extensions: list[str] = Field(default_factory=list)
    pipelines: dict[str, PipelineConfig] = Field(min_length=1)


class RawConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    receivers: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    processors: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    exporters: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    extensions: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    service: ServiceConfig


@dataclass(frozen=True)
class ComponentConfig:
    id: str
    factory: Factory
    config: BaseModel


@dataclass(frozen=True)
class Config:
    service: ServiceConfig
    receivers: dict[str, ComponentConfig]
    processors: dict[str, ComponentConfig]
    exporters: dict[str, ComponentConfig]
    extensions: dict[str, ComponentConfig]


def _format_error(prefix: str, error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        parts = [prefix] if prefix else []
        path = ".".join([*parts, *(str(part) for part in item["loc"])])
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{path}: {message}")
    return "\n".join(lines)


def _substitute_env(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        value = os.environ.get(match.group(1), match.group(2))
        if value is None:
            raise ConfigError(f"environment variable {match.group(1)} is not set (referenced as {match.group(0)})")
        return value

    return _ENV_REFERENCE.sub(replace, text)


def _build_components(
    kind: ComponentKind, section: str, raw: dict[str, dict[str, Any] | None]
) -> dict[str, ComponentConfig]:
    known = factories(builtin_factories())
    types = sorted(t for k, t in known if k == kind)
    built = {}
    for component_id, body in raw.items():
        factory = known.get((kind, component_type(component_id)))
        if factory is None:
            hint = difflib.get_close_matches(component_type(component_id), types, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(
                f"{section}.{component_id}: unknown {kind} type{suggestion}; known types: {', '.join(types)}"
            )
        try:
            config = factory.config_type.model_validate(body or {})
        except ValidationError as error:
            raise ConfigError(_format_error(f"{section}.{component_id}", error)) from None
        built[component_id] = ComponentConfig(component_id, factory, config)
    return built


def _check_extensions(config: Config) -> None:
    listed = config.service.extensions
    for extension_id in listed:
        if extension_id not in config.extensions:
            raise ConfigError(f"service.extensions: {extension_id!r} is not defined under extensions:")
    if len(set(listed)) != len(listed):
        raise ConfigError("service.extensions: an extension is listed twice")


def _check_pipelines(config: Config) -> None:
    for name, pipeline in config.service.pipelines.items():
        where = f"service.pipelines.{name}"
        if component_type(name) != "traces":
            raise ConfigError(f"{where}: only 'traces' pipelines exist (name them traces or traces/<name>)")
        for section, ids, defined in (
            ("receivers", pipeline.receivers, config.receivers),
            ("processors", pipeline.processors, config.processors),
            ("exporters", pipeline.exporters, config.exporters),
        ):
            for component_id in ids:
                if component_id not in defined:
                    raise ConfigError(f"{where}.{section}: {component_id!r} is not defined under {section}:")
            if len(set(ids)) != len(ids):
                raise ConfigError(f"{where}.{section}: a component is listed twice")
        earlier: set[str] = set()
        for component_id in pipeline.processors:
            for required in config.processors[component_id].factory.requires:
                if required not in earlier:
                    raise ConfigError(f"{where}.processors: {component_id!r} needs a {required!r} processor before it")
            earlier.add(component_type(component_id))


def parse_config(text: str, source: str = "<config>") -> Config:
    try:
        document = yaml.safe_load(_substitute_env(text))
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML: {error}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with receivers, exporters and service")
    try:
        raw = RawConfig.model_validate(document)
    except ValidationError as error:
        raise ConfigError(_format_error("", error)) from None
    config = Config(
        service=raw.service,
        receivers=_build_components("receiver", "receivers", raw.receivers),
        processors=_build_components("processor", "processors", raw.processors),
        exporters=_build_components("exporter", "exporters", raw.exporters),
        extensions=_build_components("extension", "extensions", raw.extensions),
    )
    _check_extensions(config)
    _check_pipelines(config)
    return config


def load_config(path: str | Path | None) -> Config:
    """Load `path`, or the built-in default config when no path is given."""
    if path is None:
        text = resources.files("agentopz_otel").joinpath("default_config.yaml").read_text()
        return parse_config(text, "built-in default config")
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    return parse_config(text, str(path))


def config_schema() -> dict[str, Any]:
    """The config file's JSON Schema, from the same pydantic models that validate it, for editors.

    A section's keys are component ids (`type` or `type/name`) of the known factories, built-in and from
    entry points. `${env:...}` references are substituted before validation, so a value written as one
    is a string to the schema.
    """
    known = factories(builtin_factories())
    models = [(ServiceConfig, "validation")] + [(f.config_type, "validation") for f in known.values()]
    refs, top = models_json_schema(models, ref_template="#/$defs/{model}")
    properties: dict[str, Any] = {}
    for kind in ENTRY_POINT_GROUPS:
        patterns = {
            f"^{re.escape(factory.type)}(/[^/]+)?$": {
                "anyOf": [refs[(factory.config_type, "validation")], {"type": "null"}]
            }
            for (factory_kind, _), factory in sorted(known.items())
            if factory_kind == kind
        }
        properties[f"{kind}s"] = {"type": "object", "patternProperties": patterns, "additionalProperties": False}
    properties["service"] = refs[(ServiceConfig, "validation")]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "agentopz-otel config",
        "type": "object",
        "properties": properties,
        "required": ["service"],
        "additionalProperties": False,
        "$defs": top.get("$defs", {}),
    }


def config_schema_json() -> str:
    return json.dumps(config_schema(), indent=2, sort_keys=True) + "\n"
