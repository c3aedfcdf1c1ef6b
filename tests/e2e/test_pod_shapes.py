"""On one real node, pods shaped as real apps write them: an init container fills an
emptyDir the app serves, a sidecar reaches the app on localhost and writes through the
shared volume, the downward API tells the truth, a memory limit is enforced (and its
breach shows as OOMKilled), runAsUser and a read-only root are applied, and each container
carries its own label."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from typing import Any

import docker.models.containers
import pytest

from tests.conftest import wait_for
from tests.e2e.cluster import IMAGE, Cluster, http_get, running_cluster

pytestmark = pytest.mark.docker

SHOP = textwrap.dedent(
    f"""\
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: shop
    spec:
      replicas: 1
      selector:
        matchLabels: {{app: shop}}
      template:
        metadata:
          labels: {{app: shop, tier: front}}
        spec:
          terminationGracePeriodSeconds: 1
          initContainers:
            - name: fetch
              image: {IMAGE}
              imagePullPolicy: Never
              command: ["sh", "-c", "echo made by init > /work/index.html"]
              volumeMounts: [{{name: work, mountPath: /work}}]
            - name: shipper
              image: {IMAGE}
              imagePullPolicy: Never
              restartPolicy: Always
              command:
                - sh
                - -c
                - >-
                  while true; do
                  printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 2 127.0.0.1 8080 | tail -n 1 > /shared/seen.tmp
                  && mv /shared/seen.tmp /shared/seen; sleep 1; done
              volumeMounts: [{{name: work, mountPath: /shared}}]
          containers:
            - name: web
              image: {IMAGE}
              imagePullPolicy: Never
              command: ["httpd", "-f", "-p", "8080", "-h", "/work"]
              ports: [{{name: http, containerPort: 8080}}]
              env:
                - {{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
                - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
                - {{name: NODE, valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}}}
                - {{name: TIER, valueFrom: {{fieldRef: {{fieldPath: "metadata.labels['tier']"}}}}}}
                - name: MEMORY_MI
                  valueFrom: {{resourceFieldRef: {{resource: limits.memory, divisor: 1Mi}}}}
              resources:
                limits: {{memory: 64Mi, cpu: 500m}}
              securityContext:
                runAsUser: 1000
                runAsGroup: 1000
                readOnlyRootFilesystem: true
                allowPrivilegeEscalation: false
              readinessProbe:
                httpGet: {{path: /, port: http}}
                periodSeconds: 1
              lifecycle:
                postStart:
                  exec: {{command: ["sh", "-c", "echo hooked > /work/hooked"]}}
              volumeMounts:
                - {{name: work, mountPath: /work}}
                - {{name: info, mountPath: /etc/podinfo}}
          volumes:
            - name: work
              emptyDir: {{}}
            - name: info
              downwardAPI:
                items:
                  - {{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}
                  - {{path: name, fieldRef: {{fieldPath: metadata.name}}}}
    ---
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: hog
    spec:
      replicas: 1
      selector:
        matchLabels: {{app: hog}}
      template:
        metadata:
          labels: {{app: hog}}
        spec:
          terminationGracePeriodSeconds: 1
          containers:
            - name: main
              image: {IMAGE}
              imagePullPolicy: Never
              command: ["sh", "-c", "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done"]
              resources:
                limits: {{memory: 64Mi}}
    ---
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: quitter
    spec:
      replicas: 1
      selector:
        matchLabels: {{app: quitter}}
      template:
        metadata:
          labels: {{app: quitter}}
        spec:
          terminationGracePeriodSeconds: 1
          containers:
            - name: main
              image: {IMAGE}
              imagePullPolicy: Never
              command: ["sh", "-c", "echo config key db.url missing > /dev/termination-log; exit 3"]
              securityContext: {{runAsUser: 4242, readOnlyRootFilesystem: true}}
    """
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("shapes"), {"shop.yaml": SHOP}, "a shop") as c:
        wait_for(
            lambda: any(p["name"].startswith("shop-") for p in c.ready_pods()), timeout=120, what="shop ready"
        )
        yield c


def shop_pod(cluster: Cluster) -> dict[str, Any]:
    return next(p for p in cluster.ready_pods() if p["name"].startswith("shop-"))


def container(cluster: Cluster, pod: dict[str, Any], name: str) -> docker.models.containers.Container:
    """The newest running container of the pod's container `name`."""
    found = cluster.docker.containers.list(
        filters={"label": [f"gitops.pod={pod['namespace']}/{pod['name']}", f"gitops.container={name}"]}
    )
    assert len(found) == 1, (name, found)
    return found[0]


def run_in(c: docker.models.containers.Container, command: str) -> str:
    output: bytes = c.exec_run(["sh", "-c", command]).output
    return output.decode(errors="replace").strip()


def test_the_init_container_s_file_is_served_and_the_sidecar_reaches_the_app_on_localhost(
    cluster: Cluster,
) -> None:
    pod = shop_pod(cluster)
    assert http_get(pod["pod_ip"], 8080) == "made by init"
    web = container(cluster, pod, "web")
    wait_for(
        lambda: run_in(web, "cat /work/seen 2>/dev/null") == "made by init",
        timeout=20,
        what="the sidecar's copy",
    )
    # Every container of the pod has the pod's address; the infra container holds it.
    infra = container(cluster, pod, "POD")
    assert web.attrs["HostConfig"]["NetworkMode"] == f"container:{infra.id}"
    assert container(cluster, pod, "shipper").attrs["HostConfig"]["NetworkMode"] == f"container:{infra.id}"
    fetch = cluster.docker.containers.list(
        all=True, filters={"label": [f"gitops.pod=default/{pod['name']}", "gitops.container=fetch"]}
    )
    assert [(c.status, c.attrs["State"]["ExitCode"]) for c in fetch] == [("exited", 0)]


def test_the_downward_api_gives_the_pod_s_own_values(cluster: Cluster) -> None:
    pod = shop_pod(cluster)
    web = container(cluster, pod, "web")
    env = dict(line.split("=", 1) for line in web.attrs["Config"]["Env"] if "=" in line)
    assert env["POD_IP"] == pod["pod_ip"]
    assert (env["POD_NAME"], env["NODE"], env["TIER"], env["MEMORY_MI"]) == (
        pod["name"],
        cluster.node,
        "front",
        "64",
    )
    assert run_in(web, "cat /etc/podinfo/name") == pod["name"]
    assert run_in(web, "cat /etc/podinfo/labels").splitlines() == ['app="shop"', 'tier="front"']


def test_limits_user_and_read_only_root_are_applied(cluster: Cluster) -> None:
    web = container(cluster, shop_pod(cluster), "web")
    host = web.attrs["HostConfig"]
    assert (host["Memory"], host["NanoCpus"], host["ReadonlyRootfs"]) == (64 * 2**20, 500_000_000, True)
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert run_in(web, "id -u; id -g") == "1000\n1000"
    assert "Read-only file system" in run_in(web, "touch /made-here 2>&1")
    assert run_in(web, "touch /work/ok && echo writable") == "writable"  # the emptyDir is
    assert run_in(web, "cat /work/hooked") == "hooked"  # its postStart hook ran in it


def test_a_container_over_its_memory_limit_shows_oomkilled(cluster: Cluster) -> None:
    def hog() -> dict[str, Any] | None:
        return next((p for p in cluster.api("/api/v1/pods") if p["name"].startswith("hog-")), None)

    wait_for(lambda: "OOMKilled" in ((hog() or {}).get("reason") or ""), timeout=60, what="hog OOMKilled")
    killed = cluster.docker.containers.list(
        all=True, filters={"label": "gitops.pod=default/" + hog()["name"]}
    )  # type: ignore[index]
    assert any(c.attrs["State"]["OOMKilled"] for c in killed)


def journal(version: str) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: v1
        kind: PersistentVolumeClaim
        metadata:
          name: journal
        spec:
          accessModes: [ReadWriteOnce]
          resources: {{requests: {{storage: 64Mi}}}}
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: journal
        spec:
          replicas: 1
          selector:
            matchLabels: {{app: journal}}
          template:
            metadata:
              labels: {{app: journal}}
            spec:
              terminationGracePeriodSeconds: 1
              containers:
                - name: main
                  image: {IMAGE}
                  imagePullPolicy: Never
                  command: ["sh", "-c", "echo started {version} >> /data/log && exec sleep 100000"]
                  volumeMounts: [{{name: data, mountPath: /data}}]
              volumes:
                - name: data
                  persistentVolumeClaim: {{claimName: journal}}
        """
    )


def test_a_claim_keeps_its_data_across_a_rollout_to_a_new_template_and_goes_with_the_claim(
    cluster: Cluster,
) -> None:
    def journal_pods() -> list[dict[str, Any]]:
        return [p for p in cluster.ready_pods() if p["name"].startswith("journal-")]

    def log_of(pod: dict[str, Any]) -> str:
        return run_in(container(cluster, pod, "main"), "cat /data/log")

    cluster.push({"journal.yaml": journal("v1")}, "a journal")
    wait_for(lambda: len(journal_pods()) == 1, timeout=60, what="the journal pod")
    first = journal_pods()[0]
    wait_for(lambda: log_of(first) == "started v1", timeout=20, what="the first line")
    cluster.push({"journal.yaml": journal("v2")}, "a new template")
    wait_for(
        lambda: [p["name"] for p in journal_pods()] not in ([], [first["name"]]) and len(journal_pods()) == 1,
        timeout=60,
        what="the new pod",
    )
    second = journal_pods()[0]
    wait_for(lambda: log_of(second) == "started v1\nstarted v2", timeout=20, what="both lines")
    volumes = cluster.docker.volumes.list(filters={"label": "gitops.claim=default/journal"})
    assert len(volumes) == 1
    cluster.push({"journal.yaml": None}, "the journal goes")
    wait_for(
        lambda: not cluster.docker.volumes.list(filters={"label": "gitops.claim=default/journal"}),
        timeout=60,
        what="the claim's volume to be deleted",
    )


def test_a_container_s_termination_message_is_its_reason(cluster: Cluster) -> None:
    def quitter() -> str:
        pod = next((p for p in cluster.api("/api/v1/pods") if p["name"].startswith("quitter-")), None)
        return str((pod or {}).get("reason") or "")

    wait_for(lambda: "message: config key db.url missing" in quitter(), timeout=60, what="the message")
    assert "exited with code 3" in quitter()
