"""Container probes: startup, liveness and readiness, with Kubernetes' semantics.

Per running container the `Prober` keeps counters and decides, each time it is asked:

- while a startup probe has not succeeded, only it runs; `failureThreshold` failures in a
  row restart the container;
- then liveness: `failureThreshold` failures in a row restart the container;
- readiness: a container is ready after `successThreshold` successes in a row and unready
  after `failureThreshold` failures in a row; it starts unready. Without a readiness probe
  a running container is ready (once its startup probe, if any, has passed).

A probe runs when `initialDelaySeconds` have passed since the container started and
`periodSeconds` since it last ran. The handlers (exec in the container, HTTP GET, a TCP
connect or a gRPC health check to the pod's address) are behind `ProbeHandler`, so the
decisions are tested with a fake clock and fake results.

HTTP, TCP and gRPC probes go to the pod's own address. The agent runs them from the host's
network, so a manifest's `host` would let it reach any address and read the answer back
in the pod's reason; `host` is honoured only when the server allows it
(`--allow-probe-hosts`). What a probe says is cut to `MAX_MESSAGE` characters.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal, Protocol

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gitops.agents.runtime import ContainerInfo, RunKey, Runtime
from gitops.model import Probe
from gitops.redact import Redactor, truncate

Kind = Literal["startup", "liveness", "readiness"]


class ProbeHandler(Protocol):
    def __call__(self, container: ContainerInfo, probe: Probe) -> tuple[bool, str]: ...


@dataclass(frozen=True)
class Verdict:
    ready: bool
    restart: bool = False
    reason: str = ""


@dataclass
class _State:
    started_at: float
    startup_done: bool
    ready: bool = False
    successes: dict[Kind, int] = field(default_factory=dict)
    failures: dict[Kind, int] = field(default_factory=dict)
    last_run: dict[Kind, float] = field(default_factory=dict)
    message: str = ""


MAX_MESSAGE = 300


MAX_LINE = 65_536

# A health answer is a few bytes; a pod sending more gets a failed probe, not our memory.
MAX_GRPC_ANSWER = 1024
SERVING = health_pb2.HealthCheckResponse.SERVING


def probe_url(probe: Probe, host: str) -> httpx.URL:
    """The URL an httpGet probe asks, built from its parts: whatever the path holds (an `@`,
    a `//`) it can only be a path and query on `host`, never another host."""
    path, mark, query = probe.path.partition("?")
    url = httpx.URL(scheme=probe.scheme.lower(), host=host, port=probe.port, path="/" + path.lstrip("/"))
    return url.copy_with(query=query.encode()) if mark else url


def grpc_check(host: str, probe: Probe) -> tuple[bool, str]:
    """Ask `host`'s gRPC health service (grpc.health.v1.Health/Check) about `probe.service`,
    as Kubernetes' grpc probe does: plaintext, one deadline of `timeoutSeconds` for connecting
    and answering; only SERVING is a success."""
    target = f"[{host}]:{probe.port}" if ":" in host else f"{host}:{probe.port}"
    options = [
        ("grpc.enable_http_proxy", 0),  # like HTTP probes: never through the agent's proxy
        ("grpc.max_receive_message_length", MAX_GRPC_ANSWER),
    ]
    try:
        with grpc.insecure_channel(target, options=options) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=probe.service), timeout=probe.timeout_seconds
            )
    except grpc.RpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return False, f"{target}: timeout: no answer within {probe.timeout_seconds}s"
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return False, f"{target}: the server does not implement the gRPC health checking protocol"
        if code == grpc.StatusCode.NOT_FOUND:
            return False, f"{target}: the server does not know the service {probe.service!r}"
        name = code.name if isinstance(code, grpc.StatusCode) else str(code)
        return False, f"{target}: {name}: {exc.details() or 'no details'}"
    status: int = response.status
    if status == SERVING:
        return True, f"{target}: SERVING"
    values = health_pb2.HealthCheckResponse.ServingStatus.values()
    shown = health_pb2.HealthCheckResponse.ServingStatus.Name(status) if status in values else str(status)
    return False, f"{target}: service unhealthy (responded with {shown})"


def real_handler(
    runtime: Runtime,
    allow_hosts: Callable[[], bool] = lambda: False,
    redactor_for: Callable[[ContainerInfo], Redactor] = lambda _: Redactor(),
) -> ProbeHandler:
    """Probes for real: exec through the runtime, HTTP, TCP and gRPC to the pod's address
    (or, for HTTP and TCP, to the probe's `host` when `allow_hosts()` says the server allows
    it; a grpc probe has no host, as in Kubernetes). What a probe says is
    redacted (`redactor_for` gives the pod's Secret values) before it is cut short, so no
    part of a value survives a cut."""

    def handle(container: ContainerInfo, probe: Probe) -> tuple[bool, str]:
        ok, message = _handle(container, probe)
        return ok, truncate(redactor_for(container)(message), MAX_MESSAGE)

    def _handle(container: ContainerInfo, probe: Probe) -> tuple[bool, str]:
        if probe.handler == "exec":
            code, output = runtime.exec(container.id, probe.command, probe.timeout_seconds)
            tail = output.strip().splitlines()[-1:] if output.strip() else []
            if tail and len(tail[0]) > MAX_LINE:
                tail = [f"(a line of {len(tail[0])} characters, not shown)"]
            return code == 0, f"exit code {code}" + (f": {tail[0]}" if tail else "")
        host = probe.host if probe.host and allow_hosts() else container.pod_ip
        if not host:
            return False, "the container has no address to probe yet"
        if probe.handler == "httpGet":
            try:
                url = probe_url(probe, host)
            except httpx.InvalidURL as exc:
                return False, f"cannot probe {probe.path!r} on {host}: {exc}"
            try:
                response = httpx.get(
                    url,
                    timeout=probe.timeout_seconds,
                    headers=dict(probe.headers),
                    verify=False,  # noqa: S501 - Kubernetes skips verification for HTTPS probes too
                    trust_env=False,
                )
            except httpx.HTTPError as exc:
                return False, f"GET {url}: {exc or type(exc).__name__}"
            return 200 <= response.status_code < 400, f"GET {url}: HTTP {response.status_code}"
        if probe.handler == "grpc":
            return grpc_check(host, probe)
        try:
            with socket.create_connection((host, probe.port), timeout=probe.timeout_seconds):
                return True, f"connected to {host}:{probe.port}"
        except OSError as exc:
            return False, f"connect to {host}:{probe.port}: {exc.strerror or exc}"

    return handle


@dataclass
class Prober:
    handler: ProbeHandler
    clock: Callable[[], float]
    workers: int = 8
    _states: dict[RunKey, _State] = field(default_factory=dict)

    def _state(self, pod: RunKey, container: ContainerInfo, has_startup: bool) -> _State:
        state = self._states.get(pod)
        if state is None or state.started_at != container.started_at:
            state = _State(started_at=container.started_at, startup_done=not has_startup)
            self._states[pod] = state
        return state

    def forget(self, keep: set[RunKey]) -> None:
        for pod in list(self._states):
            if pod not in keep:
                del self._states[pod]

    def _due(self, state: _State, kind: Kind, probe: Probe, now: float) -> bool:
        if now < state.started_at + probe.initial_delay_seconds:
            return False
        last = state.last_run.get(kind)
        return last is None or now >= last + probe.period_seconds

    def check(
        self, targets: Sequence[tuple[RunKey, ContainerInfo, Probe | None, Probe | None, Probe | None]]
    ) -> dict[RunKey, Verdict]:
        """Run the due probes of running containers; `targets` hold (pod, container,
        startup, liveness, readiness). Returns a verdict for every target."""
        now = self.clock()
        jobs: list[tuple[RunKey, Kind, ContainerInfo, Probe]] = []
        for pod, container, startup, liveness, readiness in targets:
            state = self._state(pod, container, startup is not None)
            if not state.startup_done:
                if startup is not None and self._due(state, "startup", startup, now):
                    jobs.append((pod, "startup", container, startup))
                continue
            if liveness is not None and self._due(state, "liveness", liveness, now):
                jobs.append((pod, "liveness", container, liveness))
            if readiness is not None and self._due(state, "readiness", readiness, now):
                jobs.append((pod, "readiness", container, readiness))
        results: list[tuple[bool, str]] = []
        if jobs:
            with ThreadPoolExecutor(max_workers=min(self.workers, len(jobs))) as pool:
                results = list(pool.map(lambda job: self.handler(job[2], job[3]), jobs))
        verdicts: dict[RunKey, Verdict] = {}
        restart: dict[RunKey, str] = {}
        for (pod, kind, _, probe), (ok, message) in zip(jobs, results, strict=True):
            state = self._states[pod]
            state.last_run[kind] = now
            if ok:
                state.successes[kind] = state.successes.get(kind, 0) + 1
                state.failures[kind] = 0
            else:
                state.failures[kind] = state.failures.get(kind, 0) + 1
                state.successes[kind] = 0
                state.message = f"{kind.capitalize()} probe failed ({probe.describe()}): {message}"
            if kind == "startup":
                if ok:
                    state.startup_done = True
                elif state.failures[kind] >= probe.failure_threshold:
                    restart[pod] = state.message
            elif kind == "liveness":
                if not ok and state.failures[kind] >= probe.failure_threshold:
                    restart[pod] = state.message
            elif ok and state.successes[kind] >= probe.success_threshold:
                state.ready = True
                state.message = ""
            elif not ok and state.failures[kind] >= probe.failure_threshold:
                state.ready = False
        for pod, _, _, _, readiness in targets:
            state = self._states[pod]
            if pod in restart:
                verdicts[pod] = Verdict(ready=False, restart=True, reason=restart[pod] + "; restarting")
            elif not state.startup_done:
                verdicts[pod] = Verdict(ready=False, reason=state.message or "waiting for the startup probe")
            elif readiness is None:
                verdicts[pod] = Verdict(ready=True)
            else:
                waiting = "" if state.ready else (state.message or "waiting for the readiness probe")
                verdicts[pod] = Verdict(ready=state.ready, reason=waiting)
        return verdicts
