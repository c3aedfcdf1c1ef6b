"""Pods of several containers as people read them: kubectl's READY (ready app containers of
all) and STATUS (`Init:1/2`, `Running`, `CrashLoopBackOff`, `OOMKilled`), each container's
state, restarts, exit code and reason with init containers and sidecars marked, the QoS
class and links to the logs, alike in the JSON API, `gitops status` and the status page,
all from the one redacted read model."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from gitops.api.app import create_app
from gitops.api.readmodel import ReadModel
from gitops.cli import main
from gitops.controller import reconcile_once
from gitops.model import ContainerStatus, Manifest, Node, NodeName, Phase, Pod, PodStatus, Revision
from gitops.store import Store
from tests.planner.factories import deployment, manifest, secret
from tests.servers import free_port

NOW = 1_000.0
LATE = "Late-Rotated-Value-5521"  # in a report before it is a Secret's value


def _container(name: str, image: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": image, "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}}, **extra}


def app_deployment() -> Manifest:
    """Two app containers, an init container and a sidecar; limits (so requests) on each."""
    template = {
        "metadata": {"labels": {"app": "app"}},
        "spec": {
            "initContainers": [
                _container("setup", "setup:1"),
                _container("proxy", "proxy:1", restartPolicy="Always"),
            ],
            "containers": [_container("web", "web:1"), _container("worker", "worker:1")],
        },
    }
    spec = {"replicas": 1, "selector": {"matchLabels": {"app": "app"}}, "template": template}
    return manifest("Deployment", "app", spec=spec)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """The four-container `app` (Guaranteed), `burst` (requests only: Burstable) and `plain`
    (no resources: BestEffort), each one pod bound to node n1."""
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    manifests = [
        app_deployment(),
        deployment("burst", replicas=1, resources={"requests": {"cpu": "100m"}}),
        deployment("plain", replicas=1),
    ]
    store.apply_revision(Revision("git:repo", "a" * 40), manifests, [], NOW - 50)
    store.register_node(Node(NodeName("n1"), "192.0.2.1", 4000, 8 * 2**30), "t1", NOW - 40)
    reconcile_once(store, NOW - 30)
    return store


def pod_of(store: Store, deployment_name: str) -> Pod:
    (pod,) = (p for p in store.pods() if p.owner.name == deployment_name)
    return pod


def report(
    store: Store,
    pod: Pod,
    phase: Phase,
    ready: bool,
    reason: str,
    *containers: ContainerStatus,
    **extra: Any,
) -> None:
    """What the agent of n1 says of `pod` (an agent reports no containers for a pod of one)."""
    restarts = sum(c.restarts for c in containers)
    status = PodStatus(
        pod.id, phase, ready, reason, "172.17.0.5", restarts=restarts, containers=containers, **extra
    )
    store.heartbeat("n1", [status], NOW - 10)


def client_of(store: Store) -> TestClient:
    return TestClient(create_app(store, join_token="j", sources=["git:repo"], clock=lambda: NOW))


def api_pod(client: TestClient, pod: Pod) -> dict[str, Any]:
    found: dict[str, Any] = next(p for p in client.get("/api/v1/pods").json() if p["id"] == pod.id)
    return found


INIT = ContainerStatus("setup", "terminated", exit_code=0, reason="Completed", init=True)
SIDECAR = ContainerStatus("proxy", "running", ready=True, init=True)
WEB = ContainerStatus("web", "running", ready=True)
WORKER = ContainerStatus("worker", "running", ready=True)
RUNNING = (INIT, SIDECAR, WEB, WORKER)
WAITING_APPS = (
    ContainerStatus("web", reason="PodInitializing"),
    ContainerStatus("worker", reason="PodInitializing"),
)
OOM_KILLED = ContainerStatus(
    "worker",
    "terminated",
    restarts=2,
    exit_code=137,
    reason="OOMKilled (exit code 137)",
    last_log="alloc 2Gi\n",
)
CRASH_LOOP = ContainerStatus(
    "worker",
    "waiting",
    restarts=3,
    exit_code=137,
    reason="CrashLoopBackOff: OOMKilled (exit code 137); restarting in 40s",
)


def test_two_app_containers_running_ready_are_2_of_2_with_init_and_sidecar_listed(store: Store) -> None:
    pod = pod_of(store, "app")
    report(store, pod, "Running", True, "", *RUNNING)
    shown = api_pod(client_of(store), pod)
    assert (shown["ready_containers"], shown["status"], shown["qos_class"]) == (
        "2/2",
        "Running",
        "Guaranteed",
    )
    assert [(c["name"], c["kind"], c["image"], c["state"], c["ready"]) for c in shown["containers"]] == [
        ("setup", "init", "setup:1", "terminated", False),
        ("proxy", "sidecar", "proxy:1", "running", True),
        ("web", "app", "web:1", "running", True),
        ("worker", "app", "worker:1", "running", True),
    ]
    assert shown["containers"][0]["exit_code"] == 0 and shown["containers"][0]["reason"] == "Completed"
    base = f"/api/v1/pods/default/{pod.name}/logs"
    assert shown["logs_url"] == base
    assert [c["logs_url"] for c in shown["containers"]] == [
        f"{base}?container={name}" for name in ("setup", "proxy", "web", "worker")
    ]
    # What the answer had before pods had containers is all still there, unchanged.
    assert {"id", "phase", "ready", "reason", "restarts", "exit_code", "last_log", "image"} <= set(shown)
    assert (shown["phase"], shown["ready"], shown["image"]) == ("Running", True, "web:1")


@pytest.mark.parametrize(
    ("phase", "containers", "ready", "status"),
    [
        pytest.param(
            "Pending",
            (
                ContainerStatus("setup", "running", init=True),
                ContainerStatus("proxy", init=True),
                *WAITING_APPS,
            ),
            "0/2",
            "Init:0/2",
            id="first-init-container-runs",
        ),
        pytest.param(
            "Pending",
            (INIT, ContainerStatus("proxy", "waiting", reason="PodInitializing", init=True), *WAITING_APPS),
            "0/2",
            "Init:1/2",
            id="sidecar-starts",
        ),
        pytest.param("Pending", (INIT, SIDECAR, *WAITING_APPS), "0/2", "PodInitializing", id="apps-start"),
        pytest.param(
            "Failed",
            (
                ContainerStatus("setup", "terminated", exit_code=1, reason="exited with code 1", init=True),
                ContainerStatus("proxy", init=True),
                *WAITING_APPS,
            ),
            "0/2",
            "Init:Error",
            id="init-failed",
        ),
        pytest.param(
            "Pending",
            (
                ContainerStatus(
                    "setup", restarts=2, reason="CrashLoopBackOff: exited with code 1", init=True
                ),
                ContainerStatus("proxy", init=True),
                *WAITING_APPS,
            ),
            "0/2",
            "Init:CrashLoopBackOff",
            id="init-crash-loop",
        ),
        pytest.param("Running", (INIT, SIDECAR, WEB, OOM_KILLED), "1/2", "OOMKilled", id="oom-killed"),
        pytest.param("Running", (INIT, SIDECAR, WEB, CRASH_LOOP), "1/2", "CrashLoopBackOff", id="crash-loop"),
        pytest.param(
            "Running",
            (
                INIT,
                ContainerStatus(
                    "proxy", restarts=1, exit_code=1, reason="CrashLoopBackOff: exited with code 1", init=True
                ),
                WEB,
                WORKER,
            ),
            "2/2",
            "CrashLoopBackOff",
            id="sidecar-crash-loop",
        ),
        pytest.param(
            "Running",
            (INIT, SIDECAR, WEB, ContainerStatus("worker", "running", reason="Readiness probe failed: 503")),
            "1/2",
            "Running",
            id="not-ready",
        ),
    ],
)
def test_ready_and_status_say_what_kubectl_says(
    store: Store, phase: Phase, containers: tuple[ContainerStatus, ...], ready: str, status: str
) -> None:
    pod = pod_of(store, "app")
    report(store, pod, phase, False, "from the agent", *containers)
    shown = api_pod(client_of(store), pod)
    assert (shown["ready_containers"], shown["status"]) == (ready, status)
    assert shown["phase"] == phase  # the phase is kept beside


def test_a_pod_of_one_container_has_one_container_whose_status_is_the_pods(store: Store) -> None:
    burst, plain = pod_of(store, "burst"), pod_of(store, "plain")
    bound = api_pod(client_of(store), plain)
    assert (bound["reason"], bound["ready_containers"], bound["status"]) == (
        "scheduled on n1",
        "0/1",
        "Pending",
    )
    # The scheduler's note of the bind is the pod's reason, not its container's.
    assert [(c["state"], c["reason"]) for c in bound["containers"]] == [("waiting", "")]
    report(store, burst, "Running", True, "")
    report(
        store, plain, "Running", False, "CrashLoopBackOff: exited with code 2; restarting in 10s", exit_code=2
    )
    client = client_of(store)
    running, crashing = api_pod(client, burst), api_pod(client, plain)
    assert (running["ready_containers"], running["status"]) == ("1/1", "Running")
    assert [(c["name"], c["kind"], c["state"], c["ready"]) for c in running["containers"]] == [
        ("main", "app", "running", True)
    ]
    assert (crashing["ready_containers"], crashing["status"]) == ("0/1", "CrashLoopBackOff")
    (only,) = crashing["containers"]
    assert (only["state"], only["exit_code"]) == ("waiting", 2)
    assert only["reason"] == "CrashLoopBackOff: exited with code 2; restarting in 10s"


def test_each_pod_has_its_qos_class(store: Store) -> None:
    client = client_of(store)
    classes = {p["owner"]: p["qos_class"] for p in client.get("/api/v1/pods").json()}
    assert classes == {
        "Deployment default/app": "Guaranteed",
        "Deployment default/burst": "Burstable",
        "Deployment default/plain": "BestEffort",
    }
    text = client.get("/pods").text
    assert all(f" · {qos} · " in text for qos in ("Guaranteed", "Burstable", "BestEffort"))
    assert "<th>QoS class</th>" not in text  # in each pod's cell, not a column of its own


def test_an_oom_killed_container_on_the_page(store: Store) -> None:
    pod = pod_of(store, "app")
    report(
        store,
        pod,
        "Running",
        False,
        "container worker: OOMKilled (exit code 137)",
        INIT,
        SIDECAR,
        WEB,
        OOM_KILLED,
    )
    client = client_of(store)
    listing = client.get("/pods").text
    assert f'<a href="/pods/default/{pod.name}">default/{pod.name}</a>' in listing
    assert '<td class="num muted" title="ready app containers">1/2</td>' in listing
    assert '<span class="bad">OOMKilled</span><br><small class="muted">Running</small>' in listing
    assert "container worker: OOMKilled (exit code 137)" in listing
    # Its pod's own logs URL would ask which container: a link to each app container's.
    logs = f"/api/v1/pods/default/{pod.name}/logs"
    assert (
        f'logs: <a href="{logs}?container=web">web</a>, <a href="{logs}?container=worker">worker</a>'
        in listing
    )
    burst = pod_of(store, "burst")
    assert f'<a href="/api/v1/pods/default/{burst.name}/logs">logs</a>' in listing
    assert "of 1 pods (filtered from 3)" in client.get("/pods", params={"q": "oomkilled"}).text

    detail = client.get(f"/pods/default/{pod.name}")
    assert detail.status_code == 200
    assert f"<title>gitops: Pod default/{pod.name}</title>" in detail.text
    assert '<a href="/pods" aria-current="page">Pods</a>' in detail.text
    assert '<tr><th scope="row">QoS class</th><td>Guaranteed</td></tr>' in detail.text
    rows = detail.text.split("<h2>Containers</h2>")[1].split("<tr>")[2:]
    assert [r.split("</b>")[0].removeprefix("<td><b>") for r in rows] == ["setup", "proxy", "web", "worker"]
    assert '<span class="chip">init</span>' in rows[0] and '<span class="chip">sidecar</span>' in rows[1]
    assert "chip" not in rows[2] and "chip" not in rows[3]
    worker = rows[3]
    assert '<span class="bad">terminated</span>' in worker and '<td class="num">137</td>' in worker
    assert "OOMKilled (exit code 137)" in worker and "alloc 2Gi" in worker
    assert f'href="/api/v1/pods/default/{pod.name}/logs?container=worker"' in worker
    partial = client.get(f"/pods/default/{pod.name}?partial=1")
    assert "<html" not in partial.text and "OOMKilled (exit code 137)" in partial.text


def test_a_pod_page_of_a_pod_that_is_not_there_is_a_404_that_escapes_the_name(store: Store) -> None:
    response = client_of(store).get("/pods/default/<b>gone")
    assert response.status_code == 404
    assert "No such pod" in response.text and "default/&lt;b&gt;gone" in response.text
    assert "<b>gone" not in response.text


def test_other_containers_reasons_are_listed_under_the_pods_own(store: Store) -> None:
    pod = pod_of(store, "app")
    sidecar = ContainerStatus("proxy", "running", reason="Readiness probe failed: 503", init=True)
    report(
        store,
        pod,
        "Running",
        False,
        "container worker: OOMKilled (exit code 137)",
        INIT,
        sidecar,
        WEB,
        OOM_KILLED,
    )
    listing = client_of(store).get("/pods").text
    assert (
        '<small><span class="chip">sidecar</span><b>proxy</b>: Readiness probe failed: 503</small>' in listing
    )
    assert "<b>worker</b>:" not in listing  # the pod's own reason says it already
    assert "<b>setup</b>:" not in listing  # an init container that completed says nothing worth a line


def test_a_secret_value_in_a_container_reason_is_redacted_on_the_page_and_in_the_api(store: Store) -> None:
    pod = pod_of(store, "app")
    worker = ContainerStatus(
        "worker",
        "terminated",
        False,
        1,
        1,
        f"exited with code 1: bad password {LATE}",
        last_log=f"pw={LATE}\n",
    )
    report(store, pod, "Running", False, "container worker: exited with code 1", INIT, SIDECAR, WEB, worker)
    assert any(LATE in c.reason for c in pod_of(store, "app").containers)  # not a Secret yet: kept as said
    store.apply_revision(
        Revision("git:repo", "c" * 40), [*store.desired(), secret("rotated", pw=LATE)], [], NOW - 5
    )

    client = client_of(store)
    answers = {
        path: client.get(path).text
        for path in (
            "/api/v1/pods",
            "/api/v1/pods?limit=1",
            "/pods",
            f"/pods/default/{pod.name}",
            "/pods?q=password",
        )
    }
    for path, text in answers.items():
        assert LATE not in text, path
    shown = api_pod(client, pod)["containers"][3]
    assert shown["reason"] == "exited with code 1: bad password [redacted]"
    assert shown["last_log"] == "pw=[redacted]\n"
    assert "bad password [redacted]" in answers["/pods"]
    assert "bad password [redacted]" in answers[f"/pods/default/{pod.name}"]
    one = ReadModel(store, ["git:repo"], clock=lambda: NOW).pod("default", pod.name)
    assert one is not None and LATE not in str(one)


def test_the_read_model_answers_for_one_pod_as_for_the_list(store: Store) -> None:
    pod = pod_of(store, "app")
    report(store, pod, "Running", True, "", *RUNNING)
    reads = ReadModel(store, ["git:repo"], clock=lambda: NOW)
    assert reads.pod("default", pod.name) == next(p for p in reads.pods() if p["id"] == pod.id)
    assert reads.pod("default", "nope") is None


def test_the_overview_counts_objects_per_kind_and_revisions_group_repeated_warnings(store: Store) -> None:
    warnings = [
        f"apps/a{i}.yaml:5:3: Deployment default/a{i}: spec.template.spec.affinity: ignored (warning)"
        for i in range(4)
    ]
    store.apply_revision(
        Revision("git:repo", "d" * 40),
        [*store.desired(), secret("s", k="value")],
        [*warnings, "one of a kind (warning)"],
        NOW - 5,
    )
    client = client_of(store)
    assert "objects<b>4</b><small>Deployment 3, Secret 1</small>" in client.get("/").text
    text = client.get("/revisions").text
    assert "<summary>5 warning(s)</summary>" in text
    assert (
        "<li><pre>warning (4x): spec.template.spec.affinity: ignored \u2014 "
        "apps/a0.yaml:5:3, apps/a1.yaml:5:3, apps/a2.yaml:5:3 and 1 more</pre></li>"
    ) in text
    assert "<li><pre>one of a kind (warning)</pre></li>" in text
    assert "apps/a3.yaml:5:3: Deployment" not in text


@contextmanager
def served(store: Store) -> Iterator[str]:
    """The real app on a loopback port, for `gitops status` to read (no controller runs)."""
    app = create_app(store, join_token="j", sources=["git:repo"], clock=time.time)
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


def test_gitops_status_shows_ready_status_qos_kinds_and_the_containers_with_something_to_say(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    app, burst, plain = pod_of(store, "app"), pod_of(store, "burst"), pod_of(store, "plain")
    reason = "container worker: CrashLoopBackOff: OOMKilled (exit code 137); restarting in 40s"
    report(store, app, "Running", False, reason, INIT, SIDECAR, WEB, CRASH_LOOP)
    report(store, burst, "Running", True, "")
    with served(store) as url:
        capsys.readouterr()
        assert main(["status", "--server", url]) == 0
        out = capsys.readouterr().out
    lines = out.splitlines()
    assert "Objects: 3 (Deployment 3)" in out
    heading = next(line for line in lines if line.startswith("POD "))
    assert heading.split()[:8] == ["POD", "READY", "STATUS", "RESTARTS", "QOS", "NODE", "IP", "REASON"]
    row = next(line for line in lines if line.startswith(f"default/{app.name}"))
    assert row.split()[1:7] == ["1/2", "CrashLoopBackOff", "3", "Guaranteed", "n1", "172.17.0.5"]
    assert row.endswith(reason)
    below = lines[lines.index(row) + 1 :][:2]
    assert below[0].split()[:6] == ["app", "worker", "waiting", "3", "restarts", "CrashLoopBackOff:"]
    assert below[0].endswith("OOMKilled (exit code 137); restarting in 40s")
    assert not below[1].startswith("    ")  # the init container, the sidecar and web have nothing to say
    assert next(line for line in lines if line.startswith(f"default/{burst.name}")).split()[1:5] == [
        "1/1",
        "Running",
        "0",
        "Burstable",
    ]
    assert next(line for line in lines if line.startswith(f"default/{plain.name}")).split()[1:5] == [
        "0/1",
        "Pending",
        "0",
        "BestEffort",
    ]


def test_gitops_status_lists_an_initialising_pods_init_containers_marked(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    app = pod_of(store, "app")
    setup = ContainerStatus("setup", "terminated", False, 0, 1, "OOMKilled (exit code 1)", True)
    report(
        store,
        app,
        "Failed",
        False,
        "Init:Error: init container setup: OOMKilled (exit code 1)",
        setup,
        ContainerStatus("proxy", init=True),
        *WAITING_APPS,
    )
    with served(store) as url:
        capsys.readouterr()
        assert main(["status", "--server", url]) == 0
        lines = capsys.readouterr().out.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith(f"default/{app.name}"))
    assert lines[row].split()[1:3] == ["0/2", "Init:OOMKilled"]
    assert lines[row + 1].split() == [
        "init",
        "setup",
        "terminated",
        "0",
        "restarts",
        "OOMKilled",
        "(exit",
        "code",
        "1)",
    ]


def test_one_pod_is_served_with_its_containers_and_an_unknown_one_is_a_404(store: Store) -> None:
    pod = pod_of(store, "app")
    report(store, pod, "Running", True, "", *RUNNING)
    client = client_of(store)
    one = client.get(f"/api/v1/pods/{pod.namespace}/{pod.name}").json()
    assert one == api_pod(client, pod)
    assert [c["name"] for c in one["containers"]] == [c["name"] for c in api_pod(client, pod)["containers"]]
    missing = client.get("/api/v1/pods/default/nothing")
    assert (missing.status_code, missing.json()["detail"]) == (404, "no pod default/nothing")
