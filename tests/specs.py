"""`pod_spec(...)`: a one-container `PodSpec` from the fields of either, for tests."""

from __future__ import annotations

import dataclasses
from typing import Any

from gitops.model import Container, PodSpec

_CONTAINER_FIELDS = {f.name for f in dataclasses.fields(Container)} - {"restart_policy"}  # the pod's


def pod_spec(image: str = "web:1", **fields: Any) -> PodSpec:
    """A pod of one container named `container_name` (default "main"); container fields
    and pod fields may be given side by side, as they were when pods had one container."""
    if "containers" in fields:
        return PodSpec(**fields)
    name = fields.pop("container_name", "main")
    own = {k: fields.pop(k) for k in list(fields) if k in _CONTAINER_FIELDS}
    return PodSpec(containers=(Container(name=name, image=image, **own),), **fields)
