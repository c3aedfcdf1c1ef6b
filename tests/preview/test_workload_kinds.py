"""A preview shows what every workload kind does, pass by pass, with its reasons and nodes:
a StatefulSet's pods in ordinal order, a DaemonSet's pod per node, a Job's pods, a
CronJob's next three run times and an autoscaler's bounds and replicas."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import jsonschema
import pytest

from gitops.controller import reconcile_once
from gitops.model import ClusterState, Node, NodeName, PodStatus, Revision, Taint
from gitops.planner.cron import describe_time, next_runs
from gitops.preview import preview
from gitops.preview.compute import Preview, RevisionInfo
from gitops.preview.render import to_json, to_markdown, to_text
from gitops.preview.state import from_json
from gitops.preview.state import to_json as state_json
from gitops.schemas.loader import SourceFile
from gitops.schemas.validate import validate_files
from gitops.store import Store

SCHEMA = json.loads((Path(__file__).parents[2] / "gitops" / "preview" / "preview.schema.json").read_text())
NOW = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
GiB = 2**30
NODES = (
    Node(NodeName("n1"), "192.0.2.1", 4000, 8 * GiB),
    Node(NodeName("n2"), "192.0.2.2", 4000, 8 * GiB),
    Node(NodeName("n3"), "192.0.2.3", 4000, 8 * GiB),
    Node(NodeName("gpu"), "192.0.2.9", 4000, 8 * GiB, taints=(Taint("dedicated", "gpu", "NoSchedule"),)),
)


def files(docs: dict[str, str]) -> list[SourceFile]:
    return [SourceFile(name, textwrap.dedent(text).lstrip("\n").encode()) for name, text in docs.items()]


def run(base: dict[str, str], head: dict[str, str], *, now: float = NOW) -> Preview:
    """Preview `head` on a cluster of NODES running `base`."""
    result = preview(
        files(head),
        validate_files(files(base)).manifests,
        ClusterState(desired=(), pods=(), nodes=NODES),
        head=RevisionInfo("b" * 40, "branch"),
        base_info=RevisionInfo("a" * 40),
        now=now,
        secret_key=b"one-time",
        settle_base=True,
    )
    assert result.errors == ()
    document = to_json(result)
    jsonschema.validate(document, SCHEMA)
    return result


def statefulset(image: str = "db:1", *, replicas: int = 3, extra: str = "") -> str:
    return f"""
    apiVersion: v1
    kind: Service
    metadata: {{name: db}}
    spec:
      clusterIP: None
      selector: {{app: db}}
      ports: [{{port: 5432}}]
    ---
    apiVersion: apps/v1
    kind: StatefulSet
    metadata: {{name: db}}
    spec:
      replicas: {replicas}
      serviceName: db
      selector: {{matchLabels: {{app: db}}}}
{textwrap.indent(textwrap.dedent(extra), "      ")}
      template:
        metadata: {{labels: {{app: db}}}}
        spec:
          containers:
            - name: db
              image: "{image}"
              resources: {{requests: {{cpu: 100m, memory: 64Mi}}}}
              volumeMounts: [{{name: data, mountPath: /data}}]
      volumeClaimTemplates:
        - metadata: {{name: data}}
          spec:
            accessModes: [ReadWriteOnce]
            resources: {{requests: {{storage: 1Gi}}}}
    """


DAEMONSET = """
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers: [{name: agent, image: "agent:IMAGE"}]
"""

JOB = """
apiVersion: batch/v1
kind: Job
metadata: {name: migrate}
spec:
  completions: 3
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: migrate, image: "migrate:1"}]
"""

CRONJOB = """
apiVersion: batch/v1
kind: CronJob
metadata: {name: report}
spec:
  schedule: "SCHEDULE"
  timeZone: Europe/Berlin
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: report, image: "report:1"}]
"""


def web(replicas: int = 2, image: str = "web:1") -> str:
    return f"""
    apiVersion: apps/v1
    kind: Deployment
    metadata: {{name: web}}
    spec:
      replicas: {replicas}
      selector: {{matchLabels: {{app: web}}}}
      template:
        metadata: {{labels: {{app: web}}}}
        spec:
          containers: [{{name: web, image: "{image}", resources: {{requests: {{cpu: 100m}}}}}}]
    """


def hpa(low: int = 3, high: int = 10) -> str:
    return f"""
    apiVersion: autoscaling/v2
    kind: HorizontalPodAutoscaler
    metadata: {{name: web}}
    spec:
      scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: web}}
      minReplicas: {low}
      maxReplicas: {high}
      metrics:
        - type: Resource
          resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 60}}}}
    """


# --- StatefulSets -----------------------------------------------------------------------


def test_a_new_stateful_set_starts_its_pods_in_ordinal_order_one_pass_each() -> None:
    result = run({}, {"db.yaml": statefulset()})
    created = [(a.pass_, a.pod, a.kind) for a in result.actions]
    assert created == [
        (0, "default/db-0", "create"),
        (1, "default/db-1", "create"),
        (2, "default/db-2", "create"),
    ]
    assert result.actions[0].reason == "StatefulSet default/db wants 3 replicas: db-0 (ordinal 0)"
    assert result.actions[1].reason.endswith("; db-0 is Running and ready")
    assert all(a.node in ("n1", "n2", "n3") for a in result.actions)  # never the tainted node
    assert result.actions[0].placement.startswith("claim default/data-db-0 is first used here")
    (rollout,) = result.rollouts
    assert rollout.order == ("db-0", "db-1", "db-2")
    assert rollout.summary == (
        "3 replicas, OrderedReady (one at a time, each once the one before is Running and ready): "
        "3 steps: db-0, db-1, db-2"
    )
    assert result.converged and result.warnings == ()  # the headless Service selects its pods


def test_a_stateful_set_update_replaces_pods_highest_ordinal_first_on_their_claims_nodes() -> None:
    result = run({"db.yaml": statefulset("db:1")}, {"db.yaml": statefulset("db:2")})
    steps = [(a.pass_, a.action, a.pod) for a in result.actions]
    assert steps == [
        (0, "stop", "default/db-2"),
        (1, "create", "default/db-2"),
        (2, "stop", "default/db-1"),
        (3, "create", "default/db-1"),
        (4, "stop", "default/db-0"),
        (5, "create", "default/db-0"),
    ]
    assert {a.kind for a in result.actions} == {"replace"}
    stop = result.actions[0]
    assert stop.reason == (
        "template changed: image changed: db:1 -> db:2 "
        "(rolling update, highest ordinal first, maxUnavailable 1)"
    )
    for old, new in zip(result.actions[::2], result.actions[1::2], strict=True):
        assert new.node == old.node  # the pod's claim holds its data there
        assert new.placement == (
            f"claim {new.pod.replace('/', '/data-')}'s volume is on {old.node}; "
            "the only node that passes every check"
        )
    assert (result.counts["pods_created"], result.counts["pods_replaced"]) == (0, 3)
    (rollout,) = result.rollouts
    assert rollout.order == ("db-2", "db-1", "db-0")
    assert rollout.summary == (
        "3 replicas, OrderedReady, rolling update, highest ordinal first, maxUnavailable 1: "
        "3 steps: db-2, db-1, db-0"
    )
    text = to_text(result)
    assert text.index("- default/db-2") < text.index("- default/db-1") < text.index("- default/db-0")


def test_min_ready_seconds_holds_no_stateful_set_back_in_a_preview() -> None:
    """Every pass runs at the same time; pods count as available at once."""
    result = run({}, {"db.yaml": statefulset(extra="minReadySeconds: 30\n")})
    assert [a.pod for a in result.actions] == ["default/db-0", "default/db-1", "default/db-2"]
    assert result.converged


def test_a_parallel_stateful_set_starts_every_pod_in_one_pass() -> None:
    result = run({}, {"db.yaml": statefulset(extra="podManagementPolicy: Parallel\n")})
    assert {(a.pass_, a.pod) for a in result.actions} == {(0, f"default/db-{i}") for i in range(3)}
    assert result.rollouts[0].summary == "3 replicas, Parallel (all at once): 1 step: db-0, db-1, db-2"


# --- DaemonSets -------------------------------------------------------------------------


def test_a_daemon_set_starts_one_pod_on_each_eligible_node_and_says_which_it_leaves_out() -> None:
    result = run({}, {"agent.yaml": DAEMONSET.replace("IMAGE", "1")})
    assert [(a.pass_, a.node, a.reason) for a in result.actions] == [
        (0, node, f"DaemonSet default/agent runs a pod on every eligible node: none on {node}")
        for node in ("n1", "n2", "n3")
    ]
    (rollout,) = result.rollouts
    assert (rollout.replicas, rollout.order) == (3, ("n1", "n2", "n3"))
    assert rollout.skipped == ("gpu (taint dedicated=gpu:NoSchedule is not tolerated)",)
    assert (
        "DaemonSet default/agent: 3 nodes, one pod per eligible node: 1 step: n1, n2, n3; no pod on gpu"
        in (to_text(result))
    )


def test_a_daemon_set_update_replaces_its_pods_node_by_node() -> None:
    result = run(
        {"agent.yaml": DAEMONSET.replace("IMAGE", "1")}, {"agent.yaml": DAEMONSET.replace("IMAGE", "2")}
    )
    steps = [(a.pass_, a.action, a.node) for a in result.actions]
    assert steps == [
        (0, "stop", "n1"),
        (1, "create", "n1"),
        (2, "stop", "n2"),
        (3, "create", "n2"),
        (4, "stop", "n3"),
        (5, "create", "n3"),
    ]
    assert {a.kind for a in result.actions} == {"replace"}
    assert result.actions[0].reason == (
        "template changed: image changed: agent:1 -> agent:2 "
        "(rolling update, maxUnavailable 1, maxSurge 0: old pod replaced)"
    )
    assert (result.counts["pods_created"], result.counts["pods_replaced"]) == (0, 3)
    assert result.rollouts[0].summary.startswith("3 nodes, rolling update, node by node: 3 steps: n1, n2, n3")


# --- Jobs -------------------------------------------------------------------------------


def test_a_job_shows_the_pods_it_starts_and_that_the_rest_wait_for_them_to_succeed() -> None:
    result = run({}, {"job.yaml": JOB})
    assert result.converged and result.passes == 1  # its running pods never finish: no third pod
    assert [(a.pass_, a.action) for a in result.actions] == [(0, "create"), (0, "create")]
    assert {a.reason for a in result.actions} == {
        "Job default/migrate runs 3 completions (0 done, parallelism 2)"
    }
    assert {a.node for a in result.actions} <= {"n1", "n2", "n3"}
    (job,) = result.jobs
    assert (job.completions, job.parallelism, job.started) == (3, 2, tuple(a.pod[8:] for a in result.actions))
    assert job.summary == (
        "runs 3 pods to completion, 2 at a time; starts 2 now, 1 more as these succeed "
        "(pods do not finish in a preview)"
    )
    assert f"Job default/migrate: {job.summary}" in to_text(result)
    (entry,) = to_json(result)["jobs"]
    assert (entry["job"], entry["completions"], entry["parallelism"]) == ("Job default/migrate", 3, 2)


def test_a_suspended_or_indexed_job_says_so() -> None:
    suspended = run({}, {"job.yaml": JOB.replace("parallelism: 2", "parallelism: 2\n  suspend: true")})
    assert suspended.actions == ()
    assert suspended.jobs[0].summary == "runs 3 pods to completion, 2 at a time; Suspended: suspend: true"
    indexed = run(
        {}, {"job.yaml": JOB.replace("parallelism: 2", "parallelism: 2\n  completionMode: Indexed")}
    )
    assert [a.reason.rsplit(": ", 1)[1] for a in indexed.actions] == ["index 0", "index 1"]
    assert indexed.jobs[0].summary.startswith("runs indexes 0 to 2 to completion, 2 at a time; starts 2 now")


# --- CronJobs ---------------------------------------------------------------------------


def test_a_cron_job_shows_its_next_three_runs_and_starts_none() -> None:
    result = run({}, {"cron.yaml": CRONJOB.replace("SCHEDULE", "*/15 * * * *")})
    assert result.actions == ()
    (cron,) = result.cronjobs
    spec = {"schedule": "*/15 * * * *", "timeZone": "Europe/Berlin"}
    expected = tuple(describe_time(t, "Europe/Berlin") for t in next_runs(spec, NOW, 3))
    assert (
        cron.next_runs == expected == ("2027-01-15 09:15 CET", "2027-01-15 09:30 CET", "2027-01-15 09:45 CET")
    )
    assert (cron.zone, cron.started) == ("Europe/Berlin", ())
    assert cron.summary == (
        "schedule */15 * * * * (Europe/Berlin): next runs 2027-01-15 09:15 CET, 2027-01-15 09:30 CET, "
        "2027-01-15 09:45 CET; the change starts no run by itself"
    )
    assert f"CronJob default/report: {cron.summary}" in to_text(result)
    assert "schedule \\*/15 \\* \\* \\* \\* (Europe/Berlin): next runs 2027-01-15 09:15 CET" in to_markdown(
        result
    )
    assert to_json(result)["cronjobs"][0]["next_runs"] == list(expected)


def test_a_long_rollout_lets_no_schedule_come_due() -> None:
    """Twenty ordered passes with minReadySeconds would once have moved the clock past a minute."""
    head = {
        "cron.yaml": CRONJOB.replace("SCHEDULE", "* * * * *"),
        "db.yaml": statefulset(replicas=20, extra="minReadySeconds: 10\n"),
    }
    result = run({}, head, now=NOW + 50)
    assert {a.owner for a in result.actions} == {"StatefulSet default/db"}
    assert result.passes == 20
    assert result.cronjobs[0].started == ()


# --- autoscalers ------------------------------------------------------------------------


def test_a_new_autoscaler_brings_its_target_within_its_bounds_without_inventing_load() -> None:
    result = run({"web.yaml": web(replicas=2)}, {"web.yaml": web(replicas=2), "hpa.yaml": hpa(low=3)})
    assert [(a.pass_, a.action, a.reason) for a in result.actions] == [
        (0, "create", "scale up: 2 -> 3 replicas")
    ]
    (scale,) = result.autoscalers
    assert (scale.target, scale.min_replicas, scale.max_replicas) == ("Deployment default/web", 3, 10)
    assert scale.metrics == (("cpu", "60%", "unknown"),)  # no usage sample: not read
    assert (scale.replicas, scale.before) == (3, None)
    assert scale.reason == "first sight: Deployment default/web runs 2 replicas, below minReplicas 3: 2 -> 3"
    assert scale.summary == (
        "Deployment default/web between 3 and 10 replicas, cpu target 60%; holds it at 3: " + scale.reason
    )
    assert f"HorizontalPodAutoscaler default/web: {scale.summary}" in to_text(result)
    (entry,) = to_json(result)["autoscalers"]
    assert (entry["min_replicas"], entry["max_replicas"], entry["replicas"]) == (3, 10, 3)


def test_an_autoscaler_holds_its_target_at_the_replicas_it_runs_and_new_bounds_move_them() -> None:
    base = {"web.yaml": web(replicas=2), "hpa.yaml": hpa(low=3)}
    rollout = run(base, {"web.yaml": web(replicas=2, image="web:2"), "hpa.yaml": hpa(low=3)})
    (scale,) = rollout.autoscalers  # its target's pods change
    assert (scale.before, scale.replicas) == (3, 3)
    assert scale.reason.startswith("cannot compute a replica count (no cpu sample from any ready pod")
    assert scale.reason.endswith("stays at 3")
    assert scale.summary.startswith(
        "Deployment default/web between 3 and 10 replicas, cpu target 60%; holds it at 3"
    )
    assert sum(1 for a in rollout.actions if a.action == "create") == 3  # the autoscaler's 3, not git's 2

    raised = run(base, {"web.yaml": web(replicas=2), "hpa.yaml": hpa(low=5)})
    (scale,) = raised.autoscalers
    assert (scale.before, scale.replicas) == (3, 5)
    assert scale.reason == "Deployment default/web runs 3 replicas, below minReplicas 5: 3 -> 5"
    assert "takes it from 3 to 5" in scale.summary
    assert [a.reason for a in raised.actions] == ["scale up: 3 -> 5 replicas"] * 2


# --- warnings ---------------------------------------------------------------------------


def test_configmaps_and_services_of_every_workload_kind_raise_no_warning() -> None:
    config = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: report}\ndata: {MODE: daily}\n"
    cron = CRONJOB.replace("SCHEDULE", "0 6 * * *").replace(
        'image: "report:1"}', 'image: "report:1", envFrom: [{configMapRef: {name: report}}]}'
    )
    result = run({}, {"cm.yaml": config, "cron.yaml": cron, "db.yaml": statefulset()})
    assert result.warnings == ()


# --- the same pass as the controller's ---------------------------------------------------


@pytest.mark.parametrize("now", [NOW + 400, NOW])
def test_pass_0_of_every_kind_is_what_the_controller_does_from_a_snapshot(tmp_path: Path, now: float) -> None:
    """The snapshot carries Job, CronJob and autoscaler states and claims; pass 0 is the
    controller's next pass. At NOW a schedule time of the CronJob is due: the run starts
    in both, and the preview says so."""
    base = {
        "job.yaml": JOB,
        "cron.yaml": CRONJOB.replace("SCHEDULE", "*/15 * * * *"),
        "web.yaml": web(replicas=2),
        "hpa.yaml": hpa(low=3),
    }
    head = {
        **base,
        "hpa.yaml": hpa(low=4),
        "db.yaml": statefulset(),
        "agent.yaml": DAEMONSET.replace("IMAGE", "1"),
        "cron.yaml": CRONJOB.replace("SCHEDULE", "*/5 * * * *"),
    }
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    for node in NODES:
        store.register_node(node, f"t-{node.name}", now=now - 100)
    store.apply_revision(Revision("git:x", "a" * 40), validate_files(files(base)).manifests, [], now=now - 90)
    reconcile_once(store, now=now - 80)
    for node in NODES:
        statuses = [PodStatus(p.id, "Running", True, pod_ip="172.17.0.9") for p in store.pods(node.name)]
        store.heartbeat(node.name, statuses, now=now - 70)
    reconcile_once(store, now=now - 60)

    snapshot = store.snapshot(now)
    state = from_json(json.loads(json.dumps(state_json(snapshot))), "snapshot.json")
    assert (state.jobs, state.crons, state.scales) == (snapshot.jobs, snapshot.crons, snapshot.scales)
    assert (state.claims, state.usage) == (snapshot.claims, snapshot.usage)
    result = preview(
        files(head),
        validate_files(files(base)).manifests,
        state,
        head=RevisionInfo("b" * 40),
        now=now,
        secret_key=b"one-time",
    )
    assert not result.errors
    assert not any(a.owner == "Job default/migrate" for a in result.actions)  # it runs: not started again
    runs = {a.owner for a in result.actions if a.owner.startswith("Job default/report-")}
    (cron,) = result.cronjobs
    if now == NOW:
        assert runs == {"Job default/report-30000000"}
        assert cron.started == ("report-30000000",)
        assert cron.summary.endswith(
            "; starts report-30000000: started report-30000000 for 2027-01-15 09:00 CET"
        )
        (job,) = result.jobs
        assert (job.job, job.cronjob) == ("Job default/report-30000000", "CronJob default/report")
    else:
        assert runs == set()
        assert cron.summary.endswith("; the change starts no run by itself")

    store.apply_revision(Revision("git:x", "b" * 40), validate_files(files(head)).manifests, [], now=now)
    applied = reconcile_once(store, now=now)
    real = {("create", a.pod.id, a.reason) for a in applied.plan.create}
    real |= {("stop", a.pod.id, a.reason) for a in applied.plan.stop}
    assert {(a.action, a.pod, a.reason) for a in result.first_pass} == real
    owners = {"Deployment default/web", "StatefulSet default/db", "DaemonSet default/agent"}
    assert {a.owner for a in result.first_pass} == owners | {f"Job {r[4:]}" for r in runs}
    bound = {p.id: p.node for p in store.pods() if p.node}
    for action in result.first_pass:
        assert action.node == bound.get(action.pod)
    (scale,) = result.autoscalers
    assert (scale.before, scale.replicas) == (3, 4)
