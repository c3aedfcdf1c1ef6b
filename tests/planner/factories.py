"""Small builders of desired manifests and observed pods for planner tests."""

from __future__ import annotations

import base64
from typing import Any

from gitops.model import Manifest, ObjectKey, SourceLocation, content_hash


def manifest(kind: str, name: str, namespace: str = "default", **body: Any) -> Manifest:
    api = "apps/v1" if kind == "Deployment" else "v1"
    doc = {"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": namespace}, **body}
    ns = "" if kind == "Namespace" else namespace
    return Manifest(ObjectKey(kind, ns, name), api, doc, SourceLocation(f"{name}.yaml"), content_hash(doc))


def deployment(
    name: str = "web",
    replicas: int = 3,
    image: str = "web:1",
    env: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    **container: Any,
) -> Manifest:
    labels = labels or {"app": name}
    return manifest(
        "Deployment",
        name,
        spec={
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "main", "image": image, "env": env or [], **container}]},
            },
        },
    )


def configmap(name: str, **data: str) -> Manifest:
    return manifest("ConfigMap", name, data=data)


def secret(name: str, **data: str) -> Manifest:
    return manifest("Secret", name, data={k: base64.b64encode(v.encode()).decode() for k, v in data.items()})


def service(name: str, selector: dict[str, str], port: int = 80, target: int | str = 8080) -> Manifest:
    return manifest(
        "Service",
        name,
        spec={"selector": selector, "ports": [{"name": "http", "port": port, "targetPort": target}]},
    )
