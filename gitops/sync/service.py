"""The sync service: each new revision of a source is validated, then applied or rejected.

A revision is all or nothing. If any manifest in it has an error, the revision is recorded
as rejected with every error (`file:line:col: Kind ns/name: field: message`) and the desired
state stays exactly as it was, so what runs keeps running. Otherwise the store replaces
the source's own desired objects in one transaction (objects gone from the source are
pruned; other sources' objects are never touched) and the controller is woken.

A valid revision the store refuses as things stand (it claims another source's object,
it would empty its source, the service range is full) is recorded as rejected too, with
the reason, and tried again at every sync while the source stays at it: it applies once
the obstacle is gone, without being recorded again meanwhile.

Sources are polled on an interval; a folder source is also watched with watchdog, and
bursts of file events are debounced into one sync. Failures to read a source (git
unreachable, database locked) are retried with backoff (`gitops.loop`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from gitops.health import Health
from gitops.loop import Backoff, Ended, Loop, Terminal
from gitops.metrics import Metrics
from gitops.schemas.validate import DEFAULT_POLICY, Policy, validate_files
from gitops.store import Refused, RevisionRecord, Store
from gitops.sync.sources import FolderSource, Source, SourceMissing

log = structlog.get_logger(__name__)


def sync_once(
    store: Store,
    source: Source,
    *,
    now: float | None = None,
    allow_empty: bool = False,
    policy: Policy = DEFAULT_POLICY,
) -> RevisionRecord | None:
    """Bring `source`'s newest revision into the store, validated under the server's
    `policy`; None when there was nothing new to record (the revision was seen, or is
    refused again for the same reasons)."""
    revision = source.latest()
    last = store.last_revision(source.name)
    seen = last is not None and last.revision == revision.id
    if seen and last is not None and not last.summary.get("retry"):
        return None
    started = time.monotonic()
    files, problems = source.files(revision)
    result = validate_files(files, policy=policy)
    errors = [str(d) for d in sorted([*problems, *result.errors], key=_position)]
    warnings = [str(d) for d in result.warnings]
    now = time.time() if now is None else now
    if errors:
        record = store.reject_revision(revision, errors, warnings, now)
        log.warning(
            "sync.rejected",
            source=source.name,
            revision=revision.id[:12],
            errors=len(errors),
            first_error=errors[0],
        )
        return record
    try:
        record = store.apply_revision(revision, result.manifests, warnings, now, allow_empty=allow_empty)
    except Refused as refusal:
        if seen and last is not None and tuple(last.errors) == refusal.errors:
            return None
        log.warning(
            "sync.refused",
            source=source.name,
            revision=revision.id[:12],
            errors=len(refusal.errors),
            first_error=refusal.errors[0],
        )
        return store.reject_revision(revision, refusal.errors, warnings, now, retry=True)
    log.info(
        "sync.applied",
        source=source.name,
        revision=revision.id[:12],
        objects=len(result.manifests),
        warnings=len(warnings),
        seconds=round(time.monotonic() - started, 3),
        **{k: len(v) for k, v in record.summary.items()},
    )
    return record


def _position(d: object) -> tuple[str, int, int]:
    loc = getattr(d, "location", None)
    return (loc.file, loc.line, loc.col) if loc is not None else ("", 0, 0)


class _Debounced(FileSystemEventHandler):
    def __init__(self, trigger: Callable[[], None], delay: float) -> None:
        self._trigger = trigger
        self._delay = delay
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self._delay, self._trigger)
            self._timer.daemon = True
            self._timer.start()


class SyncService:
    """Keeps one source synced: on an interval, on file events, and on `trigger()`."""

    def __init__(
        self,
        store: Store,
        source: Source,
        *,
        interval: float = 30.0,
        on_applied: Callable[[], None] = lambda: None,
        debounce: float = 0.5,
        metrics: Metrics | None = None,
        allow_empty: bool = False,
        backoff: Backoff | None = None,
        health: Health | None = None,
        policy: Policy = DEFAULT_POLICY,
        fence: Callable[[], AbstractContextManager[object]] | None = None,
    ) -> None:
        self.store = store
        self.source = source
        self.policy = policy
        self.metrics = metrics
        self.on_applied = on_applied
        self.debounce = debounce
        self.allow_empty = allow_empty
        self.waiting = False  # the source's revision is refused for now, and retried
        self.synced_once = False  # read once since start (applied, rejected, unchanged or missing)
        self._failing = False
        self.loop = Loop(
            "sync",
            self._step,
            interval=interval,
            # Retries never wait longer than a poll would.
            backoff=backoff or Backoff(first=min(1.0, interval), cap=min(30.0, max(1.0, interval))),
            source=source.name,
            health=health,
            component=f"sync {source.name}",
            background=True,
            around=fence,
        )
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._lock = threading.Lock()

    @property
    def interval(self) -> float:
        return self.loop.interval

    def trigger(self) -> None:
        self.loop.trigger()

    def sync(self) -> RevisionRecord | None:
        with self._lock:
            started = time.monotonic()
            try:
                record = sync_once(self.store, self.source, allow_empty=self.allow_empty, policy=self.policy)
            except Exception:
                self._observe("failed", started)
                raise
            if record is not None:
                self.waiting = bool(record.summary.get("retry"))
            self._observe(record.status if record is not None else "unchanged", started)
        if record is not None and record.status == "applied":
            self.on_applied()
        return record

    def _step(self) -> None:
        now = time.time()
        try:
            self.sync()
        except SourceMissing as exc:
            # The source is not there (yet): a folder to create, a first push to make.
            # Retrying faster does not help; file events and pushes trigger a sync.
            self.synced_once = True
            self._unreadable(str(exc), now)
            raise Terminal(str(exc)) from exc
        except Ended:
            raise
        except Exception as exc:  # transient: retried with backoff by the loop, shown meanwhile
            self._unreadable(str(exc) or type(exc).__name__, now)
            raise
        self.synced_once = True
        if self._failing:
            self._failing = False
            self.store.source_ok(self.source.name, now)
            self._watch()  # a folder made again is a new folder: watch it anew

    def _unreadable(self, error: str, now: float) -> None:
        """Shown on the page and in `gitops status` (with since when) until it reads again."""
        self._failing = True
        try:
            self.store.source_failed(self.source.name, error, now)
        except Exception:  # the store may be what fails; the log still says it
            log.exception("sync.health_not_recorded", source=self.source.name)

    def _observe(self, outcome: str, started: float) -> None:
        if self.metrics is not None:
            self.metrics.observe_sync(self.source.name, outcome, time.monotonic() - started)

    def _watch(self) -> None:
        """Watch a folder source for changes (again, when it was removed and made anew)."""
        if not isinstance(self.source, FolderSource) or not Path(self.source.path).is_dir():
            return
        if self._observer is not None:
            self._observer.stop()
        observer = Observer()
        observer.schedule(
            _Debounced(self.trigger, self.debounce), str(Path(self.source.path)), recursive=True
        )
        observer.daemon = True
        observer.start()
        self._observer = observer

    def start(self) -> None:
        self._watch()
        self.loop.start()

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
        self.loop.stop()
