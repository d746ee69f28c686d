"""edgekit-agent: the on-device daemon of edgekit.

It also owns the telemetry protocol (``edgekit_agent.protocol``) and the root of edgekit's
exception tree (``edgekit_agent.errors``), so the central package and the device share one
definition of each.
"""

__version__ = "0.1.0"
