"""On one real node, the workload kinds beyond Deployments: a StatefulSet starts its pods
in order, each with its own claim and DNS name; a deleted pod returns under its name with
its data; scaling down and up keeps the claims. A Job whose pods fail twice then succeed
completes, one with `backoffLimit: 1` fails with the reason. A CronJob runs within a
minute. An autoscaler scales a CPU-burning Deployment up and, after its stabilisation
window, back down.

Everything is pushed at once, so the CronJob and the autoscaler make progress while the
StatefulSet's tests run."""

from __future__ import annotations

import re
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gitops.model import CronState, JobState, ObjectKey, ScaleState
from tests.conftest import wait_for
from tests.e2e.cluster import IMAGE, Cluster, running_cluster

pytestmark = pytest.mark.docker


def database(replicas: int) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: v1
        kind: Service
        metadata: {{name: db}}
        spec:
          clusterIP: None
          selector: {{app: db}}
          ports: [{{name: http, port: 8080}}]
        ---
        apiVersion: apps/v1
        kind: StatefulSet
        metadata: {{name: db}}
        spec:
          serviceName: db
          replicas: {replicas}
          selector: {{matchLabels: {{app: db}}}}
          template:
            metadata: {{labels: {{app: db}}}}
            spec:
              terminationGracePeriodSeconds: 1
              containers:
                - name: httpd
                  image: {IMAGE}
                  imagePullPolicy: Never
                  command:
                    - sh
                    - -c
                    - >-
                      [ -f /data/born ] || echo "$(hostname) $(date +%s)$RANDOM" > /data/born;
                      exec httpd -f -p 8080 -h /data
                  ports: [{{name: http, containerPort: 8080}}]
                  readinessProbe: {{httpGet: {{path: /born, port: http}}, periodSeconds: 1}}
                  volumeMounts: [{{name: data, mountPath: /data}}]
          volumeClaimTemplates:
            - metadata: {{name: data}}
              spec:
                accessModes: [ReadWriteOnce]
                resources: {{requests: {{storage: 1Gi}}}}
        """
    )


BATCH = textwrap.dedent(
    f"""\
    apiVersion: v1
    kind: PersistentVolumeClaim
    metadata: {{name: tries}}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {{requests: {{storage: 1Mi}}}}
    ---
    apiVersion: batch/v1
    kind: Job
    metadata: {{name: flaky}}
    spec:
      completions: 3
      parallelism: 2
      backoffLimit: 4
      template:
        spec:
          restartPolicy: Never
          terminationGracePeriodSeconds: 1
          containers:
            - name: work
              image: {IMAGE}
              imagePullPolicy: Never
              # The first two pods to run fail; every later one succeeds.
              command:
                - sh
                - -c
                - n=$(ls /tries | wc -l); touch /tries/$HOSTNAME; echo try $n; [ $n -ge 2 ]
              volumeMounts: [{{name: tries, mountPath: /tries}}]
          volumes: [{{name: tries, persistentVolumeClaim: {{claimName: tries}}}}]
    ---
    apiVersion: batch/v1
    kind: Job
    metadata: {{name: doomed}}
    spec:
      backoffLimit: 1
      template:
        spec:
          restartPolicy: Never
          terminationGracePeriodSeconds: 1
          containers:
            - {{name: work, image: {IMAGE}, imagePullPolicy: Never, command: ["sh", "-c", "echo no; exit 2"]}}
    ---
    apiVersion: batch/v1
    kind: CronJob
    metadata: {{name: tick}}
    spec:
      schedule: "* * * * *"
      successfulJobsHistoryLimit: 2
      jobTemplate:
        spec:
          template:
            spec:
              restartPolicy: OnFailure
              terminationGracePeriodSeconds: 1
              containers:
                - {{name: tick, image: {IMAGE}, imagePullPolicy: Never, command: ["sh", "-c", "date"]}}
    """
)

BURNER = textwrap.dedent(
    f"""\
    apiVersion: v1
    kind: PersistentVolumeClaim
    metadata: {{name: burned}}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {{requests: {{storage: 1Mi}}}}
    ---
    apiVersion: apps/v1
    kind: Deployment
    metadata: {{name: burner}}
    spec:
      replicas: 1
      selector: {{matchLabels: {{app: burner}}}}
      template:
        metadata: {{labels: {{app: burner}}}}
        spec:
          terminationGracePeriodSeconds: 1
          containers:
            - name: burn
              image: {IMAGE}
              imagePullPolicy: Never
              # The first pod (mkdir is atomic) burns a CPU, held to 200m by its limit, for
              # 20 s; every pod then idles.
              command:
                - sh
                - -c
                - >-
                  if mkdir /flag/burner 2>/dev/null; then end=$(($(date +%s) + 20));
                  while [ $(date +%s) -lt $end ]; do :; done; fi; exec sleep 100000
              resources:
                requests: {{cpu: 100m}}
                limits: {{cpu: 200m}}
              volumeMounts: [{{name: flag, mountPath: /flag}}]
          volumes: [{{name: flag, persistentVolumeClaim: {{claimName: burned}}}}]
    ---
    apiVersion: autoscaling/v2
    kind: HorizontalPodAutoscaler
    metadata: {{name: burner}}
    spec:
      scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: burner}}
      minReplicas: 1
      maxReplicas: 3
      metrics:
        - type: Resource
          resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 50}}}}
      behavior:
        scaleDown:
          stabilizationWindowSeconds: 5
    """
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    files = {"db.yaml": database(3), "batch.yaml": BATCH, "burner.yaml": BURNER}
    with running_cluster(
        tmp_path_factory.mktemp("kinds"), files, "every kind", agent_args=("--usage-interval", "2")
    ) as c:
        yield c


def states(cluster: Cluster) -> dict[ObjectKey, Any]:
    assert cluster.plane is not None
    found: dict[ObjectKey, Any] = cluster.plane.store.workload_states()
    return found


def db_pods(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in cluster.api("/api/v1/pods") if p["name"].startswith("db-")}


def born(cluster: Cluster, pod: str, via: str | None = None) -> str:
    """What pod `pod` serves at /born (`<name> <time and a random number>`, written when its
    claim was new), asked from pod `via`'s container by its DNS name; retried while the cluster DNS
    does not know a pod that just became ready."""

    said: list[str] = []

    def ask() -> str | None:
        caller = cluster.docker.containers.list(
            filters={"label": [f"gitops.pod=default/{via or pod}", "gitops.container=httpd"]}
        )
        if not caller:
            said.append("no running container")
            return None
        request = f'printf "GET /born HTTP/1.0\\r\\n\\r\\n" | nc -w 3 {pod}.db 8080 | tail -n 1'
        output: bytes = caller[0].exec_run(["sh", "-c", request]).output
        answer = output.decode(errors="replace").strip()
        said.append(answer)
        return answer if re.fullmatch(r"\S+ \d+", answer) else None

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = ask()
        if found is not None:
            return found
        time.sleep(0.5)
    pytest.fail(f"{pod}.db did not answer from {via or pod} within 30 s; it said {said[-3:]}")


def all_db_ready(cluster: Cluster, count: int) -> dict[str, dict[str, Any]] | None:
    pods = db_pods(cluster)
    wanted = {f"db-{i}" for i in range(count)}
    return pods if set(pods) == wanted and all(p["ready"] for p in pods.values()) else None


def test_a_statefulset_starts_its_pods_in_order_each_once_the_one_before_is_ready(cluster: Cluster) -> None:
    wait_for(lambda: all_db_ready(cluster, 3), timeout=180, what="db-0, db-1 and db-2 ready")
    events = cluster.api("/api/v1/events?limit=1000")
    created = {e["object"]: e["time"] for e in events if e["reason"] == "Created"}
    ready: dict[str, float] = {}
    for e in events:
        if e["reason"] == "StatusChanged" and e["message"].startswith("Running ready"):
            ready.setdefault(e["object"], e["time"])
    for before, after in (("db-0", "db-1"), ("db-1", "db-2")):
        assert ready[f"pod default/{before}"] <= created[f"pod default/{after}"], (before, after)
    # Each pod has its own claim, a volume of its own on the node.
    volumes = {v.name for v in cluster.docker.volumes.list(filters={"label": f"gitops.node={cluster.node}"})}
    claims = [v for v in volumes if "data-db-" in v]
    assert len(claims) == 3, volumes


def test_each_pod_has_a_stable_dns_name_through_the_headless_service(cluster: Cluster) -> None:
    wait_for(lambda: all_db_ready(cluster, 3), timeout=120, what="the set ready")
    assert born(cluster, "db-0", via="db-1").split()[0] == "db-0"
    assert born(cluster, "db-2", via="db-0").split()[0] == "db-2"


def test_a_deleted_pod_returns_under_its_name_with_the_data_of_its_claim(cluster: Cluster) -> None:
    wait_for(lambda: all_db_ready(cluster, 3), timeout=120, what="the set ready")
    before = born(cluster, "db-1", via="db-0")
    old = db_pods(cluster)["db-1"]
    assert cluster.plane is not None
    cluster.plane.store.delete_pod("default/db-1", time.time())

    def returned() -> bool:
        pod = db_pods(cluster).get("db-1")
        return pod is not None and pod["ready"] and pod["created_at"] > old["created_at"]

    wait_for(returned, timeout=90, what="db-1 back, ready")
    assert born(cluster, "db-1", via="db-0") == before  # the same claim: the file written first


def test_a_job_whose_pods_fail_twice_then_succeed_completes_and_keeps_its_pods(cluster: Cluster) -> None:
    key = ObjectKey("Job", "default", "flaky")

    def done() -> JobState | None:
        state = states(cluster).get(key)
        return state if isinstance(state, JobState) and state.finished else None

    state = wait_for(done, timeout=180, what="Job flaky finished")
    assert (state.condition, state.succeeded) == ("Complete", 3), state
    assert state.failed >= 2, state
    assert "3/3 pods succeeded" in state.reason
    # The finished pods' containers stay, exited, so their logs can be read.
    kept = cluster.docker.containers.list(all=True, filters={"label": "gitops.container=work"})
    flaky = [c for c in kept if c.labels["gitops.pod"].startswith("default/flaky-")]
    assert len(flaky) >= 5 and all(c.status == "exited" for c in flaky), [c.status for c in flaky]
    phases = sorted(p["phase"] for p in cluster.api("/api/v1/pods") if p["name"].startswith("flaky-"))
    assert phases.count("Succeeded") == 3 and phases.count("Failed") >= 2, phases


def test_a_job_past_its_backoff_limit_fails_with_the_reason(cluster: Cluster) -> None:
    key = ObjectKey("Job", "default", "doomed")

    def done() -> JobState | None:
        state = states(cluster).get(key)
        return state if isinstance(state, JobState) and state.finished else None

    state = wait_for(done, timeout=120, what="Job doomed finished")
    assert state.condition == "Failed", state
    assert state.reason.startswith("BackoffLimitExceeded: 2 failure(s), backoffLimit 1"), state.reason
    assert state.failed == 2


def test_a_cronjob_runs_within_a_minute(cluster: Cluster) -> None:
    key = ObjectKey("CronJob", "default", "tick")

    def ran() -> CronState | None:
        state = states(cluster).get(key)
        done = isinstance(state, CronState) and any(r.outcome == "Complete" for r in state.runs)
        return state if done else None

    state = wait_for(ran, timeout=150, what="CronJob tick's first run complete")
    run = next(r for r in state.runs if r.outcome == "Complete")
    assert run.name == f"tick-{int(run.scheduled_at // 60)}"
    job = states(cluster)[ObjectKey("Job", "default", run.name)]
    assert job.condition == "Complete"


def test_an_autoscaler_scales_a_cpu_burning_deployment_up_and_back_down(cluster: Cluster) -> None:
    """Told by its scale events (the burner stops burning 20 s after it starts, so the
    scale-up may be over by the time this test runs)."""
    hpa = "HorizontalPodAutoscaler default/burner"

    def scales() -> list[str]:
        events = cluster.api("/api/v1/events?limit=1000")
        return [e["message"] for e in reversed(events) if e["object"] == hpa and e["reason"] == "Scaled"]

    wait_for(
        lambda: any(": 1 -> 3" in m for m in scales()), timeout=150, what="the autoscaler scaling 1 -> 3"
    )
    up = next(m for m in scales() if ": 1 -> 3" in m)
    assert up.startswith("cpu ") and "> target 50%" in up, up
    wait_for(
        lambda: any(m.endswith(("-> 1", "-> 1)")) or "-> 1 " in m for m in scales()),
        timeout=180,
        what="back to 1",
    )
    down = scales()[-1]
    assert "< target 50%" in down, scales()
    state = states(cluster)[ObjectKey("HorizontalPodAutoscaler", "default", "burner")]
    assert isinstance(state, ScaleState) and state.replicas == 1, state
    wait_for(
        lambda: len([p for p in cluster.api("/api/v1/pods") if p["name"].startswith("burner-")]) == 1,
        timeout=60,
        what="1 burner pod",
    )


def test_scaling_a_statefulset_to_one_and_back_keeps_the_claims_data(cluster: Cluster) -> None:
    wait_for(lambda: all_db_ready(cluster, 3), timeout=120, what="the set ready")
    before = {name: born(cluster, name, via="db-0") for name in ("db-1", "db-2")}
    cluster.push({"db.yaml": database(1)}, "db to one")
    wait_for(lambda: all_db_ready(cluster, 1), timeout=90, what="db scaled to 1")
    volumes = {v.name for v in cluster.docker.volumes.list(filters={"label": f"gitops.node={cluster.node}"})}
    assert len([v for v in volumes if "data-db-" in v]) == 3, "the claims stay (whenScaled: Retain)"
    cluster.push({"db.yaml": database(3)}, "db back to three")
    wait_for(lambda: all_db_ready(cluster, 3), timeout=120, what="db back to 3")
    assert {name: born(cluster, name, via="db-0") for name in ("db-1", "db-2")} == before
