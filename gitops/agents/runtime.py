"""The container runtime an agent drives: a `Runtime` protocol and its Docker implementation.

Every container we create carries ownership labels (`gitops.node`, `gitops.pod`,
`gitops.template`, `gitops.owner`, `gitops.restart`), which is how an agent that restarts
finds and adopts its containers instead of recreating them, how a control plane that lost
its state adopts them too, and how an agent recognises containers of pods that are gone. No
container without our labels is ever touched. Each run of a pod is a container of its own,
named after the pod and its restart number.

A runtime that cannot be reached (the Docker engine stopped) raises `RuntimeUnavailable`
from `list`, which the agent reports as the node's condition.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import docker
import docker.errors
import docker.types
import requests
import structlog

from gitops.model import NodeName, Pod, PodId

log = structlog.get_logger(__name__)

LABEL_NODE = "gitops.node"
LABEL_POD = "gitops.pod"
LABEL_TEMPLATE = "gitops.template"
LABEL_OWNER = "gitops.owner"  # Kind/namespace/name of the pod's owner
LABEL_RESTART = "gitops.restart"  # which run of the pod this container is: 0, 1, 2, ...


class RuntimeUnavailable(RuntimeError):
    """The runtime cannot be reached (its engine is stopped or restarting)."""


class ImageMissing(RuntimeError):
    """The pod's image is not on this node."""


class RuntimeFailure(RuntimeError):
    """The runtime refused to create or start a container; the message says why."""


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    pod: PodId
    template_hash: str
    running: bool
    exit_code: int | None
    pod_ip: str
    host_ports: tuple[tuple[int, str, int], ...]
    started_at: float
    finished_at: float
    error: str = ""
    restart: int = 0  # the run of the pod this container is (0 for the first)
    owner: str = ""  # Kind/namespace/name of the pod's owner


class Runtime(Protocol):
    def list(self, node: NodeName) -> list[ContainerInfo]: ...

    def run(
        self,
        node: NodeName,
        pod: Pod,
        mounts: Sequence[tuple[str, str]],
        restart: int = 0,
        *,
        address: str = "",
        network: str = "",
        env: Sequence[tuple[str, str]] = (),
    ) -> ContainerInfo:
        """Start run `restart` of `pod` as a fresh container. On a pod `network` (see
        `ensure_network`) only declared hostPorts are published, at the node's `address`
        (every interface when empty); without one, every port is, the others at a port the
        engine picks. `env` comes before the pod's own variables (which win a clash)."""
        ...

    def ensure_network(self, name: str, subnet: str, gateway: str, bridge: str) -> str:
        """Make the bridge network `name` of `subnet` exist (again, if its subnet changed:
        then our containers on it are removed first) and return its Linux bridge's name
        ("" for a runtime without one)."""
        ...

    def stop(self, container_id: str, grace_seconds: int) -> None: ...

    def exec(self, container_id: str, command: Sequence[str], timeout: float) -> tuple[int, str]: ...

    def remove(self, container_id: str, grace_seconds: int) -> None: ...

    def pull(self, image: str) -> None: ...

    def logs_tail(self, container_id: str, lines: int = 20) -> str: ...


def _timestamp(value: str | None) -> float:
    if not value or value.startswith("0001-"):
        return 0.0
    # Docker gives nanoseconds; Python parses microseconds.
    head, _, rest = value.partition(".")
    frac = rest.rstrip("Z")[:6] if rest else "0"
    return dt.datetime.fromisoformat(f"{head}.{frac:0<6}+00:00").timestamp()


def container_name(node: str, pod: Pod, restart: int = 0) -> str:
    return f"gitops_{node}_{pod.namespace}_{pod.name}"[:190] + f"_{restart}"


def owner_label(pod: Pod) -> str:
    return f"{pod.owner.kind}/{pod.owner.namespace}/{pod.owner.name}"


def _unavailable(exc: BaseException) -> bool:
    """Whether an error of the Docker client means the engine cannot be reached."""
    if isinstance(exc, requests.exceptions.ConnectionError):
        return True
    text = str(exc)
    return "Error while fetching server API version" in text or "is restarting" in text


class DockerRuntime:
    """Runs pods as Docker containers on one engine."""

    def __init__(self, base_url: str | None = None, *, timeout: int = 120) -> None:
        self._exec_pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="exec")
        self.client = (
            docker.DockerClient(base_url=base_url, timeout=timeout)
            if base_url
            else docker.from_env(timeout=timeout)
        )

    def ping(self) -> None:
        self.client.ping()

    def _info(self, container: Any) -> ContainerInfo:
        attrs = container.attrs
        state = attrs.get("State") or {}
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        net = attrs.get("NetworkSettings") or {}
        networks = net.get("Networks") or {}
        address = net.get("IPAddress") or next(
            (n.get("IPAddress") for n in networks.values() if n and n.get("IPAddress")), ""
        )
        ports: list[tuple[int, str, int]] = []
        for key, bindings in sorted((net.get("Ports") or {}).items()):
            port, _, proto = key.partition("/")
            for binding in bindings or []:
                if ":" in (binding.get("HostIp") or ""):
                    continue  # the IPv6 twin of an IPv4 binding
                ports.append((int(port), proto.upper(), int(binding["HostPort"])))
                break
        restart = str(labels.get(LABEL_RESTART, "0"))
        return ContainerInfo(
            id=container.id,
            pod=PodId(labels.get(LABEL_POD, "")),
            template_hash=labels.get(LABEL_TEMPLATE, ""),
            running=bool(state.get("Running")),
            exit_code=None if state.get("Running") else state.get("ExitCode"),
            pod_ip=address,
            host_ports=tuple(ports),
            started_at=_timestamp(state.get("StartedAt")),
            finished_at=_timestamp(state.get("FinishedAt")),
            error=state.get("Error") or "",
            restart=int(restart) if restart.isdigit() else 0,
            owner=labels.get(LABEL_OWNER, ""),
        )

    def list(self, node: NodeName) -> list[ContainerInfo]:
        try:
            summaries = self.client.api.containers(all=True, filters={"label": [f"{LABEL_NODE}={node}"]})
            found = []
            for summary in summaries:
                try:
                    found.append(self._info(self.client.containers.get(summary["Id"])))
                except docker.errors.NotFound:
                    continue  # removed since the listing (a removal runs in the background)
        except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
            if _unavailable(exc):
                raise RuntimeUnavailable(f"the Docker engine cannot be reached: {_short(exc)}") from exc
            raise
        return found

    def run(
        self,
        node: NodeName,
        pod: Pod,
        mounts: Sequence[tuple[str, str]],
        restart: int = 0,
        *,
        address: str = "",
        network: str = "",
        env: Sequence[tuple[str, str]] = (),
    ) -> ContainerInfo:
        spec = pod.spec
        name = container_name(node, pod, restart)
        try:
            stale = self.client.containers.get(name)
        except docker.errors.NotFound:
            stale = None
        if stale is not None:
            stale.remove(force=True)
        kwargs: dict[str, Any] = {
            "name": name,
            "hostname": (spec.hostname or pod.name)[:63].rstrip("-."),
            "labels": {
                LABEL_NODE: node,
                LABEL_POD: pod.id,
                LABEL_TEMPLATE: pod.template_hash,
                LABEL_OWNER: owner_label(pod),
                LABEL_RESTART: str(restart),
            },
            "environment": {**dict(env), **dict(spec.env)},
            "ports": {
                f"{p.container_port}/{p.protocol.lower()}": (address, p.host_port or None)
                if address
                else (p.host_port or None)
                for p in spec.ports
                if p.host_port or not network
            },
            "volumes": {host: {"bind": inside, "mode": "ro"} for host, inside in mounts},
            "detach": True,
        }
        if network:
            kwargs["network"] = network
        if spec.command:
            kwargs["entrypoint"] = list(spec.command)
        if spec.args:
            kwargs["command"] = list(spec.args)
        if spec.working_dir:
            kwargs["working_dir"] = spec.working_dir
        if spec.cpu_limit_milli:
            kwargs["nano_cpus"] = spec.cpu_limit_milli * 1_000_000
        if spec.memory_limit_bytes:
            kwargs["mem_limit"] = spec.memory_limit_bytes
        try:
            container = self.client.containers.create(spec.image, **kwargs)
        except docker.errors.ImageNotFound as exc:
            raise ImageMissing(f"image {spec.image!r} is not present on node {node}") from exc
        except docker.errors.APIError as exc:
            raise RuntimeFailure(str(exc.explanation or exc)) from exc
        try:
            container.start()
        except docker.errors.APIError as exc:
            container.reload()
            info = self._info(container)
            log.warning("runtime.start_failed", pod=pod.id, error=str(exc.explanation or exc))
            return info
        container.reload()
        return self._info(container)

    def ensure_network(self, name: str, subnet: str, gateway: str, bridge: str) -> str:
        try:
            return self._ensure_network(name, subnet, gateway, bridge)
        except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
            if _unavailable(exc):
                raise RuntimeUnavailable(f"the Docker engine cannot be reached: {_short(exc)}") from exc
            explanation = getattr(exc, "explanation", None)
            raise RuntimeFailure(f"network {name}: {explanation or _short(exc)}") from exc

    def _ensure_network(self, name: str, subnet: str, gateway: str, bridge: str) -> str:
        try:
            found = self.client.networks.get(name)
        except docker.errors.NotFound:
            found = None
        if found is not None:
            configs = (found.attrs.get("IPAM") or {}).get("Config") or []
            if any(c.get("Subnet") == subnet for c in configs):
                return bridge
            log.warning("runtime.pod_network_moved", network=name, subnet=subnet)
            for container in self.client.containers.list(all=True, filters={"network": name}):
                if LABEL_POD in (container.labels or {}):
                    container.remove(force=True)
            found.reload()
            found.remove()
        self._clear_overlaps(name, subnet)
        pool = docker.types.IPAMPool(subnet=subnet, gateway=gateway)
        self.client.networks.create(
            name,
            driver="bridge",
            ipam=docker.types.IPAMConfig(pool_configs=[pool]),
            options={
                "com.docker.network.bridge.name": bridge,
                # Pods keep their addresses towards other nodes' pods; the agent masquerades
                # only what leaves the cluster's pod range.
                "com.docker.network.bridge.enable_ip_masquerade": "false",
            },
            labels={LABEL_NODE: name},
        )
        log.info("runtime.pod_network_created", network=name, subnet=subnet, bridge=bridge)
        return bridge

    def _clear_overlaps(self, name: str, subnet: str) -> None:
        """Remove pod networks of ours left without containers whose subnet overlaps `subnet`
        (a node deleted, a cluster started anew); refuse when one still holds containers."""
        wanted = ipaddress.ip_network(subnet)
        for other in self.client.networks.list(filters={"label": LABEL_NODE}):
            if other.name == name:
                continue
            other.reload()
            configs = (other.attrs.get("IPAM") or {}).get("Config") or []
            if not any(
                wanted.overlaps(ipaddress.ip_network(c["Subnet"])) for c in configs if c.get("Subnet")
            ):
                continue
            if other.attrs.get("Containers"):
                raise RuntimeFailure(
                    f"pod network {name} ({subnet}) overlaps network {other.name}, which still has containers"
                )
            log.warning("runtime.stale_pod_network_removed", network=other.name)
            other.remove()

    def remove_network(self, name: str) -> None:
        try:
            self.client.networks.get(name).remove()
        except docker.errors.NotFound:
            return

    def stop(self, container_id: str, grace_seconds: int) -> None:
        """SIGTERM, then SIGKILL after the grace; the container stays, exited, for its logs."""
        try:
            self.client.containers.get(container_id).stop(timeout=grace_seconds)
        except docker.errors.NotFound:
            return

    def remove(self, container_id: str, grace_seconds: int) -> None:
        try:
            container = self.client.containers.get(container_id)
        except docker.errors.NotFound:
            return
        try:
            if container.status == "running":
                container.stop(timeout=grace_seconds)
            container.remove(force=True)
        except docker.errors.NotFound:
            return

    def exec(self, container_id: str, command: Sequence[str], timeout: float) -> tuple[int, str]:
        """Run `command` in the container; (exit code, output). A command still running
        after `timeout` counts as failed (exit code -1); Docker offers no way to stop it."""

        def run() -> tuple[int, str]:
            exec_id = self.client.api.exec_create(container_id, list(command))["Id"]
            output: bytes = self.client.api.exec_start(exec_id)
            code = self.client.api.exec_inspect(exec_id).get("ExitCode")
            return (code if code is not None else -1), output.decode(errors="replace")

        future = self._exec_pool.submit(run)
        try:
            result: tuple[int, str] = future.result(timeout=timeout)
            return result
        except concurrent.futures.TimeoutError:
            return -1, f"timed out after {timeout:g}s"
        except docker.errors.APIError as exc:
            return -1, str(exc.explanation or exc)

    def pull(self, image: str) -> None:
        try:
            self.client.images.pull(image)
        except docker.errors.APIError as exc:
            raise ImageMissing(f"pull of {image!r} failed: {exc.explanation or exc}") from exc

    def logs_tail(self, container_id: str, lines: int = 20) -> str:
        """The last lines of the container's latest run (not of earlier runs)."""
        try:
            container = self.client.containers.get(container_id)
            started = _timestamp((container.attrs.get("State") or {}).get("StartedAt"))
            # Docker compares `since` in whole seconds: one second early keeps the first line of
            # this run; earlier runs ended at least the restart backoff (10 s) before.
            since = int(started) - 1 if started else None
            data: bytes = container.logs(tail=lines, since=since) if since else container.logs(tail=lines)
        except docker.errors.APIError:
            return ""  # gone, or being removed: nothing worth reporting
        return data.decode(errors="replace")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
