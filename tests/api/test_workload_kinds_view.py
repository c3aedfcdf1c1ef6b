"""StatefulSets, DaemonSets, Jobs, CronJobs and autoscalers as people read them: rows in the
one redacted view, alike in the JSON API (`/api/v1/workloads`, `/jobs`, `/cronjobs`,
`/autoscalers`), on the Workloads page (a section per kind) and in `gitops status`."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from gitops.api.app import create_app
from gitops.cli import main
from gitops.controller import reconcile_once
from gitops.model import (
    CronRun,
    CronState,
    JobState,
    Manifest,
    MetricStatus,
    Node,
    NodeName,
    ObjectKey,
    PodStatus,
    Revision,
    ScaleState,
)
from gitops.store import Store
from tests.planner.factories import deployment, manifest, secret
from tests.servers import free_port

NOW = 1_800_000_030.0  # 2027-01-15 08:00:30 UTC, 09:00:30 in Berlin
SECRET_VALUE = "Kx7-cron-secret-4411"

WEB = ObjectKey("Deployment", "default", "web")
DB = ObjectKey("StatefulSet", "default", "web")  # the Deployment's name: told apart by kind
MIGRATE = ObjectKey("Job", "default", "migrate")
BROKEN = ObjectKey("Job", "default", "broken")
REPORT = ObjectKey("CronJob", "default", "report")
NIGHTLY = ObjectKey("CronJob", "default", "nightly")
HPA = ObjectKey("HorizontalPodAutoscaler", "default", "web")
DONE_RUN = CronRun("report-29999995", 1_799_999_700.0, "Complete")  # 07:55 UTC
ACTIVE_RUN = CronRun("report-30000000", 1_800_000_000.0)  # 08:00 UTC, still running


def _template(app: str, **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": f"{app}:1", "resources": {"requests": {"cpu": "100m"}}}
    return {"metadata": {"labels": {"app": app}}, "spec": {"containers": [container], **spec}}


def _job_spec(app: str, **spec: Any) -> dict[str, Any]:
    return {"template": _template(app, restartPolicy="Never"), **spec}


def manifests() -> list[Manifest]:
    hpa_spec = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
        "minReplicas": 2,
        "maxReplicas": 6,
        "metrics": [
            {
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}},
            }
        ],
    }
    idle_spec = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web"},
        "maxReplicas": 5,
        "metrics": [
            {
                "type": "Resource",
                "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "300Mi"}},
            }
        ],
    }
    return [
        secret("creds", token=SECRET_VALUE),
        deployment("web", replicas=2, resources={"requests": {"cpu": "100m"}}),
        manifest(
            "StatefulSet",
            "web",
            spec={
                "replicas": 3,
                "serviceName": "web",
                "selector": {"matchLabels": {"app": "db"}},
                "template": _template("db"),
            },
        ),
        manifest(
            "DaemonSet",
            "agent",
            spec={"selector": {"matchLabels": {"app": "agent"}}, "template": _template("agent")},
        ),
        manifest("Job", "migrate", spec=_job_spec("migrate", completions=3, parallelism=2)),
        manifest("Job", "broken", spec=_job_spec("broken", backoffLimit=1)),
        manifest(
            "CronJob",
            "report",
            spec={
                "schedule": "*/5 * * * *",
                "timeZone": "Europe/Berlin",
                "jobTemplate": {"spec": _job_spec("report")},
            },
        ),
        manifest(
            "CronJob",
            "nightly",
            spec={"schedule": "0 3 * * *", "suspend": True, "jobTemplate": {"spec": _job_spec("nightly")}},
        ),
        manifest("HorizontalPodAutoscaler", "web", spec=hpa_spec),
        manifest("HorizontalPodAutoscaler", "idle", spec=idle_spec),  # not decided on yet
    ]


QUEUE = manifest("Job", "queue", spec=_job_spec("queue", parallelism=2))  # a work queue


def workload_store(path: Path, now: float = NOW) -> Store:
    """Every kind in one store: the controller's first pass made the pods; the agents say they
    run (one of `migrate`'s succeeded, `broken`'s failed); then the states are written as a
    later pass would have left them (the StatefulSet's rollout failed, the Deployment's is
    fine), and a Job (`queue`) is added that no pass has seen yet."""
    store = Store(f"sqlite:///{path / 'state.db'}")
    store.apply_revision(Revision("git:repo", "a" * 40), manifests(), [], now - 100)
    for name in ("n1", "n2"):
        store.register_node(
            Node(NodeName(name), f"192.0.2.{name[-1]}", 4000, 8 * 2**30), f"t{name}", now - 90
        )
    reconcile_once(store, now - 60)
    succeeded = False
    by_node: dict[str, list[PodStatus]] = {}
    for pod in store.pods():
        assert pod.node is not None
        if pod.owner == MIGRATE and not succeeded:
            status = PodStatus(pod.id, "Succeeded", exit_code=0)
            succeeded = True
        elif pod.owner == BROKEN:
            status = PodStatus(pod.id, "Failed", reason="exited with code 1", exit_code=1)
        else:
            status = PodStatus(pod.id, "Running", ready=True, pod_ip="172.17.0.9")
        by_node.setdefault(pod.node, []).append(status)
    for name, statuses in by_node.items():
        store.heartbeat(name, statuses, now - 50)

    rollouts = store.rollouts()
    rollouts[DB] = dataclasses.replace(
        rollouts[DB], status="failed", reason="progress deadline exceeded: no progress for 600s"
    )
    store.save_rollouts(rollouts, now - 40)
    kept = store.workload_states()
    migrate = kept[MIGRATE]
    assert isinstance(migrate, JobState)
    secret_reason = f"BackoffLimitExceeded: 2 failure(s), backoffLimit 1; last log said token={SECRET_VALUE}"
    store.save_workload_states(
        {
            MIGRATE: dataclasses.replace(migrate, started_at=now - 125, succeeded=2, created=3),
            BROKEN: JobState(
                BROKEN,
                "t",
                started_at=now - 400,
                failed=2,
                condition="Failed",
                reason=secret_reason,
                finished_at=now - 310,
            ),
            ObjectKey("Job", "default", DONE_RUN.name): JobState(
                ObjectKey("Job", "default", DONE_RUN.name),
                "t",
                started_at=DONE_RUN.scheduled_at,
                succeeded=1,
                condition="Complete",
                reason="1/1 pods succeeded",
                finished_at=DONE_RUN.scheduled_at + 45,
            ),
            ObjectKey("Job", "default", ACTIVE_RUN.name): JobState(
                ObjectKey("Job", "default", ACTIVE_RUN.name), "t", started_at=ACTIVE_RUN.scheduled_at
            ),
            REPORT: CronState(
                REPORT,
                created_at=now - 3600,
                last_schedule=ACTIVE_RUN.scheduled_at,
                runs=(DONE_RUN, ACTIVE_RUN),
                reason=f"started {ACTIVE_RUN.name} for 2027-01-15 09:00 CET; note {SECRET_VALUE}",
            ),
            NIGHTLY: CronState(NIGHTLY, created_at=now - 3600, reason="suspended"),
            HPA: ScaleState(
                HPA,
                WEB,
                4,
                last_scale_at=now - 45,
                metrics=(MetricStatus("cpu", "83%", "60%", 4),),
                reason="scaled up from 3 to 4: cpu 83% of requests against a target of 60%",
                unsupported=("External metric queue_depth",),
            ),
        },
        now - 30,
    )
    store.apply_revision(Revision("git:repo", "b" * 40), [*manifests(), QUEUE], [], now - 20)
    return store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return workload_store(tmp_path)


@pytest.fixture
def client(store: Store) -> TestClient:
    return TestClient(create_app(store, join_token="j", sources=["git:repo"], clock=lambda: NOW))


def by_name(answer: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(row["kind"], row["name"]): row for row in answer}


def test_workloads_are_deployments_statefulsets_and_daemonsets_each_with_its_own_state(
    client: TestClient,
) -> None:
    answer = client.get("/api/v1/workloads").json()
    assert [(w["kind"], w["namespace"], w["name"]) for w in answer] == [
        ("Deployment", "default", "web"),
        ("StatefulSet", "default", "web"),
        ("DaemonSet", "default", "agent"),
    ]
    rows = by_name(answer)
    web, db, agent = rows["Deployment", "web"], rows["StatefulSet", "web"], rows["DaemonSet", "agent"]
    assert web["deployment"] == db["deployment"] == "default/web"  # the ref, kept for old readers
    # Looked up by kind and name: the StatefulSet's failed rollout is not the Deployment's.
    assert (db["state"], db["reason"]) == ("failed", "progress deadline exceeded: no progress for 600s")
    assert web["state"] != "failed" and web["reason"] == ""
    # The autoscaler set the Deployment to 4 replicas (the source says 2).
    assert (web["desired"], web["total"], web["autoscaler"]) == (4, 2, "default/web")
    assert web["step"] == "scaling: 2 -> 4 pods"
    assert (db["desired"], db["total"], db["step"]) == (3, 1, "creating web-1 (2 missing)")
    assert (agent["desired"], agent["ready"], agent["autoscaler"]) == (2, 2, None)  # one per node
    for w in answer:
        assert {"strategy", "template_hash", "updated", "available", "complete", "history", "error"} <= set(w)


def test_jobs_show_condition_completions_counters_and_times_cron_runs_among_them(client: TestClient) -> None:
    answer = client.get("/api/v1/jobs").json()
    assert [j["name"] for j in answer] == ["broken", "migrate", "queue", DONE_RUN.name, ACTIVE_RUN.name]
    jobs = {j["name"]: j for j in answer}
    migrate = jobs["migrate"]
    assert (migrate["condition"], migrate["completions"], migrate["parallelism"]) == ("Running", "2/3", 2)
    assert (migrate["active"], migrate["succeeded"], migrate["failed"]) == (1, 2, 0)  # one pod of two ended
    assert (migrate["started_at"], migrate["finished_at"], migrate["duration"]) == (NOW - 125, None, 125.0)
    assert migrate["owner"] is None
    broken = jobs["broken"]
    assert (broken["condition"], broken["completions"], broken["failed"]) == ("Failed", "0/1", 2)
    assert broken["duration"] == 90.0  # from start to finish
    assert broken["reason"] == (
        "BackoffLimitExceeded: 2 failure(s), backoffLimit 1; last log said token=[redacted]"
    )
    queue = jobs["queue"]  # the controller has not seen it yet
    assert (queue["condition"], queue["completions"], queue["wanted"], queue["duration"]) == (
        "Pending",
        "0/work queue",
        None,
        None,
    )
    done, running = jobs[DONE_RUN.name], jobs[ACTIVE_RUN.name]
    assert (done["owner"], done["condition"], done["completions"], done["duration"]) == (
        "default/report",
        "Complete",
        "1/1",
        45.0,
    )
    assert (running["owner"], running["condition"], running["duration"]) == (
        "default/report",
        "Running",
        30.0,
    )


def test_cronjobs_show_schedule_zone_next_runs_active_runs_and_why(client: TestClient) -> None:
    cronjobs = {c["name"]: c for c in client.get("/api/v1/cronjobs").json()}
    report = cronjobs["report"]
    assert (report["schedule"], report["time_zone"], report["suspend"]) == (
        "*/5 * * * *",
        "Europe/Berlin",
        False,
    )
    assert report["next_run"] == 1_800_000_300.0
    assert report["next_runs"] == [1_800_000_300.0, 1_800_000_600.0, 1_800_000_900.0]
    assert report["next_run_text"] == "2027-01-15 09:05 CET"  # in the CronJob's zone
    assert (report["last_schedule"], report["active"]) == (ACTIVE_RUN.scheduled_at, [ACTIVE_RUN.name])
    assert report["runs"] == [
        {"job": DONE_RUN.name, "scheduled_at": DONE_RUN.scheduled_at, "outcome": "Complete"},
        {"job": ACTIVE_RUN.name, "scheduled_at": ACTIVE_RUN.scheduled_at, "outcome": None},
    ]
    assert report["reason"] == f"started {ACTIVE_RUN.name} for 2027-01-15 09:00 CET; note [redacted]"
    nightly = cronjobs["nightly"]
    assert (nightly["suspend"], nightly["next_run"], nightly["time_zone"]) == (True, None, "UTC")
    assert len(nightly["next_runs"]) == 3  # the schedule's times, should it be resumed
    assert (nightly["last_schedule"], nightly["active"], nightly["reason"]) == (None, [], "suspended")


def test_autoscalers_show_target_bounds_replicas_metrics_and_the_last_decision(client: TestClient) -> None:
    autoscalers = {a["name"]: a for a in client.get("/api/v1/autoscalers").json()}
    web = autoscalers["web"]
    assert web["target"] == {"kind": "Deployment", "name": "web"}
    assert (web["min_replicas"], web["max_replicas"], web["replicas"]) == (2, 6, 4)
    assert web["metrics"] == [
        {"name": "cpu", "current": "83%", "target": "60%", "proposal": 4, "text": "cpu 83%/60%"}
    ]
    assert web["reason"] == "scaled up from 3 to 4: cpu 83% of requests against a target of 60%"
    assert (web["unsupported"], web["last_scale_at"]) == (["External metric queue_depth"], NOW - 45)
    idle = autoscalers["idle"]  # no pass has decided on it: what it will measure
    assert idle["target"] == {"kind": "StatefulSet", "name": "web"}
    assert (idle["min_replicas"], idle["max_replicas"], idle["replicas"]) == (1, 5, None)
    assert [m["text"] for m in idle["metrics"]] == ["memory unknown/300Mi"]


def test_status_counts_each_kind(client: TestClient) -> None:
    counts = client.get("/api/v1/status").json()["counts"]
    assert counts["workloads_by_kind"] == {"Deployment": 1, "StatefulSet": 1, "DaemonSet": 1}
    assert (counts["workloads"], counts["jobs"], counts["cronjobs"], counts["autoscalers"]) == (3, 5, 2, 2)
    assert counts["jobs_by_condition"] == {"Complete": 1, "Failed": 1, "Pending": 1, "Running": 2}


def test_the_workloads_page_has_a_section_per_kind(client: TestClient) -> None:
    text = client.get("/workloads").text
    for section in ("deployments", "statefulsets", "daemonsets", "jobs", "cronjobs", "autoscalers"):
        assert f'<section id="{section}">' in text
    assert "<th>StatefulSet</th>" in text and '<th class="num">Desired nodes</th>' in text
    assert "creating web-1 (2 missing)" in text  # the StatefulSet's next ordinal
    assert "replicas set by autoscaler default/web" in text
    # Jobs: a coloured condition, a completions bar, the reason (redacted).
    assert '<td class="bad">Failed</td>' in text and '<td class="ok">Complete</td>' in text
    assert 'aria-label="2/3 completions"' in text and "0 succeeded (work queue)" in text
    assert "started by CronJob default/report" in text
    assert "token=[redacted]" in text
    # CronJobs: schedule and zone, next run as a date and how soon, the last run, suspended.
    assert "<code>*/5 * * * *</code>" in text and "Europe/Berlin" in text
    assert "2027-01-15 09:05 CET" in text and ">in 4m</time>" in text
    assert f"{ACTIVE_RUN.name}<br>" in text and '<span class="muted">suspended</span>' in text
    # Autoscalers: target, bounds, replicas, each metric against its target, why.
    assert "Deployment/web" in text and "cpu <b>83%</b> / 60%" in text
    assert 'memory <b class="warn">unknown</b> / 300Mi' in text
    assert "scaled up from 3 to 4" in text
    assert SECRET_VALUE not in text


def test_the_overview_counts_jobs_cronjobs_and_autoscalers(client: TestClient) -> None:
    text = client.get("/").text
    assert "workloads<b>3</b><small>Deployment 1, StatefulSet 1, DaemonSet 1</small>" in text
    assert "jobs<b>5</b><small>Complete 1, Failed 1, Pending 1, Running 2</small>" in text
    assert "cronjobs<b>2</b>" in text and "autoscalers<b>2</b>" in text


def test_no_answer_carries_the_secret_value(client: TestClient) -> None:
    for path in (
        "/api/v1/workloads",
        "/api/v1/jobs",
        "/api/v1/cronjobs",
        "/api/v1/autoscalers",
        "/workloads",
    ):
        response = client.get(path)
        assert response.status_code == 200, path
        assert SECRET_VALUE not in response.text, path


def test_a_cronjob_whose_zone_cannot_be_read_says_so_and_the_others_are_shown(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    bad = manifest(
        "CronJob", "bad", spec={"schedule": "0 * * * *", "timeZone": "Mars/Olympus", "jobTemplate": {}}
    )
    good = manifest("CronJob", "good", spec={"schedule": "0 * * * *", "jobTemplate": {}})
    store.apply_revision(Revision("git:repo", "a" * 40), [bad, good], [], NOW - 10)
    client = TestClient(create_app(store, join_token="j", clock=lambda: NOW))
    cronjobs = {c["name"]: c for c in client.get("/api/v1/cronjobs").json()}
    assert "spec.timeZone" in cronjobs["bad"]["error"]
    assert (cronjobs["bad"]["next_run"], cronjobs["bad"]["next_runs"]) == (None, [])
    assert cronjobs["good"]["next_run"] == 1_800_003_600.0 and cronjobs["good"]["error"] == ""
    assert client.get("/workloads").status_code == 200


@contextmanager
def served(store: Store, clock: Callable[[], float]) -> Iterator[str]:
    """The real app on a loopback port, for `gitops status` to read (no controller runs)."""
    app = create_app(store, join_token="j", sources=["git:repo"], clock=clock)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the app did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _table(lines: list[str], heading: str) -> tuple[list[str], list[str]]:
    """The heading's columns and the rows below it, up to the blank line."""
    start = next(i for i, line in enumerate(lines) if line.startswith(heading + " "))
    end = lines.index("", start)
    return lines[start].split(), lines[start + 1 : end]


def test_gitops_status_prints_workload_kinds_and_tables_of_jobs_cronjobs_and_autoscalers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()  # `gitops status` tells ages by its own clock
    store = workload_store(tmp_path, now - 30)
    with served(store, time.time) as url:
        capsys.readouterr()
        assert main(["status", "--server", url]) == 0
        out = capsys.readouterr().out
    lines = out.splitlines()

    heading, rows = _table(lines, "WORKLOAD")
    assert heading[:3] == ["WORKLOAD", "KIND", "DESIRED"]
    assert [r.split()[:3] for r in rows] == [
        ["default/web", "Deployment", "4"],
        ["default/web", "StatefulSet", "3"],
        ["default/agent", "DaemonSet", "2"],
    ]
    assert "FAILED: progress deadline exceeded" in rows[1]

    heading, rows = _table(lines, "JOB")
    assert heading == ["JOB", "COMPLETIONS", "DURATION", "STATUS", "REASON"]
    jobs = {r.split()[0]: r for r in rows}
    assert jobs["default/migrate"].split()[1:4] == ["2/3", "2m", "Running"]
    assert jobs["default/broken"].split()[1:4] == ["0/1", "90s", "Failed"]
    assert jobs["default/broken"].endswith("last log said token=[redacted]")
    assert jobs["default/queue"].split()[1:5] == ["0/work", "queue", "-", "Pending"]
    assert jobs[f"default/{DONE_RUN.name}"].split()[1:4] == ["1/1", "45s", "Complete"]

    heading, rows = _table(lines, "CRONJOB")
    assert heading == ["CRONJOB", "SCHEDULE", "SUSPEND", "ACTIVE", "LAST-SCHEDULE", "NEXT-RUN"]
    cron = {r.split()[0]: r for r in rows}
    report = cron["default/report"]
    assert "*/5 * * * *" in report
    assert report.split()[6:8] == ["False", "1"]
    assert " in " in report and report.endswith(")")  # in 3m (2026-12-02 01:10 CET)
    nightly = cron["default/nightly"]
    assert nightly.split()[6:10] == ["True", "0", "<none>", "<suspended>"]

    heading, rows = _table(lines, "AUTOSCALER")
    assert heading == ["AUTOSCALER", "TARGET", "MIN", "MAX", "REPLICAS", "METRICS", "REASON"]
    scalers = {r.split()[0]: r for r in rows}
    assert scalers["default/web"].split()[1:6] == ["Deployment/web", "2", "6", "4", "cpu"]
    assert "cpu 83%/60%" in scalers["default/web"] and scalers["default/web"].endswith("target of 60%")
    assert scalers["default/idle"].split()[1:5] == ["StatefulSet/web", "1", "5", "-"]
    assert SECRET_VALUE not in out


def test_gitops_status_prints_no_job_tables_when_there_are_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.apply_revision(Revision("git:repo", "a" * 40), [deployment("web", replicas=1)], [], time.time())
    with served(store, time.time) as url:
        capsys.readouterr()
        assert main(["status", "--server", url]) == 0
        out = capsys.readouterr().out
    assert any(line.split()[:2] == ["default/web", "Deployment"] for line in out.splitlines())
    for heading in ("JOB ", "CRONJOB ", "AUTOSCALER "):
        assert not any(line.startswith(heading) for line in out.splitlines())
