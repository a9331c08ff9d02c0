"""The `probes` extension: is each agent reachable, does it answer, and does the run it starts finish?

Per agent, an HTTP request on a schedule (as Prometheus' blackbox exporter probes a web service)
with a W3C `traceparent` carrying a fresh trace id. The answer is checked (status, a JSONPath, a
regex); when the agent is instrumented, the run the probe started arrives with that trace id through
the runs processor, with its checks and outcome, and the probe waits for it (`run_wait_seconds`).
Results go to `agentopz_probe*` metrics by agent and a bounded `reason`; runs that probes started are
counted apart (`agentopz_probe_runs_total`) so alerts can tell organic traffic from probes.
"""

from .config import ProbeConfig, ProbesConfig
from .core import REASONS
from .extension import FACTORY, ProbesExtension, ProbeStatus

__all__ = ["FACTORY", "REASONS", "ProbeConfig", "ProbeStatus", "ProbesConfig", "ProbesExtension"]
