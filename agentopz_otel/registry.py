"""The built-in components, by kind. Third-party ones come from entry points (see `components`)."""

from __future__ import annotations

from .components import Factory


def builtin_factories() -> list[Factory]:
    from .exporters.otlp import FACTORY as otlp_exporter
    from .exporters.prometheus import FACTORY as prometheus
    from .extensions.alertmanager_webhook import FACTORY as alertmanager_webhook
    from .extensions.canary_analysis import FACTORY as canary_analysis
    from .extensions.console import FACTORY as console
    from .extensions.probes import FACTORY as probes
    from .extensions.rollouts import FACTORY as rollouts
    from .extensions.storage import FACTORY as storage
    from .processors.cost import FACTORY as cost
    from .processors.normalize import FACTORY as normalize
    from .processors.prompt_version import FACTORY as prompt_version
    from .processors.runs import FACTORY as runs
    from .receivers.otlp import FACTORY as otlp_receiver

    return [
        otlp_receiver,
        normalize,
        cost,
        prompt_version,
        runs,
        prometheus,
        otlp_exporter,
        storage,
        rollouts,
        canary_analysis,
        alertmanager_webhook,
        probes,
        console,
    ]
