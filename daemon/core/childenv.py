"""The environment of child processes (probe runs, the amdsmi preflight)."""

from __future__ import annotations

from collections.abc import Mapping

NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def child_environment(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without systemd's notify variables: only the main process speaks to systemd."""
    return {k: v for k, v in env.items() if k not in NOTIFY_VARIABLES}
