"""`gitops down` removes a node's containers and the emptyDir volumes of its pods, and keeps
its claims' volumes (they hold data; the control plane decides when a claim is gone)."""

from __future__ import annotations

import uuid

import pytest

from gitops.cli import main
from gitops.model import Container, NodeName, ObjectKey, Pod, PodName, PodSpec, Volume
from tests.conftest import docker_available, iptables_available, require

pytestmark = pytest.mark.docker


def test_down_removes_emptydir_volumes_and_keeps_claim_volumes(capsys: pytest.CaptureFixture[str]) -> None:
    require(docker_available(), "a running Docker engine")
    require(iptables_available(), "iptables (as root)")
    from gitops.agents.runtime import DockerRuntime

    runtime = DockerRuntime()
    node = NodeName("down-" + uuid.uuid4().hex[:6])
    spec = PodSpec(
        containers=(Container("main", "x:1"),),
        volumes=(Volume("cache"), Volume("data", claim="default/data")),
    )
    pod = Pod("default", PodName("p-" + node), ObjectKey("Deployment", "default", "p"), "h", spec, node=node)
    scratch = runtime.ensure_volume(node, pod, spec.volumes[0])
    claim = runtime.ensure_volume(node, pod, spec.volumes[1])
    prefix = "GD" + uuid.uuid4().hex[:4].upper()
    try:
        assert (
            main(["down", "--node", node, "--chain-prefix", prefix, "--service-cidr", "10.250.99.0/24"]) == 0
        )
        assert "1 emptyDir volume(s)" in capsys.readouterr().out
        names = {v.name for v in runtime.client.volumes.list(filters={"label": f"gitops.node={node}"})}
        assert names == {claim} and scratch not in names
    finally:
        for volume in runtime.client.volumes.list(filters={"label": f"gitops.node={node}"}):
            volume.remove(force=True)
