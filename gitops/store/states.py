"""The controller's memory of Jobs, CronJobs and autoscalers, as the store keeps it.

Each is a frozen dataclass stored as JSON in `workload_states`, keyed by its object;
`STATE_TYPES` says which dataclass a kind's JSON decodes to. `state_event` turns a change
a person cares about (a Job that completed or failed, an autoscaler that scaled, a CronJob
that started a run) into an event for the event log.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gitops.model import CronState, JobState, ScaleState

STATE_TYPES: dict[str, type[Any]] = {
    "Job": JobState,
    "CronJob": CronState,
    "HorizontalPodAutoscaler": ScaleState,
}


def state_event(kind: str, before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[str, str] | None:
    """(reason, message) for the event log when `before` -> `after` is worth telling."""
    if kind == "Job":
        condition = after.get("condition", "")
        if condition and condition != before.get("condition", ""):
            return (condition, str(after.get("reason", "")))
    if kind == "CronJob" and after.get("last_schedule") != before.get("last_schedule"):
        return ("Scheduled", str(after.get("reason", "")))
    if kind == "HorizontalPodAutoscaler" and after.get("replicas") != before.get("replicas") and before:
        return ("Scaled", str(after.get("reason", "")))
    return None
