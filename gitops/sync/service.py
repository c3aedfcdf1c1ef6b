"""The sync service: each new revision of a source is validated, then applied or rejected.

A revision is all or nothing. If any manifest in it has an error, the revision is recorded
as rejected with every error (`file:line:col: Kind ns/name: field: message`) and the desired
state stays exactly as it was, so what runs keeps running. Otherwise the store replaces the
desired objects in one transaction (objects gone from the source are pruned) and the
controller is woken.

Sources are polled on an interval; a folder source is also watched with watchdog, and
bursts of file events are debounced into one sync.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from gitops.metrics import Metrics
from gitops.schemas.validate import validate_files
from gitops.store import RevisionRecord, Store
from gitops.sync.sources import FolderSource, Source

log = structlog.get_logger(__name__)


def sync_once(store: Store, source: Source, *, now: float | None = None) -> RevisionRecord | None:
    """Bring `source`'s newest revision into the store; None when it was already seen."""
    revision = source.latest()
    last = store.last_revision(source.name)
    if last is not None and last.revision == revision.id:
        return None
    started = time.monotonic()
    files, problems = source.files(revision)
    result = validate_files(files)
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
    else:
        record = store.apply_revision(revision, result.manifests, warnings, now)
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
    ) -> None:
        self.store = store
        self.source = source
        self.metrics = metrics
        self.interval = interval
        self.on_applied = on_applied
        self.debounce = debounce
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._lock = threading.Lock()

    def trigger(self) -> None:
        self._wake.set()

    def sync(self) -> RevisionRecord | None:
        with self._lock:
            started = time.monotonic()
            try:
                record = sync_once(self.store, self.source)
            except Exception:
                self._observe("failed", started)
                raise
            self._observe(record.status if record is not None else "unchanged", started)
        if record is not None and record.status == "applied":
            self.on_applied()
        return record

    def _observe(self, outcome: str, started: float) -> None:
        if self.metrics is not None:
            self.metrics.observe_sync(self.source.name, outcome, time.monotonic() - started)

    def start(self) -> None:
        if isinstance(self.source, FolderSource):
            observer = Observer()
            observer.schedule(
                _Debounced(self.trigger, self.debounce), str(Path(self.source.path)), recursive=True
            )
            observer.daemon = True
            observer.start()
            self._observer = observer
        self._thread = threading.Thread(target=self._run, name="sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.sync()
                failures = 0
            except Exception as exc:
                failures += 1
                log.error("sync.failed", source=self.source.name, error=str(exc), failures=failures)
            delay = self.interval if not failures else min(2.0**failures, self.interval)
            self._wake.wait(delay)
