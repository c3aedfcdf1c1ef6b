"""On one real node, a pod mounts folders of the node (hostPath) under the prefix its
server allows: it reads a file the node holds, writes one the node then sees, a
DirectoryOrCreate folder is made for it, and a read-only mount stays read-only. A revision
moving the hostPath outside the allowed prefix is refused, and what runs keeps running."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gitops.schemas.validate import Policy
from tests.conftest import wait_for
from tests.e2e.cluster import IMAGE, Cluster, running_cluster

pytestmark = pytest.mark.docker


def logs(host: str) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: logs
        spec:
          replicas: 1
          selector:
            matchLabels: {{app: logs}}
          template:
            metadata:
              labels: {{app: logs}}
            spec:
              terminationGracePeriodSeconds: 1
              containers:
                - name: main
                  image: {IMAGE}
                  imagePullPolicy: Never
                  command: ["sh", "-c"]
                  args:
                    - >-
                      cat /node/in.txt > /made/out.txt;
                      echo written by $(hostname) >> /made/out.txt;
                      if touch /ro/x 2>/dev/null; then echo ro-writable; else echo ro-refused; fi
                      >> /made/out.txt;
                      exec sleep 3600
                  readinessProbe:
                    exec: {{command: [test, -s, /made/out.txt]}}
                    periodSeconds: 1
                  volumeMounts:
                    - {{name: node, mountPath: /node}}
                    - {{name: node, mountPath: /ro, readOnly: true}}
                    - {{name: made, mountPath: /made}}
              volumes:
                - name: node
                  hostPath: {{path: {host}, type: Directory}}
                - name: made
                  hostPath: {{path: {host}/made, type: DirectoryOrCreate}}
        """
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("hostpath")
    host = tmp / "node-logs"
    host.mkdir()
    (host / "in.txt").write_text("from the node\n")
    with running_cluster(
        tmp, {"logs.yaml": logs(str(host))}, "ship logs", policy=Policy(host_paths=(str(host),))
    ) as c:
        wait_for(c.ready_pods, timeout=120, what="the logs pod ready")
        yield c


def host_of(cluster: Cluster) -> Path:
    return Path(cluster.policy.host_paths[0])


def the_pod(cluster: Cluster) -> dict[str, Any]:
    (pod,) = cluster.ready_pods()
    return pod


def test_the_pod_reads_the_node_s_file_and_writes_one_the_node_sees(cluster: Cluster) -> None:
    out = host_of(cluster) / "made" / "out.txt"  # the DirectoryOrCreate folder, made for the pod
    lines = wait_for(lambda: out.exists() and out.read_text().splitlines(), timeout=30, what="out.txt")
    assert lines[0] == "from the node"
    assert lines[1].startswith("written by ")
    assert lines[2] == "ro-refused"  # the read-only mount of the same folder
    assert not (host_of(cluster) / "x").exists()


def test_host_paths_are_bind_mounts_of_the_node_s_folders(cluster: Cluster) -> None:
    pod = the_pod(cluster)
    (container,) = cluster.docker.containers.list(filters={"label": f"gitops.pod=default/{pod['name']}"})
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    host = str(host_of(cluster))
    assert (mounts["/node"]["Type"], mounts["/node"]["Source"], mounts["/node"]["RW"]) == ("bind", host, True)
    assert (mounts["/ro"]["Source"], mounts["/ro"]["RW"]) == (host, False)
    assert mounts["/made"]["Source"] == f"{host}/made"


def test_a_host_path_outside_the_allowed_prefix_is_refused_and_nothing_changes(
    cluster: Cluster,
) -> None:
    before = cluster.containers()
    host = str(host_of(cluster))
    sha = cluster.push(
        {"logs.yaml": logs(host).replace(f"path: {host}, type: Directory", "path: /etc")}, "etc"
    )

    def rejected() -> dict[str, Any] | None:
        latest = cluster.api("/api/v1/status")["latest"]
        ok = latest is not None and latest["revision"] == sha and latest["status"] == "rejected"
        return latest if ok else None

    latest = wait_for(rejected, timeout=30, what="the revision to be rejected")
    assert any(
        "spec.template.spec.volumes[0].hostPath.path: hostPath /etc is not under a prefix this server allows "
        f"(gitops serve --allow-host-path; allowed: {host})" in error
        for error in latest["errors"]
    ), latest["errors"]
    wait_for(cluster.ready_pods, timeout=10, what="the pod still ready")
    assert cluster.containers() == before
    assert all(c["status"] == "running" for c in before.values())
