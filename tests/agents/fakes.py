"""An in-memory `Runtime` for agent tests: containers are records, time is given."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

from gitops.agents.runtime import (
    INFRA,
    ContainerInfo,
    ImageMissing,
    MountSpec,
    RuntimeFailure,
    RuntimeUnavailable,
    UsageSample,
)
from gitops.model import Container, NodeName, Pod, PodId, RegistryAuth, Volume


class LogBook(dict[str, str]):
    """Container id -> the text it wrote; called, `Runtime.logs` over that text."""

    runtime: MemoryRuntime | None = None

    def __call__(
        self, container_id: str, *, tail: int | None = None, follow: bool = False, since: float = 0.0
    ) -> MemoryLogStream:
        runtime = self.runtime
        assert runtime is not None
        if runtime.down:
            raise RuntimeUnavailable("the Docker engine cannot be reached: connection refused")
        if container_id not in runtime.containers:
            raise RuntimeFailure(f"container {container_id} is gone")
        stream = MemoryLogStream(runtime, container_id, tail, follow, since)
        runtime.streams.append(stream)
        return stream


@dataclass
class MemoryRuntime:
    images: set[str] = field(default_factory=lambda: {"web:1", "web:2"})
    containers: dict[str, tuple[NodeName, ContainerInfo]] = field(default_factory=dict)
    now: float = 1000.0
    log: list[str] = field(default_factory=list)
    mounts: dict[PodId, list[tuple[str, str]]] = field(default_factory=dict)  # of the last container started
    mounts_of: dict[tuple[PodId, str], list[MountSpec]] = field(default_factory=dict)
    env_of: dict[tuple[PodId, str], dict[str, str]] = field(default_factory=dict)
    volumes: dict[str, PodId] = field(default_factory=dict)  # emptyDir volumes: name -> pod
    claim_volumes: set[str] = field(default_factory=set)  # claims with a volume here
    pullable: set[str] = field(default_factory=set)  # images a pull can fetch
    # What each container wrote (`rt.logs[cid] = "..."`), read by `rt.logs(cid, ...)`: a
    # field of tests and the `Runtime.logs` method at once.
    logs: LogBook = field(default_factory=LogBook)
    streams: list[MemoryLogStream] = field(default_factory=list)  # every read of `logs`, newest last
    exec_results: dict[tuple[str, ...], tuple[int, str]] = field(default_factory=dict)
    down: bool = False  # the engine is stopped: every call raises RuntimeUnavailable
    published_on: dict[PodId, str] = field(default_factory=dict)  # the address each pod's ports got
    stop_gate: threading.Event | None = None  # when given, a stop waits for it (a slow SIGTERM)
    exec_gate: threading.Event | None = None  # when given, an exec waits for it (a slow hook)
    execs: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # (container, command)
    env: dict[PodId, list[tuple[str, str]]] = field(default_factory=dict)  # service env first
    networks_of: dict[PodId, str] = field(default_factory=dict)
    networks: dict[str, str] = field(default_factory=dict)  # name -> subnet
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    cpu_ns: dict[str, int] = field(default_factory=dict)  # container id -> CPU time used so far
    working_set: dict[str, int] = field(default_factory=dict)  # container id -> memory bytes

    def __post_init__(self) -> None:
        self.logs.runtime = self

    def ensure_network(self, name: str, subnet: str, gateway: str, bridge: str) -> str:
        self.networks[name] = subnet
        return ""  # no bridge: the agent programs no routes or packet rules

    def list(self, node: NodeName) -> list[ContainerInfo]:
        if self.down:
            raise RuntimeUnavailable("the Docker engine cannot be reached: connection refused")
        return [c for n, c in self.containers.values() if n == node]

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
        if self.down:
            raise RuntimeUnavailable("the Docker engine cannot be reached: connection refused")
        spec = container or pod.spec.main
        if spec.image not in self.images:
            raise ImageMissing(f"image {spec.image!r} is not present on node {node}")
        if infra and not any(c.id == infra and c.running for _, c in self.containers.values()):
            raise RuntimeFailure(f"cannot join the network of container {infra}: it is not running")
        info = self._add(node, pod, restart, spec.name, "" if infra else "172.17.0.9")
        self.mounts[pod.id] = [(m.source, m.target) for m in mounts]
        self.mounts_of[(pod.id, spec.name)] = list(mounts)
        self.published_on[pod.id] = address
        self.env[pod.id] = [*env, *spec.env]
        self.env_of[(pod.id, spec.name)] = dict([*env, *spec.env])
        self.networks_of[pod.id] = network if not infra else f"container:{infra}"
        self.log.append(
            f"run {pod.id}" + (f"/{spec.name}" if infra else "") + (f" #{restart}" if restart else "")
        )
        return info

    def _add(self, node: NodeName, pod: Pod, restart: int, name: str, address: str) -> ContainerInfo:
        cid = f"c{next(self._ids)}"
        owner = f"{pod.owner.kind}/{pod.owner.namespace}/{pod.owner.name}"
        info = ContainerInfo(
            cid,
            pod.id,
            pod.template_hash,
            True,
            None,
            address,
            (),
            self.now,
            0.0,
            restart=restart,
            owner=owner,
            container=name,
        )
        self.containers[cid] = (node, info)
        return info

    def run_infra(
        self, node: NodeName, pod: Pod, restart: int = 0, *, address: str = "", network: str = ""
    ) -> ContainerInfo:
        if self.down:
            raise RuntimeUnavailable("the Docker engine cannot be reached: connection refused")
        self.log.append(f"run {pod.id}/POD" + (f" #{restart}" if restart else ""))
        self.published_on[pod.id] = address
        return self._add(node, pod, restart, INFRA, "172.17.0.9")

    def ensure_volume(self, node: NodeName, pod: Pod, volume: Volume) -> str:
        if volume.claim:
            self.claim_volumes.add(volume.claim)
            return f"claim-{volume.claim}"
        name = f"vol-{pod.name}-{volume.name}"
        self.volumes[name] = pod.id
        return name

    def remove_volumes(
        self, node: NodeName, keep: set[PodId], claims: set[str] | None = None
    ) -> tuple[str, ...]:
        live = {info.pod for _, info in self.containers.values()}
        dropped = set()
        if claims is not None:
            running = {m.source for (pod, _), mounts in self.mounts_of.items() if pod in live for m in mounts}
            dropped = {c for c in self.claim_volumes if c not in claims and f"claim-{c}" not in running}
            self.claim_volumes -= dropped
        gone = tuple(n for n, pod in self.volumes.items() if pod not in keep and pod not in live)
        for name in gone:
            del self.volumes[name]
        return gone + tuple(sorted(f"claim-{c}" for c in dropped))

    def exec(self, container_id: str, command: Sequence[str], timeout: float) -> tuple[int, str]:
        self.execs.append((container_id, tuple(command)))
        if self.exec_gate is not None:
            self.exec_gate.wait(10)
        return self.exec_results.get(tuple(command), (0, ""))

    def stop(self, container_id: str, grace_seconds: int) -> None:
        if self.stop_gate is not None:
            self.stop_gate.wait(10)
        node, info = self.containers[container_id]
        self.containers[container_id] = (
            node,
            replace(info, running=False, exit_code=137, finished_at=self.now),
        )
        self.log.append(f"stop {info.pod}")

    def remove(self, container_id: str, grace_seconds: int) -> None:
        _, info = self.containers.pop(container_id)
        self.log.append(f"remove {info.pod}")

    def pull(self, image: str, auth: RegistryAuth | None = None) -> None:
        self.log.append(f"pull {image}" + (f" as {auth.username}@{auth.registry}" if auth else ""))
        if image in self.pullable:
            self.images.add(image)
            return
        raise ImageMissing(f"pull of {image!r} failed: no registry reachable")

    def logs_tail(self, container_id: str, lines: int = 20) -> str:
        self.log.append(f"logs {container_id}")
        return self.logs.get(container_id, "")

    def usage(self, container_id: str) -> UsageSample | None:
        """`cpu_ns` and `working_set` of a running container, read at `now`."""
        if self.down:
            raise RuntimeUnavailable("the Docker engine cannot be reached: connection refused")
        entry = self.containers.get(container_id)
        if entry is None or not entry[1].running:
            return None
        return UsageSample(self.cpu_ns.get(container_id, 0), self.now, self.working_set.get(container_id, 0))

    def exit(self, pod: PodId, code: int) -> None:
        for cid, (node, info) in self.containers.items():
            if info.pod == pod and info.running:
                self.containers[cid] = (
                    node,
                    replace(info, running=False, exit_code=code, finished_at=self.now),
                )


@dataclass
class MemoryLogStream:
    """A read of a container's log in `MemoryRuntime.logs` (its text, line by line in
    `MemoryRuntime.logs`): the last `tail` lines, then, following, what is added to it until
    the container stops or the stream is closed. `since` is only recorded."""

    runtime: MemoryRuntime
    container_id: str
    tail: int | None
    follow: bool
    since: float
    closed: threading.Event = field(default_factory=threading.Event)

    def __iter__(self) -> Iterator[bytes]:
        text = self.runtime.logs.get(self.container_id, "")
        lines = text.splitlines(keepends=True)
        if self.tail is not None:
            lines = lines[-self.tail :] if self.tail else []
        if lines:
            yield "".join(lines).encode()
        seen = len(text)
        while self.follow and not self.closed.is_set():
            text = self.runtime.logs.get(self.container_id, "")
            if len(text) > seen:
                yield text[seen:].encode()
                seen = len(text)
                continue
            entry = self.runtime.containers.get(self.container_id)
            if entry is None or not entry[1].running:
                return
            self.closed.wait(0.01)

    def close(self) -> None:
        self.closed.set()
