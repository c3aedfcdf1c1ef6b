"""The container runtime an agent drives: a `Runtime` protocol and its Docker implementation.

Every container we create carries ownership labels (`gitops.node`, `gitops.pod`,
`gitops.container`, `gitops.template`, `gitops.owner`, `gitops.restart`), which is how an agent that restarts
finds and adopts its containers instead of recreating them, how a control plane that lost
its state adopts them too, and how an agent recognises containers of pods that are gone. No
container without our labels is ever touched. Each run of a container is a container of
its own, named after the pod, the container (in a pod of several) and its restart number.

A pod of several containers has an infra container holding its network, made from a
129-byte program that waits for signals (`pause_binary`, imported as `gitops-pause:1` on the
engine when missing: no registry needed). Its emptyDir volumes are Docker volumes labelled
with the pod (`ensure_volume`, `remove_volumes`); securityContext and limits become the
container's options (`_security_options`; no swap beyond a memory limit).

A runtime that cannot be reached (the Docker engine stopped) raises `RuntimeUnavailable`
from `list`, which the agent reports as the node's condition.

`usage` reads one container's counters once (`UsageSample`: CPU time used so far, memory
working set), from Docker's one-shot stats; `gitops.agents.usage` turns two of them into a
CPU rate.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import hashlib
import io
import ipaddress
import os
import platform
import struct
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import docker
import docker.errors
import docker.types
import requests
import structlog

from gitops.model import Container, NodeName, Pod, PodId, RegistryAuth, Volume

log = structlog.get_logger(__name__)

LABEL_NODE = "gitops.node"
LABEL_POD = "gitops.pod"
LABEL_TEMPLATE = "gitops.template"
LABEL_OWNER = "gitops.owner"  # Kind/namespace/name of the pod's owner
LABEL_RESTART = "gitops.restart"  # which run of the container this is: 0, 1, 2, ...
LABEL_CONTAINER = "gitops.container"  # the pod's container it runs (absent before release 0.3)
LABEL_VOLUME = "gitops.volume"  # on a pod's emptyDir volume: the volume's name in the pod
LABEL_CLAIM = "gitops.claim"  # on a PersistentVolumeClaim's volume: namespace/name
INFRA = "POD"  # the container holding a pod's network (no container of a pod can be named so)


RunKey = tuple[PodId, str]
"""A container of a pod: (pod, container name); (pod, "") for the pod as a whole."""


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
    restart: int = 0  # the run of the container this is (0 for the first)
    owner: str = ""  # Kind/namespace/name of the pod's owner
    container: str = ""  # the pod's container it runs: a name, `INFRA`, or "" (made before 0.3)
    oom_killed: bool = False  # it ended killed for exceeding its memory limit


@dataclass(frozen=True)
class MountSpec:
    """What to mount into a container: a host file or folder (`volume` False) or a Docker
    volume by name, at `target`."""

    source: str
    target: str
    read_only: bool = True
    volume: bool = False
    sub_path: str = ""  # of a volume: mount this folder of it (made when missing)


@dataclass(frozen=True)
class UsageSample:
    """One reading of a running container's counters, as cAdvisor takes them for kubelet."""

    cpu_ns: int  # CPU time used since the container started, all CPUs, in nanoseconds
    at: float  # Unix time the counters were read
    memory_working_set: int  # bytes: memory used less inactive file pages (what may be reclaimed)


class NonRootRefused(RuntimeError):
    """runAsNonRoot is set and the container would run as root."""


class LogStream(Protocol):
    """A container's log as it is read (`Runtime.logs`): its bytes in pieces, stdout and
    stderr as the container wrote them. `close` ends the read, from any thread."""

    def __iter__(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


class Runtime(Protocol):
    def list(self, node: NodeName) -> list[ContainerInfo]: ...

    def run(
        self,
        node: NodeName,
        pod: Pod,
        mounts: Sequence[MountSpec],
        restart: int = 0,
        *,
        container: Container | None = None,
        infra: str = "",
        address: str = "",
        network: str = "",
        env: Sequence[tuple[str, str]] = (),
    ) -> ContainerInfo:
        """Start run `restart` of the pod's `container` (default: its first) as a fresh
        container. Inside the network of the running `infra` container when given (a pod of
        several containers); else with a network of its own: on a pod `network` (see
        `ensure_network`) only declared hostPorts are published, at the node's `address`
        (every interface when empty); without one, every port is, the others at a port the
        engine picks. `env` comes before the container's own variables (which win a clash)."""
        ...

    def run_infra(
        self, node: NodeName, pod: Pod, restart: int = 0, *, address: str = "", network: str = ""
    ) -> ContainerInfo:
        """Start the container that holds the network of a pod of several containers: it
        takes the pod's address and publishes every hostPort of its containers."""
        ...

    def ensure_volume(self, node: NodeName, pod: Pod, volume: Volume) -> str:
        """Make the pod's `volume` exist and return the Docker volume's name: an emptyDir of
        the pod, or the volume of a PersistentVolumeClaim (one per claim on the node, kept
        across pods); made empty and writable by any user."""
        ...

    def remove_volumes(
        self, node: NodeName, keep: set[PodId], claims: set[str] | None = None
    ) -> tuple[str, ...]:
        """Remove this node's emptyDir volumes of pods not in `keep`, and (when `claims` is
        given) its claim volumes of claims not in `claims`, that no container uses; the names
        of those removed."""
        ...

    def ensure_network(self, name: str, subnet: str, gateway: str, bridge: str) -> str:
        """Make the bridge network `name` of `subnet` exist (again, if its subnet changed:
        then our containers on it are removed first) and return its Linux bridge's name
        ("" for a runtime without one)."""
        ...

    def stop(self, container_id: str, grace_seconds: int) -> None: ...

    def exec(self, container_id: str, command: Sequence[str], timeout: float) -> tuple[int, str]: ...

    def remove(self, container_id: str, grace_seconds: int) -> None: ...

    def pull(self, image: str, auth: RegistryAuth | None = None) -> None:
        """Pull `image` (with `auth`'s credentials for its registry); ImageMissing if it fails."""
        ...

    def logs_tail(self, container_id: str, lines: int = 20) -> str: ...

    def usage(self, container_id: str) -> UsageSample | None:
        """One reading of the container's CPU and memory counters; None when the container
        is gone or not running (it has no counters then). Raises `RuntimeUnavailable` when the
        runtime cannot be reached."""
        ...

    def logs(
        self, container_id: str, *, tail: int | None = None, follow: bool = False, since: float = 0.0
    ) -> LogStream:
        """The log of one container (one run of a pod's container): its last `tail` lines
        (all when None), only what it wrote after the Unix time `since` (when not 0), and
        with `follow` what it writes next, until it exits or the stream is closed. Raises
        `RuntimeFailure` when the container is gone, `RuntimeUnavailable` when the runtime
        cannot be reached."""
        ...


def _timestamp(value: str | None) -> float:
    if not value or value.startswith("0001-"):
        return 0.0
    # Docker gives nanoseconds; Python parses microseconds.
    head, _, rest = value.partition(".")
    frac = rest.rstrip("Z")[:6] if rest else "0"
    return dt.datetime.fromisoformat(f"{head}.{frac:0<6}+00:00").timestamp()


def container_name(node: str, pod: Pod, restart: int = 0, container: str = "") -> str:
    """`gitops_<node>_<ns>_<pod>[_<container>]_<run>`: the container named only in a pod of several."""
    name = f"gitops_{node}_{pod.namespace}_{pod.name}"[:190]
    return name + (f"_{container.lower()}"[:64] if container else "") + f"_{restart}"


def volume_name(node: str, pod: Pod, volume: str) -> str:
    """The Docker volume of a pod's emptyDir: readable, and unique per pod and volume."""
    digest = hashlib.sha256(f"{node}/{pod.id}/{volume}".encode()).hexdigest()[:12]
    return f"gitops_{pod.namespace}_{pod.name}"[:120] + f"_{volume[:40]}_{digest}"


def claim_volume_name(claim: str) -> str:
    """The Docker volume of a PersistentVolumeClaim (`namespace/name`) on its node."""
    digest = hashlib.sha256(claim.encode()).hexdigest()[:12]
    return "gitops-claim_" + claim.replace("/", "_")[:120] + f"_{digest}"


PAUSE_IMAGE = "gitops-pause:1"

# The whole program of an infra container: wait for signals forever (pause(2) on x86-64,
# ppoll(2) with nothing to poll on arm64), as Kubernetes' pause does; a static ELF file of
# one program header, so no compiler and no registry is needed to make its image.
_PAUSE_CODE = {
    "x86_64": (0x3E, bytes.fromhex("b8220000000f05ebf7")),
    "aarch64": (
        0xB7,
        b"".join(
            struct.pack("<I", word)
            for word in (0xD2800000, 0xD2800001, 0xD2800002, 0xD2800003, 0xD2800928, 0xD4000001, 0x17FFFFFA)
        ),
    ),
}
_PAUSE_CODE["amd64"] = _PAUSE_CODE["x86_64"]
_PAUSE_CODE["arm64"] = _PAUSE_CODE["aarch64"]


def pause_binary(machine: str) -> bytes:
    """A static Linux ELF executable that waits forever, for `machine` (x86-64 or arm64)."""
    if machine not in _PAUSE_CODE:
        raise RuntimeFailure(f"no built-in pause program for {machine}; load an image named {PAUSE_IMAGE}")
    arch, code = _PAUSE_CODE[machine]
    base, header_size = 0x400000, 64 + 56
    size = header_size + len(code)
    elf = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    elf += struct.pack("<HHIQQQIHHHHHH", 2, arch, 1, base + header_size, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    elf += struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    return elf + code


def _security_options(container: Container) -> dict[str, Any]:
    """Docker's options for a container's securityContext."""
    sc = container.security
    options: dict[str, Any] = {}
    if sc.run_as_user is not None or sc.run_as_group is not None:
        user = str(sc.run_as_user if sc.run_as_user is not None else 0)
        options["user"] = user + (f":{sc.run_as_group}" if sc.run_as_group is not None else "")
    if sc.supplemental_groups:
        options["group_add"] = [str(g) for g in sc.supplemental_groups]
    if sc.read_only_root_filesystem:
        options["read_only"] = True
    if sc.capabilities_add:
        options["cap_add"] = list(sc.capabilities_add)
    if sc.capabilities_drop:
        options["cap_drop"] = list(sc.capabilities_drop)
    security_opt = []
    if sc.no_new_privileges:
        security_opt.append("no-new-privileges:true")
    if sc.seccomp == "Unconfined":
        security_opt.append("seccomp=unconfined")
    if security_opt:
        options["security_opt"] = security_opt
    if sc.privileged:
        options["privileged"] = True
    return options


def usage_from_stats(stats: dict[str, Any]) -> UsageSample | None:
    """The `UsageSample` in one answer of Docker's stats API; None for a container that is
    not running (Docker then answers with a zero read time and no counters).

    The working set is kubelet's (cAdvisor's): memory use less the inactive file pages,
    `total_inactive_file` under cgroup v1 and `inactive_file` under cgroup v2, and 0 rather
    than negative.
    """
    read = _timestamp(stats.get("read"))
    if not read:
        return None
    cpu = int(((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage") or 0)
    memory = stats.get("memory_stats") or {}
    used = int(memory.get("usage") or 0)
    counters = memory.get("stats") or {}
    inactive = counters.get("total_inactive_file", counters.get("inactive_file"))  # cgroup v1, v2
    working_set = max(used - int(inactive or 0), 0)
    return UsageSample(cpu_ns=cpu, at=read, memory_working_set=working_set)


def owner_label(pod: Pod) -> str:
    return f"{pod.owner.kind}/{pod.owner.namespace}/{pod.owner.name}"


def _unavailable(exc: BaseException) -> bool:
    """Whether an error of the Docker client means the engine cannot be reached."""
    if isinstance(exc, requests.exceptions.ConnectionError):
        return True
    text = str(exc)
    return "Error while fetching server API version" in text or "is restarting" in text


# Connections kept open to the engine: execs (8 at once), usage readings (`usage.WORKERS`
# at once), log streams and the agent's own calls share them; docker-py keeps 10, and
# discards (with a warning) every connection opened beyond that.
POOL_SIZE = 64


class DockerRuntime:
    """Runs pods as Docker containers on one engine."""

    def __init__(self, base_url: str | None = None, *, timeout: int = 120) -> None:
        self._exec_pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="exec")
        self.client = (
            docker.DockerClient(base_url=base_url, timeout=timeout, max_pool_size=POOL_SIZE)
            if base_url
            else docker.from_env(timeout=timeout, max_pool_size=POOL_SIZE)
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
            container=labels.get(LABEL_CONTAINER, ""),
            oom_killed=bool(state.get("OOMKilled")),
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

    def _fresh(self, name: str) -> None:
        """Make way for a container named `name` (a run that was started before and failed)."""
        try:
            stale = self.client.containers.get(name)
        except docker.errors.NotFound:
            return
        stale.remove(force=True)

    def _labels(self, node: NodeName, pod: Pod, restart: int, container: str) -> dict[str, str]:
        return {
            LABEL_NODE: node,
            LABEL_POD: pod.id,
            LABEL_TEMPLATE: pod.template_hash,
            LABEL_OWNER: owner_label(pod),
            LABEL_RESTART: str(restart),
            LABEL_CONTAINER: container,
        }

    def _network_options(
        self, pod: Pod, *, address: str, network: str, containers: Sequence[Container]
    ) -> dict[str, Any]:
        """What gives a pod its address: hostname, network, published ports, network sysctls."""
        ports = [p for c in containers for p in c.ports]
        options: dict[str, Any] = {
            "hostname": (pod.spec.hostname or pod.name)[:63].rstrip("-."),
            "ports": {
                f"{p.container_port}/{p.protocol.lower()}": (address, p.host_port or None)
                if address
                else (p.host_port or None)
                for p in ports
                if p.host_port or not network
            },
        }
        if network:
            options["network"] = network
        sysctls = dict(pod.spec.main.security.sysctls)
        if sysctls:
            options["sysctls"] = sysctls
        return options

    def _create_and_start(
        self, image: str, node: NodeName, pod: Pod, kwargs: dict[str, Any]
    ) -> ContainerInfo:
        try:
            created = self.client.containers.create(image, **kwargs)
        except docker.errors.ImageNotFound as exc:
            raise ImageMissing(f"image {image!r} is not present on node {node}") from exc
        except docker.errors.APIError as exc:
            raise RuntimeFailure(str(exc.explanation or exc)) from exc
        try:
            created.start()
        except docker.errors.APIError as exc:
            created.reload()
            info = self._info(created)
            log.warning("runtime.start_failed", pod=pod.id, error=str(exc.explanation or exc))
            return info
        created.reload()
        return self._info(created)

    def _mount(self, mount: MountSpec) -> docker.types.Mount:
        if not mount.sub_path:
            kind = "volume" if mount.volume else "bind"
            return docker.types.Mount(
                mount.target, mount.source, type=kind, read_only=mount.read_only, no_copy=mount.volume
            )
        # Docker of Debian 12 has no subpath for volumes: bind the folder of the volume itself.
        mountpoint = str(self.client.volumes.get(mount.source).attrs.get("Mountpoint") or "")
        if not os.path.isdir(mountpoint):
            raise RuntimeFailure(
                f"subPath {mount.sub_path!r}: volume {mount.source} has no folder on this node"
            )
        folder = os.path.realpath(os.path.join(mountpoint, mount.sub_path))
        if not folder.startswith(os.path.realpath(mountpoint) + os.sep):
            raise RuntimeFailure(f"subPath {mount.sub_path!r} leaves its volume")
        os.makedirs(folder, mode=0o777, exist_ok=True)
        return docker.types.Mount(mount.target, folder, type="bind", read_only=mount.read_only)

    def _check_non_root(self, container: Container) -> None:
        """kubelet's runAsNonRoot check: the user the container would run as must be a
        number other than 0 (a user name cannot be verified)."""
        if not container.security.run_as_non_root:
            return
        user = str(container.security.run_as_user) if container.security.run_as_user is not None else ""
        if not user:
            try:
                config = self.client.images.get(container.image).attrs.get("Config") or {}
            except docker.errors.ImageNotFound as exc:
                raise ImageMissing(f"image {container.image!r} is not present") from exc
            user = str(config.get("User") or "").split(":")[0]
        if user in ("", "0", "root"):
            raise NonRootRefused("container has runAsNonRoot and image will run as root")
        if not user.isdigit():
            raise NonRootRefused(
                f"container has runAsNonRoot and image has non-numeric user ({user}), "
                "cannot verify user is non-root"
            )

    def run(
        self,
        node: NodeName,
        pod: Pod,
        mounts: Sequence[MountSpec],
        restart: int = 0,
        *,
        container: Container | None = None,
        infra: str = "",
        address: str = "",
        network: str = "",
        env: Sequence[tuple[str, str]] = (),
    ) -> ContainerInfo:
        spec = container or pod.spec.main
        self._check_non_root(spec)
        name = container_name(node, pod, restart, spec.name if infra else "")
        self._fresh(name)
        kwargs: dict[str, Any] = {
            "name": name,
            "labels": self._labels(node, pod, restart, spec.name),
            "environment": {**dict(env), **dict(spec.env)},
            "mounts": [self._mount(m) for m in mounts],
            "detach": True,
        }
        if infra:
            kwargs["network_mode"] = f"container:{infra}"
        else:
            kwargs.update(self._network_options(pod, address=address, network=network, containers=[spec]))
        if pod.spec.host_pid:
            kwargs["pid_mode"] = "host"
        if pod.spec.host_ipc:
            kwargs["ipc_mode"] = "host"
        if spec.command:
            kwargs["entrypoint"] = list(spec.command)
        if spec.args:
            kwargs["command"] = list(spec.args)
        if spec.working_dir:
            kwargs["working_dir"] = spec.working_dir
        if spec.cpu_limit_milli:
            kwargs["nano_cpus"] = spec.cpu_limit_milli * 1_000_000
        if spec.memory_limit_bytes:
            # No swap beyond the limit, as kubelet runs containers.
            kwargs["mem_limit"] = kwargs["memswap_limit"] = spec.memory_limit_bytes
        kwargs.update(_security_options(spec))
        return self._create_and_start(spec.image, node, pod, kwargs)

    def run_infra(
        self, node: NodeName, pod: Pod, restart: int = 0, *, address: str = "", network: str = ""
    ) -> ContainerInfo:
        image = self._pause_image()
        name = container_name(node, pod, restart, INFRA)
        self._fresh(name)
        kwargs: dict[str, Any] = {
            "name": name,
            "labels": self._labels(node, pod, restart, INFRA),
            "detach": True,
            "read_only": True,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            "mem_limit": 8 * 1024 * 1024,
        }
        kwargs.update(
            self._network_options(pod, address=address, network=network, containers=pod.spec.all_containers)
        )
        return self._create_and_start(image, node, pod, kwargs)

    def _pause_image(self) -> str:
        """The image of infra containers, made on this engine from `pause_binary` when it is
        missing (no registry needs to be reachable)."""
        try:
            self.client.images.get(PAUSE_IMAGE)
        except docker.errors.ImageNotFound:
            binary = pause_binary(platform.machine())
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as tar:
                entry = tarfile.TarInfo("pause")
                entry.size, entry.mode = len(binary), 0o755
                tar.addfile(entry, io.BytesIO(binary))
            repository, _, tag = PAUSE_IMAGE.partition(":")
            self.client.api.import_image_from_data(
                buffer.getvalue(), repository=repository, tag=tag, changes=['CMD ["/pause"]']
            )
            log.info("runtime.pause_image_made", image=PAUSE_IMAGE)
        return PAUSE_IMAGE

    def ensure_volume(self, node: NodeName, pod: Pod, volume: Volume) -> str:
        name = claim_volume_name(volume.claim) if volume.claim else volume_name(node, pod, volume.name)
        try:
            self.client.volumes.get(name)
            return name
        except docker.errors.NotFound:
            pass
        labels = (
            {LABEL_NODE: node, LABEL_CLAIM: volume.claim}
            if volume.claim
            else {LABEL_NODE: node, LABEL_POD: pod.id, LABEL_VOLUME: volume.name}
        )
        if volume.medium == "Memory":
            size = f",size={volume.size_limit_bytes}" if volume.size_limit_bytes else ""
            self.client.volumes.create(
                name,
                driver="local",
                driver_opts={"type": "tmpfs", "device": "tmpfs", "o": "mode=1777" + size},
                labels=labels,
            )
        else:
            created = self.client.volumes.create(name, driver="local", labels=labels)
            # An emptyDir is writable by whatever user the pod's containers run as.
            mountpoint = created.attrs.get("Mountpoint") or ""
            if mountpoint and os.path.isdir(mountpoint):
                os.chmod(mountpoint, 0o777)  # noqa: S103 - Kubernetes' emptyDir mode
        return name

    def remove_volumes(
        self, node: NodeName, keep: set[PodId], claims: set[str] | None = None
    ) -> tuple[str, ...]:
        removed = []
        for volume in self.client.volumes.list(filters={"label": f"{LABEL_NODE}={node}"}):
            labels = volume.attrs.get("Labels") or {}
            if LABEL_CLAIM in labels:
                if claims is None or labels[LABEL_CLAIM] in claims:
                    continue
            elif LABEL_VOLUME not in labels or labels.get(LABEL_POD) in keep:
                continue
            try:
                volume.remove()
            except docker.errors.APIError:
                continue  # still used by a container being removed: the next sweep takes it
            removed.append(volume.name)
        return tuple(removed)

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

    def pull(self, image: str, auth: RegistryAuth | None = None) -> None:
        credentials = {"username": auth.username, "password": auth.password} if auth is not None else None
        try:
            self.client.images.pull(image, auth_config=credentials)
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

    def usage(self, container_id: str) -> UsageSample | None:
        """From Docker's one-shot stats (API 1.41, Docker 20.10, on): one reading, not the two
        a second apart that plain stats waits for. Docker 20.10 still answers at the next tick
        of its stats collector (once a second): calls made together share a tick, so a caller
        measuring many containers makes its calls at once (`gitops.agents.usage`)."""
        try:
            try:
                stats = self.client.api.stats(container_id, stream=False, one_shot=True)
            except docker.errors.InvalidVersion:
                # An engine older than API 1.41 knows no one-shot: it waits two ticks.
                stats = self.client.api.stats(container_id, stream=False)
        except docker.errors.NotFound:
            return None
        except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
            if _unavailable(exc):
                raise RuntimeUnavailable(f"the Docker engine cannot be reached: {_short(exc)}") from exc
            if isinstance(exc, docker.errors.APIError):
                # Being removed or restarting: it has no counters to give now.
                log.debug("runtime.usage_unreadable", container=container_id[:12], error=_short(exc))
                return None
            raise
        return usage_from_stats(stats)

    def logs(
        self, container_id: str, *, tail: int | None = None, follow: bool = False, since: float = 0.0
    ) -> LogStream:
        options: dict[str, Any] = {"stream": True, "follow": follow, "tail": "all" if tail is None else tail}
        if since > 0:
            options["since"] = since
        try:
            # docker-py turns off the socket's timeout for a stream: a quiet container is
            # followed for as long as it runs.
            stream: LogStream = self.client.api.logs(container_id, stdout=True, stderr=True, **options)
        except docker.errors.NotFound as exc:
            raise RuntimeFailure(f"container {container_id[:12]} is gone") from exc
        except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
            if _unavailable(exc):
                raise RuntimeUnavailable(f"the Docker engine cannot be reached: {_short(exc)}") from exc
            raise RuntimeFailure(str(getattr(exc, "explanation", None) or _short(exc))) from exc
        return stream


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
