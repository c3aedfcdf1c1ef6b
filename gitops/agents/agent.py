"""The node agent: makes one Docker host run exactly the pods the control plane gave it.

Each tick the agent lists its own containers (by ownership label), reports their status
with its heartbeat, receives its pods and every service's endpoints, and converges:

- a pod without a container gets one (files from ConfigMaps are written to the agent's
  state folder, files from Secrets to a tmpfs, never the node's disk; both are
  bind-mounted read-only);
- a container whose pod is gone, or whose template differs, is stopped and removed;
- an exited container is restarted as its restartPolicy says, with Kubernetes' backoff
  (10 s doubling to 5 min, reset after 10 min of running);
- a container that is already running is adopted as it is: an agent restart never
  recreates or restarts anything.

Then it programs iptables so each service VIP reaches its ready pods: a pod on this node by
its container address, a pod elsewhere by its node's address and published host port. A
rule that cannot be programmed is skipped and reported with the next heartbeat; a failing
iptables is reported too, and never keeps the node from running its pods.

What it reports and logs about a pod (reasons, probe output, log tails) has that pod's
Secret values redacted first, and probe failure text is truncated. Probes go to the pod's
own address; a probe's `host` is honoured only when the server allows it
(`gitops serve --allow-probe-hosts`), since the agent probes from the host's network.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import structlog

from gitops.agents.iptables import IptablesError, IptablesProxy, ServiceRule
from gitops.agents.probes import Prober, Verdict, real_handler
from gitops.agents.runtime import ContainerInfo, ImageMissing, Runtime, RuntimeFailure
from gitops.codec import decode_as, encode
from gitops.loop import Backoff, Loop
from gitops.model import NodeName, Phase, Pod, PodId, PodStatus, ServiceEndpoints, Taint
from gitops.redact import Redactor, truncate

log = structlog.get_logger(__name__)

BACKOFF_START = 10.0
BACKOFF_MAX = 300.0
BACKOFF_RESET_AFTER = 600.0
LOG_TAIL_LINES = 20
LOG_TAIL_BYTES = 4000
MAX_TEXT = 1000  # reasons and probe output, as reported
MEMORY_FILESYSTEMS = ("tmpfs", "ramfs")


def private_directory(path: Path) -> None:
    """Make `path` a folder only we can use, or raise OSError saying why it cannot be: it
    must not be a symbolic link, must be ours, and must let no one else in."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise OSError(f"{path} is not a folder (a symbolic link?); refusing to write Secret files there")
    if info.st_uid != os.geteuid():
        raise OSError(
            f"{path} belongs to uid {info.st_uid}, not to this agent; refusing to write Secret files there"
        )
    if info.st_mode & 0o077:
        os.chmod(path, 0o700, follow_symlinks=False)


def filesystem_type(path: Path) -> str:
    """The type of the filesystem `path` is (or would be) on, from /proc/self/mountinfo."""
    target = path
    while not target.exists() and target != target.parent:
        target = target.parent
    real = os.path.realpath(target)
    best, kind = "", ""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                fields, _, rest = line.partition(" - ")
                mount_point = fields.split()[4].replace("\\040", " ")
                inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best):
                    best, kind = mount_point, rest.split()[0]
    except OSError:
        return ""
    return kind


def host_capacity() -> tuple[int, int]:
    """(millicores, memory bytes) of this host."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    memory = 0
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
                break
    return cpus * 1000, memory


def default_address() -> str:
    """The IPv4 address of the interface holding the default route (no packet is sent)."""
    out = subprocess.run(
        ["ip", "-4", "-o", "route", "show", "default"], capture_output=True, text=True, check=False
    ).stdout
    words = out.split()
    if "dev" in words:
        dev = words[words.index("dev") + 1]
        addr = subprocess.run(
            ["ip", "-4", "-o", "addr", "show", "dev", dev], capture_output=True, text=True, check=False
        ).stdout
        for part in addr.split():
            if "/" in part and part[0].isdigit():
                return part.split("/")[0]
    return socket.gethostbyname(socket.gethostname())


def service_rules(services: Sequence[ServiceEndpoints], node: NodeName) -> list[ServiceRule]:
    rules = []
    for svc in services:
        for port, endpoints in svc.endpoints:
            backends: list[tuple[str, int]] = []
            for ep in endpoints:
                if ep.node == node and ep.pod_ip:
                    backends.append((ep.pod_ip, ep.container_port))
                elif ep.node != node and ep.host_port and ep.node_address:
                    backends.append((ep.node_address, ep.host_port))
            rules.append(
                ServiceRule(
                    service=f"{svc.namespace}/{svc.name}:{port.name or port.port}",
                    vip=svc.vip,
                    port=port.port,
                    protocol=port.protocol,
                    backends=tuple(backends),
                )
            )
    return rules


class NodeRefused(Exception):
    """The server will not have this node (its name is held by a live node, a bad join
    token, or a node description it cannot accept): the agent stops."""


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    if isinstance(detail, list):  # FastAPI's validation errors: say which field
        detail = "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg', '')}" for d in detail
        )
    return f"HTTP {response.status_code}: {detail}"


@dataclass
class _Restarts:
    """Per-pod restart bookkeeping (the agent's memory; the control plane keeps the count)."""

    count: int = 0
    next_attempt: float = 0.0
    last_error: str = ""
    failed_starts: int = 0
    backoff: int = 0  # exits since the container last ran long enough
    exit_seen: tuple[str, float] = ("", 0.0)


@dataclass(frozen=True)
class AgentConfig:
    server: str
    node: NodeName
    join_token: str
    state_dir: Path
    address: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    taints: tuple[Taint, ...] = ()
    interval: float = 1.0
    iptables: str = "iptables"
    chain_prefix: str = "GITOPS"
    # How long a terminating pod keeps running after it left the endpoints: every agent
    # syncs its iptables within one interval, so two intervals cover them all.
    drain_seconds: float = 2.0
    capacity: tuple[int, int] | None = None
    # Where Secret files are written: a folder on tmpfs (default: /dev/shm/gitops/<node>).
    secret_dir: Path | None = None


@dataclass
class Agent:
    config: AgentConfig
    runtime: Runtime
    clock: Callable[[], float] = time.time
    _token: str = ""
    _proxy: IptablesProxy | None = None
    _restarts: dict[PodId, _Restarts] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _http: httpx.Client | None = None
    _assigned_cache: dict[PodId, Pod] = field(default_factory=dict)
    prober: Prober | None = None
    _verdicts: dict[PodId, Verdict] = field(default_factory=dict)
    _logs: dict[tuple[str, float], str] = field(default_factory=dict)
    _draining: dict[PodId, float] = field(default_factory=dict)
    _stopped: list[PodId] = field(default_factory=list)
    _removing: dict[str, threading.Thread] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: Loop | None = None
    _proxy_problems: list[str] = field(default_factory=list)
    allow_probe_hosts: bool = False  # the server's policy, from each sync reply

    # --- control plane --------------------------------------------------------------

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(base_url=self.config.server, timeout=30.0)
        return self._http

    @property
    def _token_file(self) -> Path:
        return self.config.state_dir / "node-token"

    def _saved_token(self) -> str:
        try:
            return self._token_file.read_text().strip()
        except OSError:
            return ""

    def _save_token(self, token: str) -> None:
        folder = self.config.state_dir
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = folder / "node-token.new"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        partial.replace(self._token_file)

    def register(self) -> str:
        """Register with the join token, presenting this node's last token (kept 0600 in the
        state folder) so that a restarted agent takes its own name back. Raises
        `NodeRefused` when a live node holds the name."""
        cfg = self.config
        cpu, memory = cfg.capacity or host_capacity()
        node = {
            "name": cfg.node,
            "address": cfg.address or default_address(),
            "cpu_milli": cpu,
            "memory_bytes": memory,
            "labels": dict(cfg.labels),
            "taints": [{"key": t.key, "value": t.value, "effect": t.effect} for t in cfg.taints],
        }
        current = self._token or self._saved_token()
        headers = {"Authorization": f"Bearer {current}"} if current else {}
        response = self.http.post(
            "/agent/v1/register", json={"join_token": cfg.join_token, "node": node}, headers=headers
        )
        if response.status_code in (401, 409, 422):
            raise NodeRefused(f"the server refused node {cfg.node}: {_detail(response)}")
        response.raise_for_status()
        body = response.json()
        self._token = str(body["token"])
        self._save_token(self._token)
        log.info(
            "agent.registered", node=cfg.node, address=node["address"], cpu_milli=cpu, memory_bytes=memory
        )
        return self._token

    def _sync_call(self, statuses: Sequence[PodStatus]) -> dict[str, Any]:
        if not self._token:
            self.register()
        payload = {
            "statuses": [encode(s) for s in statuses],
            "stopped": list(self._stopped),
            "proxy_problems": self._proxy_problems[:1000],
        }
        url = f"/agent/v1/nodes/{self.config.node}/sync"
        response = self.http.post(url, json=payload, headers={"Authorization": f"Bearer {self._token}"})
        if response.status_code == 401:
            self.register()
            response = self.http.post(url, json=payload, headers={"Authorization": f"Bearer {self._token}"})
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    # --- one tick -------------------------------------------------------------------

    def tick(self) -> None:
        node = self.config.node
        containers = self.runtime.list(node)
        statuses = self._statuses(containers, self._assigned_cache)
        reply = self._sync_call(statuses)
        self.allow_probe_hosts = bool(reply.get("allow_probe_hosts", False))
        pods = [decode_as(Pod, p) for p in reply["pods"]]
        services = [decode_as(ServiceEndpoints, s) for s in reply["services"]]
        self._assigned_cache = {p.id: p for p in pods}
        # Endpoints first: traffic leaves a pod before its container is stopped.
        try:
            if self._proxy is None:
                self._proxy = IptablesProxy(
                    reply["service_cidr"], prefix=self.config.chain_prefix, iptables=self.config.iptables
                )
                self._proxy.install()
            self._proxy.sync(service_rules(services, node))
            self._proxy_problems = list(self._proxy.skipped)
        except IptablesError as exc:
            # The node's pods still run and keep being converged; the failure is reported.
            self._proxy_problems = [f"iptables failed: {exc}"]
            log.error("agent.proxy_failed", error=str(exc))
        changed = self.converge(pods, containers)
        changed |= self.probe(pods, containers)
        if changed:
            # Report what we just started without waiting a whole interval.
            self._sync_call(self._statuses(self.runtime.list(node), self._assigned_cache))

    def converge(self, pods: Sequence[Pod], containers: Sequence[ContainerInfo]) -> bool:
        now = self.clock()
        wanted = {p.id: p for p in pods}
        changed = False
        by_pod: dict[PodId, ContainerInfo] = {}
        for c in sorted(containers, key=lambda c: (c.running, c.started_at)):
            if c.id in self._removing:
                continue
            pod = wanted.get(c.pod)
            if (
                pod is None
                or c.template_hash != pod.template_hash
                or (c.pod in by_pod and by_pod[c.pod].running)
            ):
                grace = pod.spec.termination_grace_period_seconds if pod else 10
                log.info(
                    "agent.removing",
                    pod=c.pod,
                    container=c.id[:12],
                    reason="pod is no longer assigned to this node" if pod is None else "template differs",
                )
                self._remove(c, grace)
                changed = True
                continue
            if c.pod in by_pod:
                self._remove(by_pod[c.pod], 0)
            by_pod[c.pod] = c
        for pod_id in list(self._restarts):
            if pod_id not in wanted:
                del self._restarts[pod_id]
        live = {c.id for c in containers}
        self._logs = {k: v for k, v in self._logs.items() if k[0] in live}
        self._stopped = []
        for pod in pods:
            state = self._restarts.setdefault(pod.id, _Restarts(count=pod.restarts))
            container = by_pod.get(pod.id)
            if pod.terminating_at is not None:
                changed |= self._drain(pod, container, now)
                continue
            if container is None:
                if now < state.next_attempt:
                    continue
                changed |= self._start(pod, state, now)
            elif not container.running and self._should_restart(pod, container):
                exit_key = (container.id, container.finished_at)
                if state.exit_seen != exit_key:
                    # A new exit: wait 10 s, doubling per exit up to 5 min; a container that
                    # ran for 10 min before exiting starts again from 10 s.
                    state.exit_seen = exit_key
                    if container.finished_at - container.started_at > BACKOFF_RESET_AFTER:
                        state.backoff = 0
                    state.next_attempt = now + min(BACKOFF_START * 2**state.backoff, BACKOFF_MAX)
                    state.backoff += 1
                    changed = True
                if now < state.next_attempt:
                    continue
                state.count += 1
                log.info("agent.restarting", pod=pod.id, exit_code=container.exit_code, restarts=state.count)
                self.runtime.restart(container.id)
                changed = True
        return changed

    def _drain(self, pod: Pod, container: ContainerInfo | None, now: float) -> bool:
        """Stop a terminating pod: wait until every node has dropped its endpoint, then stop
        the container (SIGTERM, SIGKILL after the grace period), then report it gone."""
        if container is None:
            self._draining.pop(pod.id, None)
            self._stopped.append(pod.id)
            return False
        first_seen = self._draining.setdefault(pod.id, now)
        if now < first_seen + self.config.drain_seconds:
            return False
        log.info(
            "agent.stopping", pod=pod.id, reason=pod.reason, grace=pod.spec.termination_grace_period_seconds
        )
        self._remove(container, pod.spec.termination_grace_period_seconds)
        return True

    def probe(self, pods: Sequence[Pod], containers: Sequence[ContainerInfo]) -> bool:
        """Run due probes; restart containers whose liveness or startup probe gave up."""
        if self.prober is None:
            self.prober = Prober(
                real_handler(
                    self.runtime,
                    lambda: self.allow_probe_hosts,
                    lambda container: self._redactor(self._assigned_cache.get(container.pod)),
                ),
                self.clock,
            )
        running = {c.pod: c for c in containers if c.running and c.id not in self._removing}
        targets = []
        for pod in pods:
            c = running.get(pod.id)
            spec = pod.spec
            if c is None or c.template_hash != pod.template_hash or pod.terminating_at is not None:
                continue
            if spec.startup_probe or spec.liveness_probe or spec.readiness_probe:
                targets.append((pod.id, c, spec.startup_probe, spec.liveness_probe, spec.readiness_probe))
        by_id = {p.id: p for p in pods}
        self._verdicts = {
            pod_id: dataclasses.replace(
                v, reason=truncate(self._redactor(by_id.get(pod_id))(v.reason), MAX_TEXT)
            )
            for pod_id, v in self.prober.check(targets).items()
        }
        self.prober.forget({t[0] for t in targets})
        restarted = False
        for pod_id, verdict in self._verdicts.items():
            if not verdict.restart:
                continue
            state = self._restarts.setdefault(pod_id, _Restarts())
            state.count += 1
            state.last_error = verdict.reason
            log.info("agent.probe_restart", pod=pod_id, reason=verdict.reason, restarts=state.count)
            self.runtime.restart(running[pod_id].id, by_id[pod_id].spec.termination_grace_period_seconds)
            restarted = True
        return restarted

    def _remove(self, container: ContainerInfo, grace: int) -> None:
        """Stop and remove in the background: a grace period must not stall the node."""

        def work() -> None:
            try:
                self.runtime.remove(container.id, grace)
                if container.pod not in self._assigned_cache:
                    self._forget_files(container.pod)
            except Exception:
                log.exception("agent.remove_failed", pod=container.pod, container=container.id[:12])
            finally:
                with self._lock:
                    self._removing.pop(container.id, None)

        with self._lock:
            if container.id in self._removing:
                return
            thread = threading.Thread(target=work, name=f"remove-{container.id[:12]}", daemon=True)
            self._removing[container.id] = thread
        thread.start()

    def wait_removals(self, timeout: float = 60.0) -> None:
        with self._lock:
            threads = list(self._removing.values())
        for thread in threads:
            thread.join(timeout)

    @staticmethod
    def _should_restart(pod: Pod, container: ContainerInfo) -> bool:
        policy = pod.spec.restart_policy
        return policy == "Always" or (policy == "OnFailure" and container.exit_code != 0)

    def _start(self, pod: Pod, state: _Restarts, now: float) -> bool:
        try:
            mounts = self._write_files(pod)
            try:
                self.runtime.run(self.config.node, pod, mounts)
            except ImageMissing:
                if pod.spec.image_pull_policy == "Never":
                    raise
                self.runtime.pull(pod.spec.image)
                self.runtime.run(self.config.node, pod, mounts)
        except (ImageMissing, RuntimeFailure, OSError) as exc:
            kind = (
                "ErrImageNeverPull"
                if pod.spec.image_pull_policy == "Never" and isinstance(exc, ImageMissing)
                else ("ErrImagePull" if isinstance(exc, ImageMissing) else "CreateContainerError")
            )
            state.last_error = truncate(self._redactor(pod)(f"{kind}: {exc}"), MAX_TEXT)
            delay = min(BACKOFF_START * 2 ** min(state.failed_starts, 10), BACKOFF_MAX)
            state.failed_starts += 1
            state.next_attempt = now + delay
            log.warning("agent.start_failed", pod=pod.id, reason=state.last_error, retry_in=delay)
            return True
        state.last_error = ""
        state.failed_starts = 0
        log.info("agent.started", pod=pod.id, image=pod.spec.image)
        return True

    # --- files ----------------------------------------------------------------------

    def _pod_dir(self, pod_id: PodId, *, secret: bool = False) -> Path:
        # Absolute: Docker reads a relative bind-mount source as a volume name.
        root = self.secret_root() if secret else self.config.state_dir.resolve() / "pods"
        return root / pod_id.replace("/", "_")

    @property
    def secret_folder(self) -> Path:
        # /dev/shm is a tmpfs on Linux; our folders in it are 0700, ours, and named after the node.
        return Path(os.path.abspath(self.config.secret_dir or Path("/dev/shm/gitops") / self.config.node))  # noqa: S108

    def secret_root(self) -> Path:
        """The folder Secret files are written to: on tmpfs (or ramfs), and private. In a
        world-writable /dev/shm, anyone could have made our folder first (or a symbolic link
        in its place), so each folder we own there is checked, never just trusted."""
        root = self.secret_folder
        kind = filesystem_type(root) or "an unknown filesystem"
        if kind not in MEMORY_FILESYSTEMS:
            raise OSError(
                f"Secret files must stay off the node's disk, but {root} is on {kind}; "
                "give the agent a folder on tmpfs (--secret-dir)"
            )
        if self.config.secret_dir:
            root.parent.mkdir(parents=True, exist_ok=True)  # the operator's choice of place
        for folder in [root] if self.config.secret_dir else [root.parent, root]:
            private_directory(folder)
        return root

    def _write_files(self, pod: Pod) -> list[tuple[str, str]]:
        if not pod.spec.files:
            return []
        mounts = []
        for f in pod.spec.files:
            folder = self._pod_dir(pod.id, secret=f.secret)
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            folder.chmod(0o700)
            host = folder / hashlib.sha256(f.path.encode()).hexdigest()[:16]
            host.write_bytes(f.content)
            host.chmod(f.mode & 0o777)
            mounts.append((str(host), f.path))
        return mounts

    def _forget_files(self, pod_id: PodId) -> None:
        shutil.rmtree(self._pod_dir(pod_id), ignore_errors=True)
        shutil.rmtree(self.secret_folder / pod_id.replace("/", "_"), ignore_errors=True)

    # --- status ---------------------------------------------------------------------

    def _statuses(self, containers: Sequence[ContainerInfo], assigned: dict[PodId, Pod]) -> list[PodStatus]:
        now = self.clock()
        result: dict[PodId, PodStatus] = {}
        for c in containers:
            if c.id in self._removing:
                continue  # being stopped: its pod is gone or terminating
            pod = assigned.get(c.pod)
            if pod is not None and c.template_hash != pod.template_hash:
                continue
            state = self._restarts.get(c.pod, _Restarts())
            redact = self._redactor(pod)
            if c.running:
                ready, reason = self._readiness(pod)
                status = PodStatus(
                    c.pod, "Running", ready, reason, c.pod_ip, c.host_ports, state.count, None, c.id
                )
            elif pod is not None and self._should_restart(pod, c):
                wait = max(0.0, state.next_attempt - now)
                reason = f"CrashLoopBackOff: exited with code {c.exit_code}; restarting in {wait:.0f}s"
                if c.error:
                    reason += f" ({c.error})"
                status = PodStatus(
                    c.pod,
                    "Running",
                    False,
                    reason,
                    "",
                    (),
                    state.count,
                    c.exit_code,
                    c.id,
                    self._log_tail(c, pod),
                )
            else:
                phase: Phase = "Succeeded" if c.exit_code == 0 else "Failed"
                reason = f"exited with code {c.exit_code}" + (f": {c.error}" if c.error else "")
                status = PodStatus(
                    c.pod,
                    phase,
                    False,
                    reason,
                    "",
                    (),
                    state.count,
                    c.exit_code,
                    c.id,
                    self._log_tail(c, pod),
                )
            result[c.pod] = dataclasses.replace(status, reason=truncate(redact(status.reason), MAX_TEXT))
        for pod_id, assigned_pod in assigned.items():
            if pod_id not in result and assigned_pod.terminating_at is None:
                state = self._restarts.get(pod_id, _Restarts())
                result[pod_id] = PodStatus(
                    pod_id, "Pending", False, state.last_error or "starting container", restarts=state.count
                )
        return list(result.values())

    def redactor(self) -> Redactor:
        """Redacts the Secret values of every pod this node runs (for its log lines)."""
        return Redactor.of_values(
            v for pod in list(self._assigned_cache.values()) for v in pod.spec.secret_values()
        )

    def _redactor(self, pod: Pod | None) -> Redactor:
        """Redacts the Secret values `pod` carries (nothing for an unknown pod)."""
        return Redactor.of_values(pod.spec.secret_values()) if pod is not None else Redactor()

    def _log_tail(self, container: ContainerInfo, pod: Pod | None) -> str:
        """The last lines an exited container wrote, read once per exit, redacted and then
        cut (so no part of a Secret value survives the cut). Nothing for a container whose
        pod is not known yet (an agent just restarted): its Secret values are not known."""
        if pod is None:
            return ""
        key = (container.id, container.finished_at)
        if key not in self._logs:
            self._logs = {k: v for k, v in self._logs.items() if k[0] != container.id}
            tail = self._redactor(pod)(self.runtime.logs_tail(container.id, LOG_TAIL_LINES))
            self._logs[key] = tail[-LOG_TAIL_BYTES:]
        return self._logs[key]

    def _readiness(self, pod: Pod | None) -> tuple[bool, str]:
        if pod is None:
            return True, ""
        spec = pod.spec
        if not (spec.startup_probe or spec.liveness_probe or spec.readiness_probe):
            return True, ""
        verdict = self._verdicts.get(pod.id)
        if verdict is None:
            probed = spec.startup_probe or spec.readiness_probe
            return (False, "waiting for the first probe") if probed else (True, "")
        return verdict.ready, verdict.reason

    # --- loop -----------------------------------------------------------------------

    @property
    def loop(self) -> Loop:
        if self._loop is None:
            interval = self.config.interval
            self._loop = Loop(
                "agent",
                self.tick,
                interval=interval,
                backoff=Backoff(first=interval, cap=30.0),
                stop=self._stop,
                fatal=(NodeRefused,),
                node=self.config.node,
            )
        return self._loop

    def run(self) -> None:
        """Tick until stopped; raises `NodeRefused` when the server will not have this node."""
        self.loop.run()

    def start(self) -> threading.Thread:
        return self.loop.start()

    def stop(self) -> None:
        self._stop.set()
        self.loop.trigger()
