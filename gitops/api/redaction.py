"""Keeping Secret values out of everything the read-only surface shows.

Pod specs hold resolved Secret values (a pod's node needs them), and free text such as a
container's last log lines or a probe's failure reason can echo them. What the JSON API and
the status page show goes through here: pods are summarised without env values or file
contents, and free text has every Secret value (decoded, four characters or longer)
replaced by `[redacted]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gitops.model import Manifest, Pod
from gitops.planner.podspec import config_values


def secret_values(desired: Sequence[Manifest]) -> list[str]:
    """Every Secret value (decoded), longest first, for redacting free text such as logs."""
    values = set()
    for m in desired:
        if m.key.kind == "Secret":
            for raw in config_values(m).values():
                text = raw.decode(errors="replace").strip()
                if len(text) >= 4:
                    values.add(text)
    return sorted(values, key=len, reverse=True)


def redact(text: str, secrets_: Sequence[str]) -> str:
    for value in secrets_:
        text = text.replace(value, "[redacted]")
    return text


def pod_summary(pod: Pod, secrets_: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "id": pod.id,
        "namespace": pod.namespace,
        "name": pod.name,
        "owner": str(pod.owner),
        "image": pod.spec.image,
        "template_hash": pod.template_hash,
        "node": pod.node,
        "phase": pod.phase,
        "ready": pod.ready,
        "reason": pod.reason,
        "pod_ip": pod.pod_ip,
        "host_ports": [list(h) for h in pod.host_ports],
        "restarts": pod.restarts,
        "exit_code": pod.exit_code,
        "created_at": pod.created_at,
        "last_log": redact(pod.last_log, secrets_),
    }
