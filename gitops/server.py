"""The control plane process: store, sync services, controller and HTTP API, wired together.

`ControlPlane` owns the long-running parts and starts them in the right order (store,
HTTP, sync, controller); `serve()` runs the HTTP server in the calling thread, and
`start()` runs it in a background thread (used by `gitops up` and by tests).

Several control planes may share one database (high availability on PostgreSQL). Each
serves the page, the API and agents; the one that holds the lease (`gitops.store.lease`)
leads: only it syncs the sources, computes previews and runs the controller, each step
fenced by the lease. The others try to take the lease every `lease_ttl / 5` seconds and
take over once it expires; until then they serve by what the leader published with its
lease (whether its sources are read and it has settled). A control plane alone on its
database leads from its start. One started with `lead=False` (`gitops serve --api-only`)
never takes the lease: it only serves, as Kubernetes' API servers do beside the controller
manager, so that agents' calls are answered by a process whose interpreter no controller
pass shares.
"""

from __future__ import annotations

import secrets
import signal
import socket
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from types import FrameType

import structlog
import uvicorn

from gitops.api.agentsync import NodeWatch
from gitops.api.app import create_app
from gitops.api.auth import is_loopback
from gitops.api.githttp import git_router
from gitops.api.onewrite import OneWriteProtocol
from gitops.api.webhooks import webhook_router
from gitops.controller import Controller
from gitops.handover import short_slice
from gitops.health import Health
from gitops.heap import HEAP
from gitops.loop import Loop, Precedence
from gitops.metrics import Metrics
from gitops.redact import redact_logs_with
from gitops.schemas.validate import DEFAULT_POLICY, Policy
from gitops.store import Store
from gitops.store.lease import TTL, Leader, Lease
from gitops.sync.hosted import HostedRepo
from gitops.sync.previews import BranchPreviews
from gitops.sync.service import SyncService
from gitops.sync.sources import FolderSource, GitSource, Source

log = structlog.get_logger(__name__)

# Seconds an idle HTTP connection is kept open: longer than an agent's heartbeat (10 s)
# and its watch (55 s), and than its client's own expiry (httpx's 5 s), so that the client
# is the one to drop an idle connection. At uvicorn's 5 s, both dropped it at once, and a
# call sent as the server closed it failed ("Server disconnected without sending a
# response"). nginx's default is 75 s too.
KEEP_ALIVE_SECONDS = 75


def raise_open_files() -> tuple[int, int]:
    """Raise this process's soft limit of open files to its hard limit, as Go's runtime does
    at start; the soft limit before and after. Each agent holds two connections (its watch's
    and its syncs'): 10,000 sockets at 5,000 nodes, where service managers often leave a
    soft limit of 1,024 (a hard one of 524,288 under systemd). Nothing here uses `select`,
    whose sets stop at 1,024. Left as it was when the system refuses."""
    import resource  # noqa: PLC0415 - POSIX only, and only when serving

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    wanted = hard if hard != unlimited else 1 << 20  # Linux's own ceiling (fs.nr_open)
    if soft == unlimited or soft >= wanted:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (OSError, ValueError):
        return soft, soft
    return soft, wanted


class _Server(uvicorn.Server):
    """uvicorn's server, which answers the agents' long-polls at once when it is to stop: a
    waiting one would hold its graceful shutdown for up to 25 s. Its event loop's thread
    asks the kernel to run it as soon as it wakes (`gitops.handover.short_slice`): a call
    that comes while the CPUs run other work (a controller pass) is answered in its time,
    not after theirs."""

    def __init__(self, config: uvicorn.Config, watch: NodeWatch) -> None:
        super().__init__(config)
        self.watch = watch

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        short_slice()  # (in the loop's thread)
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # In a signal handler: `close` takes a lock the interrupted code may hold.
        threading.Thread(target=self.watch.close, name="watch-close", daemon=True).start()
        super().handle_exit(sig, frame)


@dataclass
class ControlPlane:
    store: Store
    sources: Sequence[Source]
    host: str = "127.0.0.1"
    port: int = 8080
    # The token agents register with (given to them by file or environment, never argv).
    join_token: str = field(default_factory=lambda: secrets.token_hex(24))
    poll_interval: float = 30.0
    controller_interval: float = 2.0
    not_ready_toleration: float = 60.0
    # Which refs of each git source get previews ("" for none); the deployed branch never does.
    preview_refspec: str = "refs/heads/*"
    # Repositories served at /git/NAME.git (each also a source), and the token pushes present.
    hosted: Sequence[HostedRepo] = ()
    push_token: str = field(default_factory=lambda: secrets.token_hex(24))
    # HMAC key / token of the push webhooks (/hooks/...); None disables them.
    webhook_secret: bytes | None = None
    # Names of the sources whose revisions may hold no objects (and so delete all of theirs).
    allow_empty: frozenset[str] = frozenset()
    # Whether agents honour a probe's `host` (else probes go to the pod's own address).
    allow_probe_hosts: bool = False
    # What manifests may do beyond Kubernetes' rules (the folders hostPath volumes may use):
    # every revision is validated under it (syncs, pushes, previews), and agents get its
    # folders to check again.
    policy: Policy = DEFAULT_POLICY
    # The token reads need (page, API, metrics); None: reads are open (loopback, --public-read).
    read_token: str | None = None
    # After a start, how long agents get to come back and report their containers (to be
    # adopted) before the controller creates pods, unless every known node reports sooner.
    # Agents retry an unreachable server at least every 10 s.
    settle_seconds: float = 12.0
    # Who this control plane is among those sharing the database (the lease's holder, with
    # a random suffix per start); "" for host:port.
    name: str = ""
    lease_ttl: float = TTL  # how long the leader's lease holds without renewal
    # False: never take the lease (serve the page, the API and agents only; `--api-only`).
    lead: bool = True
    lease: Lease | None = None
    _leading: bool = False
    _keeping: threading.Thread | None = None  # renews or tries to take the lease
    _heap: threading.Thread | None = None  # settles the collector (`gitops.heap`)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _leader_lock: threading.Lock = field(default_factory=threading.Lock)
    _led_epoch: int = 0  # the epoch of the lease this process last led by (0: none since it started)
    _stopped_loops: list[Loop] = field(default_factory=list)  # the last leader's, still in a step
    _started: float = field(default_factory=time.monotonic)
    _started_at: float = field(default_factory=time.time)
    _settled: bool = False
    _reported: set[str] = field(default_factory=set)  # nodes whose containers were offered for adoption
    _known: frozenset[str] = frozenset()  # the nodes the store held at the start
    health: Health = field(default_factory=Health)  # what fails now: shown on the page and in /metrics
    _server: _Server | None = None
    _thread: threading.Thread | None = None
    syncs: list[SyncService] = field(default_factory=list)
    controller: Controller | None = None
    metrics: Metrics = field(default_factory=Metrics)  # served at /metrics
    previews: list[BranchPreviews] = field(default_factory=list)
    # The controller's big writes go before the agents' calls (`gitops.loop.Precedence`).
    precedence: Precedence = field(default_factory=Precedence)

    def __post_init__(self) -> None:
        for source in self.sources:
            if isinstance(source, FolderSource):  # its revision ids hash Secret values
                source.digest_key = self.store.keys.digest_key
        missing = [h.source for h in self.hosted if h.source not in self.sources]
        if missing:
            self.sources = [*self.sources, *missing]
        names = [s.name for s in self.sources]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"source {twice[0]} is given twice; each source may appear once")
        unknown = sorted(set(self.allow_empty) - set(names))
        if unknown:
            raise ValueError(f"allow_empty names {unknown[0]}, which is not a source")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _build(self) -> _Server:
        redact_logs_with(lambda: self.store.redactor(max_age=1.0), key=("store", id(self.store)))
        self._started, self._started_at, self._settled = time.monotonic(), time.time(), False
        self._reported = set()
        self._known = frozenset(r.node.name for r in self.store.nodes())
        holder = f"{self.name or f'{socket.gethostname()}:{self.port}'}#{secrets.token_hex(3)}"
        self.lease = Lease(self.store, holder, ttl=self.lease_ttl)
        self.lease.renew_with_writes()  # SQLite: this process's own writes never starve it
        self._led_epoch = 0
        app = create_app(
            self.store,
            join_token=self.join_token,
            sources=[s.name for s in self.sources],
            on_report=self._report_came,
            metrics=self.metrics,
            allow_probe_hosts=self.allow_probe_hosts,
            allow_host_paths=self.policy.host_paths,
            allow_privileged=self.policy.privileged,
            read_token=self.read_token,
            loopback_nodes=is_loopback(self.host),
            loopback_only=is_loopback(self.host) and not self.read_token,
            authoritative=self.settled,
            on_sync=self._reported.add,
            adopting=self.sources_read,
            health=self.health,
            leadership=self.leadership,
            precedence=self.precedence,
        )
        app.include_router(
            webhook_router(
                self.webhook_secret, lambda: self.syncs, lambda: self.previews, follower=self.following
            )
        )
        if self.hosted:
            for repo in self.hosted:
                repo.policy = self.policy
                repo.ensure()
            app.include_router(git_router(self.hosted, self.push_token, self._pushed))
        # httptools and uvloop: thousands of agents' calls a second are mostly HTTP parsing and
        # event-loop work, which they do in C (docs/scale.md); each response's head and body
        # in one write (`OneWriteProtocol`).
        config = uvicorn.Config(
            app,
            host=self.host,
            port=self.port,
            log_level="warning",
            access_log=False,
            http=OneWriteProtocol,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            loop="uvloop",
        )
        return _Server(config, app.state.node_watch)

    def _lead(self) -> None:
        """This control plane took the lease: sync the sources, compute previews and run the
        controller."""
        assert self.lease is not None
        if any(loop.alive for loop in self._stopped_loops):
            # A step of the loops stopped last is still running (a long sync or pass): with
            # the same epoch it would pass the fence beside its replacement. Next time.
            log.info("server.lead_deferred", reason="a step of the last leader's loops still runs")
            return
        self._stopped_loops = []
        epoch, led = self.lease.epoch, self._led_epoch
        if not led or epoch not in (led, led + 1):
            # Another leader may have led in between (a lease taken again right after this
            # process held it is `led + 1`: no one else did): it may have changed what the
            # sources hold and written pods this process has not read.
            self._settled = False  # its sources are to be read again
            self.store.pod_cache.invalidate()
        self._led_epoch = epoch
        self._leader_loops()
        for sync in self.syncs:
            sync.start()
        for previews in self.previews:
            previews.start()
        assert self.controller is not None
        self.controller.start()
        self._leading = True
        self.metrics.leader.set(1)
        log.info("server.leading", holder=self.lease.holder, epoch=self.lease.epoch)

    def _leader_loops(self) -> None:
        """The leader's syncs, previews and controller, each step fenced by the lease (a step
        after the lease passed on fails before it writes)."""
        lease = self.lease
        assert lease is not None

        def fence() -> AbstractContextManager[None]:
            return self.store.fenced(lease)

        self.controller = Controller(
            self.store,
            interval=self.controller_interval,
            not_ready_toleration=self.not_ready_toleration,
            metrics=self.metrics,
            ready=self.settled,
            not_ready_before=lambda: self._started_at,
            health=self.health,
            fence=fence,
            precedence=self.precedence,
        )
        self.previews = [
            BranchPreviews(
                self.store,
                s,
                s.cache_dir.with_name(s.cache_dir.name + "-previews"),
                refspec=self.preview_refspec,
                interval=self.poll_interval,
                not_ready_toleration=self.not_ready_toleration,
                health=self.health,
                policy=self.policy,
                fence=fence,
            )
            for s in self.sources
            if isinstance(s, GitSource) and self.preview_refspec
        ]
        self.syncs = [
            SyncService(
                self.store,
                s,
                interval=self.poll_interval,
                on_applied=self._applied,
                metrics=self.metrics,
                allow_empty=s.name in self.allow_empty,
                health=self.health,
                policy=self.policy,
                fence=fence,
            )
            for s in self.sources
        ]

    def _follow(self, *, to_lead_again: bool = False) -> None:
        """This control plane no longer holds the lease: stop its leader's loops."""
        was = self._leading and not to_lead_again
        self._leading = False
        self.metrics.leader.set(0)
        loops = self._loops()
        for sync in self.syncs:
            sync.stop()
        for previews in self.previews:
            previews.stop()
        if self.controller is not None:
            self.controller.stop()
        self.syncs, self.previews, self.controller = [], [], None
        self._stopped_loops = [loop for loop in loops if loop.alive]  # a step past the stop's wait
        if was and not self._stopping.is_set():
            leader = self._leader()
            log.warning("server.following", leader=leader.holder if leader else "")

    def _keep_lease(self) -> None:
        """Renew the lease while leading, or take it once it is free; lead or follow as that
        turns out. A renewal that fails (the database unreachable) keeps leading only while
        the lease would still hold."""
        lease = self.lease
        assert lease is not None
        with self._leader_lock:
            if self._stopping.is_set():
                return
            if not self.lead:
                try:
                    lease.read()  # who leads, and what it published: this one serves by it
                except Exception as exc:  # the database may be away: the last reading expires
                    log.warning("lease.read_failed", error=str(exc), holder=lease.holder)
                return
            try:
                held = lease.hold(
                    sources_read=self._leading and self.sources_read(),
                    settled=self._leading and self.settled(),
                )
            except Exception as exc:  # the database may be away: the lease's own clock decides
                log.warning("lease.failed", error=str(exc), holder=lease.holder)
                held = lease.held
            if held and self._leading and self._loops_ended():
                # The lease lapsed on this process's clock for a moment (a renewal late behind
                # a long write) and a loop saw it and ended; it is held again: lead again.
                log.warning("server.leading_again", reason="a leader's loop ended while the lease lapsed")
                self._follow(to_lead_again=True)
                self._lead()
            elif held and not self._leading:
                self._lead()
            elif not held and self._leading:
                self._follow()

    def _loops(self) -> list[Loop]:
        loops = [*(s.loop for s in self.syncs), *(p.loop for p in self.previews)]
        if self.controller is not None:
            loops.append(self.controller.loop)
        return loops

    def _loops_ended(self) -> bool:
        return any(loop.ended for loop in self._loops())

    def _keep_leasing(self) -> None:
        assert self.lease is not None
        while not self._stopping.wait(self.lease.ttl / 5):
            self._keep_lease()

    def _leader(self) -> Leader | None:
        """Who leads, as the lease was last read, if that lease had not expired."""
        leader = self.lease.leader if self.lease is not None else None
        return leader if leader is not None and leader.expires_in > 0 else None

    def leadership(self) -> dict[str, object]:
        """Whether this control plane leads, and who does (`/api/v1/status`)."""
        leader = self._leader()
        return {
            "leader": self._leading,
            "api_only": not self.lead,
            # Whether the control plane knows every pod (after a start: sources read, agents
            # heard from); until then it creates no pods and agents keep unknown containers.
            "settled": self.settled(),
            "name": self.lease.holder if self.lease is not None else "",
            "led_by": leader.holder if leader is not None else "",
            "epoch": leader.epoch if leader is not None else 0,
        }

    def following(self) -> str:
        """Why this control plane does not sync sources itself ("" while it leads)."""
        if self._leading:
            return ""
        leader = self._leader()
        if not self.lead:
            who = leader.holder if leader is not None else "no other control plane"
            return f"this control plane serves only (--api-only); {who} leads"
        if leader is None:
            return "this control plane does not lead, and no other does yet"
        return f"this control plane does not lead; {leader.holder} does"

    def _report_came(self) -> None:
        controller = self.controller
        if controller is not None:
            controller.wake()

    def sources_read(self) -> bool:
        """Whether every source has been read once since the start (the desired state is known,
        so reported containers can be matched to what is wanted). A follower goes by what the
        leader published."""
        if not self._leading:
            leader = self._leader()
            return leader is not None and leader.sources_read
        return all(sync.synced_once for sync in self.syncs)

    def settled(self) -> bool:
        """Whether this control plane knows every pod: since it started, every source has been
        read once and every node the store held at the start has reported its containers once
        the sources were read (so they could be adopted). A store that held no node at the
        start (lost or new) waits `settle_seconds` whatever reports: it cannot know which
        agents are still to come back, and they come back within that. No node waits longer
        than `settle_seconds`."""
        if not self._leading:
            leader = self._leader()
            return leader is not None and leader.settled
        if self._settled:
            return True
        if not self.sources_read():
            return False
        waiting = not self._known or not self._known <= self._reported
        if waiting and time.monotonic() - self._started < self.settle_seconds:
            return False
        self._settled = True
        return True

    def _applied(self) -> None:
        """A new revision is desired: converge on it, recompute previews against it, and try
        again the revisions refused for now (the obstacle may be gone)."""
        if self.controller is not None:
            self.controller.wake()
        for previews in self.previews:
            previews.trigger()
        for sync in self.syncs:
            if sync.waiting:
                sync.trigger()

    def _pushed(self, repo: HostedRepo) -> None:
        """A push to a hosted repository was accepted: sync it and refresh its previews now."""
        for sync in self.syncs:
            if sync.source is repo.source:
                sync.trigger()
        for previews in self.previews:
            if previews.name == repo.source.name:
                previews.trigger()

    def _start_loops(self) -> None:
        """Lead at once if the lease is free (a control plane alone on its database), and
        keep renewing it, or trying to take it, in a thread of its own."""
        self._stopping.clear()
        self._keep_lease()
        self._keeping = threading.Thread(target=self._keep_leasing, name="lease", daemon=True)
        self._keeping.start()
        # What the control plane holds long (the pod cache, the controller's state) is kept
        # out of the collector's full collections (`gitops.heap`).
        if self._heap is None or not self._heap.is_alive():
            self._heap = threading.Thread(target=HEAP.keep, args=(self._stopping,), name="heap", daemon=True)
            self._heap.start()

    def start(self) -> None:
        """Run everything in background threads; returns once the API answers."""
        self._server = self._build()
        self._thread = threading.Thread(target=self._server.run, name="http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the API did not start on {self.url}")
            time.sleep(0.05)
        self._start_loops()
        log.info("server.started", url=self.url, sources=[s.name for s in self.sources])

    def serve(self) -> None:
        """Run in the foreground until SIGTERM or SIGINT, then stop cleanly: loops stopped,
        requests finished, the database closed (on SQLite: one self-contained file).

        uvicorn shuts down on those signals, then raises the signal again under the handler it
        found; the handlers set here swallow it, so the process is not killed mid-stop."""
        was, files = raise_open_files()
        if files != was:
            log.info("server.open_files", limit=files, was=was)
        self._server = self._build()
        self._start_loops()
        main = threading.current_thread() is threading.main_thread()
        before = (
            {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
            if main
            else {}
        )
        log.info("server.starting", url=self.url, sources=[s.name for s in self.sources])
        try:
            self._server.run()
        finally:
            self.stop()
            for sig, handler in before.items():
                signal.signal(sig, handler)
            log.info("server.stopped", url=self.url)

    def stop(self) -> None:
        self._stopping.set()
        if self._keeping is not None:
            self._keeping.join(timeout=10)
        with self._leader_lock:
            self._follow()
            if self.lease is not None:
                try:
                    self.lease.release()  # another control plane takes over at once
                except Exception as exc:  # it expires by itself
                    log.warning("lease.release_failed", error=str(exc))
        if self._server is not None:
            self._server.should_exit = True
            self._server.watch.close()  # agents' long-polls would hold the shutdown
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.store.close()
