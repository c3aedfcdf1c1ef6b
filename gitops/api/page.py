"""The read-only status page: server-rendered HTML of the cluster, updating itself.

Seven pages share one layout: overview (`/`), `/nodes`, `/workloads` (a section per kind:
Deployments, StatefulSets, DaemonSets, Jobs, CronJobs, Autoscalers), `/pods`,
`/services`, `/events` and `/revisions`, and each pod has a page of its own
(`/pods/{namespace}/{name}`: its containers). Each is complete HTML that works without
JavaScript (links, a GET form to filter pods, pagination); a small inline script then polls
the same URL with `?partial=1` every two seconds, sending the version it shows as
`If-None-Match`, and swaps in the new `<main>` when the answer is not `304 Not Modified`.
No external assets: styles and the script are inline, and a Content-Security-Policy allows
only that one script (by hash).

Pages render from the shared `StatusView` (see `gitops.api.view`), never from SQL, and
a rendered page is kept until the view changes, so a request usually costs a dictionary
lookup. Pods are listed `PER_PAGE` at a time (`?page=`, `?q=` text filter, `?phase=`).

Every string that came from a manifest, an agent or git goes through `esc` (html.escape),
and free text has Secret values redacted by the view.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import html
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from gitops.api.view import (
    WORKLOAD_KINDS,
    AutoscalerRow,
    ContainerRow,
    CronJobRow,
    JobRow,
    PodRow,
    StatusView,
    ViewCache,
    WorkloadRow,
    find_pod,
    logs_url,
    quoted,
)
from gitops.health import Health, Problem
from gitops.model import MetricStatus
from gitops.preview.render import warning_lines
from gitops.store import RevisionRecord

PER_PAGE = 200
PAGES: tuple[tuple[str, str], ...] = (
    ("/", "Overview"),
    ("/nodes", "Nodes"),
    ("/workloads", "Workloads"),
    ("/pods", "Pods"),
    ("/services", "Services"),
    ("/events", "Events"),
    ("/revisions", "Revisions"),
)
POD_PATH = "/pods/{namespace}/{name}"  # a pod's own page, under Pods in the navigation
POLL_MS = 2000

SCRIPT = """(function () {
  var main = document.getElementById("live");
  if (!main || !window.fetch || !window.URL) return;
  var version = main.getAttribute("data-version");
  var state = document.getElementById("live-state");
  function tick() {
    if (document.hidden) { setTimeout(tick, POLL_MS); return; }
    var url = new URL(window.location.href);
    url.searchParams.set("partial", "1");
    fetch(url.toString(), {headers: {"If-None-Match": '"' + version + '"'}, cache: "no-store"})
      .then(function (r) {
        if (state) state.textContent = r.ok || r.status === 304 ? "live" : "offline";
        if (r.status !== 200) return;
        version = (r.headers.get("ETag") || "").replace(/"/g, "");
        return r.text().then(function (text) {
          main.innerHTML = text;
          main.setAttribute("data-version", version);
        });
      })
      .catch(function () { if (state) state.textContent = "offline"; })
      .then(function () { setTimeout(tick, POLL_MS); });
  }
  if (state) state.textContent = "live";
  setTimeout(tick, POLL_MS);
})();""".replace("POLL_MS", str(POLL_MS))

_SCRIPT_HASH = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
CSP = (
    "default-src 'none'; "
    f"script-src 'sha256-{_SCRIPT_HASH}'; "
    "style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

STYLE = """
:root { --ok: #1a7f37; --bad: #cf222e; --warn: #9a6700; --muted: #59636e; --line: #d1d9e0; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #1f2328; background: #fff; }
header { display: flex; gap: 1.5em; align-items: baseline; padding: .6em 1.2em;
  border-bottom: 1px solid var(--line); background: #f6f8fa; flex-wrap: wrap; }
header h1 { font-size: 1.1em; margin: 0; }
nav a { margin-right: .9em; color: #0969da; text-decoration: none; }
nav a[aria-current] { font-weight: 600; color: #1f2328; border-bottom: 2px solid #fd8c73; }
#live-state { color: var(--muted); font-size: .85em; margin-left: auto; }
main, .controls { padding: .8em 1.2em; }
h2 { font-size: 1.05em; margin: 1.2em 0 .4em; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .25em .5em; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-weight: 600; background: #f6f8fa; position: sticky; top: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
code, pre, .mono { font-family: ui-monospace, monospace; font-size: .92em; }
pre { white-space: pre-wrap; margin: .2em 0; }
.ok { color: var(--ok); } .bad { color: var(--bad); }
.warn { color: var(--warn); } .muted { color: var(--muted); }
.chip { display: inline-block; border: 1px solid var(--line); border-radius: 1em; padding: 0 .5em;
  margin: 0 .2em .2em 0; font-size: .85em; white-space: nowrap; }
.bar { width: 9em; height: .6em; background: #eaeef2; border-radius: .3em; overflow: hidden; }
.bar span { display: block; height: 100%; background: #0969da; }
.bar.full span { background: var(--warn); } .bar.over span { background: var(--bad); }
.bar.done span { background: var(--ok); }
.cards { display: flex; gap: 1em; flex-wrap: wrap; }
.card { border: 1px solid var(--line); border-radius: .4em; padding: .5em .9em; min-width: 10em; }
.card b { display: block; font-size: 1.4em; }
details summary { cursor: pointer; }
table.facts { width: auto; } table.facts th { position: static; background: none; padding-right: 2em; }
.pager a, .pager span { margin-right: 1em; }
"""


def esc(value: object) -> str:
    """Text for HTML content or a quoted attribute."""
    return html.escape(str(value), quote=True)


def ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def when(ts: float, now: float) -> str:
    if ts <= 0:
        return '<span class="muted">-</span>'
    iso = dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f'<time datetime="{iso}" title="{iso}">{ago(now - ts)} ago</time>'


def bar(used: float, capacity: float, text: str, *, done_when_full: bool = False) -> str:
    ratio = used / capacity if capacity > 0 else (1.0 if used else 0.0)
    kind = "bar"
    if ratio > 1:
        kind += " over"
    elif ratio >= 1:
        kind += " done" if done_when_full else " full"
    pct = min(100.0, ratio * 100)
    return (
        f'<div class="{kind}" role="img" aria-label="{esc(text)}">'
        f'<span style="width:{pct:.0f}%"></span></div>'
        f'<small class="muted">{esc(text)}</small>'
    )


def chips(items: Iterable[str]) -> str:
    return "".join(f'<span class="chip">{esc(i)}</span>' for i in items) or '<span class="muted">-</span>'


def memory(n: int) -> str:
    for unit, size in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n}B"


def table(headers: Sequence[str], rows: Iterable[str], *, numeric: Sequence[int] = ()) -> str:
    head = "".join(
        f'<th class="num">{h}</th>' if i in numeric else f"<th>{h}</th>" for i, h in enumerate(headers)
    )
    body = "".join(rows)
    if not body:
        body = f'<tr><td colspan="{len(headers)}" class="muted">none</td></tr>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def short(revision: str) -> str:
    return revision[:12]


# --- the pages -------------------------------------------------------------------------


def _revision_block(r: RevisionRecord, now: float, *, errors: bool) -> str:
    message = r.message.strip().splitlines()[0] if r.message.strip() else ""
    parts = [
        f'<p><code title="{esc(r.revision)}">{esc(short(r.revision))}</code> '
        f"<b>{esc(message)}</b><br>"
        f'<span class="muted">by {esc(r.author or "unknown")}, committed {when(r.committed_at, now)}, '
        f"received {when(r.received_at, now)} from {esc(r.source)}</span></p>"
    ]
    if r.summary:
        parts.append(f"<p>{_summary(r.summary)}</p>")
    if errors and r.errors:
        items = "".join(f"<li><pre>{esc(e)}</pre></li>" for e in r.errors)
        parts.append(f'<ul class="bad">{items}</ul>')
    return "".join(parts)


def _summary(summary: Mapping[str, Any]) -> str:
    out = []
    for key in ("created", "changed", "deleted"):
        names = summary.get(key) or []
        if names:
            listed = "".join(f"<li>{esc(n)}</li>" for n in names)
            out.append(f"<details><summary>{len(names)} {key}</summary><ul>{listed}</ul></details>")
        else:
            out.append(f'<span class="muted">0 {key}</span> ')
    return "".join(out)


def _sources_table(view: StatusView, now: float) -> str:
    """Each source with the objects it owns and the revision it is at (or held at)."""
    if not view.per_source:
        listed = "".join(f"<li><code>{esc(s)}</code></li>" for s in view.sources) or "<li>none</li>"
        return f"<ul>{listed}</ul>"
    rows = []
    for row in view.per_source:
        applied = row.last_applied
        at = (
            f'<code title="{esc(applied.revision)}">{esc(short(applied.revision))}</code> '
            f"{when(applied.received_at, now)}"
            if applied
            else '<span class="muted">nothing applied</span>'
        )
        state = '<span class="ok">in sync</span>'
        if row.last_rejected is not None:
            r = row.last_rejected
            first = esc(r.errors[0]) if r.errors else ""
            state = (
                f'<span class="bad">held: {esc(short(r.revision))} rejected '
                f"{when(r.received_at, now)}, {len(r.errors)} error(s)</span><br><small>{first}</small>"
            )
        if row.error:
            state = (
                f'<span class="bad">cannot be read since {when(row.error_since, now)}</span>'
                f"<br><small>{esc(row.error)}</small><br>{state}"
            )
        if not row.configured:
            state += '<br><small class="muted">not configured any more: its objects are kept</small>'
        rows.append(
            f"<tr><td><code>{esc(row.source)}</code></td><td>{row.objects}</td><td>{at}</td><td>{state}</td></tr>"
        )
    return (
        "<table><thead><tr><th>Source</th><th>Objects</th><th>Applied</th><th>State</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def overview(view: StatusView, _: Mapping[str, str]) -> tuple[str, str]:
    now = view.built_at
    c = view.counts
    phases = ", ".join(f"{esc(k)} {v}" for k, v in sorted(c.phases.items())) or "none"
    kinds = ", ".join(f"{esc(k)} {v}" for k, v in c.kinds.items()) or "none"
    rolled = ", ".join(f"{esc(k)} {v}" for k, v in c.workload_kinds.items())
    conditions = ", ".join(f"{esc(k)} {v}" for k, v in c.job_conditions.items())
    cards = (
        f'<div class="card">nodes ready<b>{c.nodes_ready} / {c.nodes}</b></div>'
        f'<div class="card">pods ready<b>{c.pods_ready} / {c.pods}</b><small>{phases}</small></div>'
        f'<div class="card">workloads<b>{c.workloads}</b><small>{rolled}</small></div>'
        + (f'<div class="card">jobs<b>{c.jobs}</b><small>{conditions}</small></div>' if c.jobs else "")
        + (f'<div class="card">cronjobs<b>{c.cronjobs}</b></div>' if c.cronjobs else "")
        + (f'<div class="card">autoscalers<b>{c.autoscalers}</b></div>' if c.autoscalers else "")
        + f'<div class="card">services<b>{c.services}</b></div>'
        f'<div class="card">objects<b>{c.objects}</b><small>{kinds}</small></div>'
    )
    sources = _sources_table(view, now)
    applied = (
        _revision_block(view.last_applied, now, errors=False)
        if view.last_applied
        else '<p class="muted">nothing applied yet</p>'
    )
    if view.last_rejected:
        newer = view.last_applied is None or view.last_rejected.id > view.last_applied.id
        note = (
            '<p class="bad">The newest revision was rejected; the cluster runs the last applied one.</p>'
            if newer
            else '<p class="muted">An applied revision has replaced it since.</p>'
        )
        rejected = note + _revision_block(view.last_rejected, now, errors=True)
    else:
        rejected = '<p class="muted">none</p>'
    html_ = (
        f'<section id="overview"><div class="cards">{cards}</div>'
        f"<h2>Sources</h2>{sources}"
        f"<h2>Last applied revision</h2>{applied}"
        f"<h2>Last rejected revision</h2>{rejected}</section>"
        f"{previews(view)}"
    )
    return "", html_


def previews(view: StatusView) -> str:
    """Previews of branches (the preview feature fills `store.previews()`)."""
    now = view.built_at
    if not view.previews:
        return '<section id="previews"><h2>Previews</h2><p class="muted">no previews</p></section>'
    rows = []
    for p in view.previews:
        counts = p.get("report", {}).get("counts") if isinstance(p.get("report"), Mapping) else None
        count_text = ", ".join(f"{k} {v}" for k, v in counts.items()) if isinstance(counts, Mapping) else ""
        status = str(p.get("status", ""))
        cls = "bad" if status == "error" else ("warn" if status == "changes" else "ok")
        ref, source = str(p.get("ref", "")), str(p.get("source", ""))
        href = f"/api/v1/previews/{quote(ref)}?source={quote(source, safe='')}"
        stale = ' <span class="muted">(stale: the cluster changed since)</span>' if p.get("stale") else ""
        rows.append(
            f'<tr><td><code>{esc(source)}</code></td><td><a href="{esc(href)}">{esc(ref)}</a></td>'
            f'<td class="{cls}">{esc(status)}{stale}</td>'
            f"<td><code>{esc(short(str(p.get('head', ''))))}</code></td>"
            f"<td><code>{esc(short(str(p.get('base', ''))))}</code></td>"
            f"<td>{esc(count_text)}</td>"
            f"<td>{when(float(p.get('computed_at') or 0), now)}</td></tr>"
        )
    headers = ("Source", "Ref", "Status", "Head", "Base", "Changes", "Computed")
    return f'<section id="previews"><h2>Previews</h2>{table(headers, rows)}</section>'


def nodes(view: StatusView, _: Mapping[str, str]) -> tuple[str, str]:
    now = view.built_at
    rows = []
    for n in view.nodes:
        status = (
            '<span class="ok">Ready</span>'
            if n.ready
            else f'<span class="bad">NotReady</span><br><small>{esc(n.reason)}</small>'
        )
        cpu_text = f"{n.cpu_requested}m / {n.cpu_capacity}m"
        memory_text = f"{memory(n.memory_requested)} / {memory(n.memory_capacity)}"
        rows.append(
            f'<tr><td><b>{esc(n.name)}</b><br><span class="muted mono">{esc(n.address)}'
            f"{' · pods ' + esc(n.pod_cidr) if n.pod_cidr else ''}</span></td>"
            f"<td>{status}</td>"
            f"<td>{bar(n.cpu_requested, n.cpu_capacity, cpu_text)}</td>"
            f"<td>{bar(n.memory_requested, n.memory_capacity, memory_text)}</td>"
            f"<td>{bar(n.pods, n.max_pods, f'{n.pods} / {n.max_pods}')}</td>"
            f"<td>{chips(f'{k}={v}' for k, v in n.labels)}</td>"
            f"<td>{chips(n.taints)}</td>"
            f'<td class="num">{ago(now - n.heartbeat_at)}</td></tr>'
        )
    headers = ("Node", "Status", "CPU requested", "Memory requested", "Pods", "Labels", "Taints", "Heartbeat")
    return "", f'<section id="nodes"><h2>Nodes</h2>{table(headers, rows, numeric=(7,))}</section>'


_PLURAL = {"Deployment": "Deployments", "StatefulSet": "StatefulSets", "DaemonSet": "DaemonSets"}


def duration(seconds: float) -> str:
    """kubectl's way with a duration: `45s`, `3m12s`, `2h5m`, `3d4h`."""
    whole = max(0, int(seconds))
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m{secs}s" if secs and minutes < 10 else f"{minutes}m"
    return f"{secs}s"


def until(ts: float, now: float) -> str:
    """A time to come, `in 5m`, with its date in UTC on hover (`due now` once it has passed:
    the view has not been rebuilt since)."""
    iso = dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    soon = f"in {ago(ts - now)}" if ts > now else "due now"
    return f'<time datetime="{iso}" title="{iso}">{soon}</time>'


def _rollout_row(w: WorkloadRow) -> str:
    cls = {"complete": "ok", "failed": "bad", "rolled back": "warn"}.get(w.state, "")
    progress = bar(
        w.updated_available,
        w.desired,
        f"{w.updated_available} / {w.desired} updated and available",
        done_when_full=True,
    )
    history = chips(short(h) for h in w.history)
    reason = f'<br><span class="muted">{esc(w.reason)}</span>' if w.reason else ""
    if w.error:
        reason += f'<br><span class="bad">error: {esc(w.error)}</span>'
    scaled = f"<br><small>replicas set by autoscaler {esc(w.autoscaler)}</small>" if w.autoscaler else ""
    return (
        f'<tr><td><b>{esc(w.name)}</b><br><small class="muted">{esc(w.strategy)}</small>{scaled}</td>'
        f'<td class="num">{w.desired}</td><td class="num">{w.updated}</td>'
        f'<td class="num">{w.ready}</td><td class="num">{w.available}</td>'
        f"<td>{progress}</td>"
        f'<td><span class="{cls}">{esc(w.state)}</span>{reason}<br><small>{esc(w.step)}</small></td>'
        f'<td><code title="current template">{esc(short(w.template_hash))}</code><br>{history}</td></tr>'
    )


def _rollouts_section(kind: str, rows: Sequence[WorkloadRow]) -> str:
    """Deployments, StatefulSets or DaemonSets: counters, rollout progress, state and step
    (a StatefulSet's names the next ordinal, a DaemonSet's counts nodes)."""
    desired = "Desired nodes" if kind == "DaemonSet" else "Desired"
    headers = (kind, desired, "Updated", "Ready", "Available", "Rollout", "State", "Template, history")
    listing = table(headers, (_rollout_row(w) for w in rows), numeric=(1, 2, 3, 4))
    title = _PLURAL.get(kind, kind)
    return f'<section id="{title.lower()}"><h2>{title}</h2>{listing}</section>'


_JOB_CLASS = {"Complete": "ok", "Failed": "bad", "Suspended": "warn", "Pending": "warn"}


def _job_row(j: JobRow, now: float) -> str:
    cls = _JOB_CLASS.get(j.condition, "ok" if not j.failed else "warn")
    owner = f"<br><small>started by CronJob {esc(j.owner)}</small>" if j.owner else ""
    if j.wanted is not None:
        progress = bar(j.done, j.wanted, f"{j.completions} completions", done_when_full=True)
    else:
        progress = f'<small class="muted">{j.done} succeeded (work queue)</small>'
    reason = esc(j.reason)
    if j.expired:
        reason += '<br><small class="muted">ttlSecondsAfterFinished passed: its pods are gone</small>'
    if j.error:
        reason += f'<br><span class="bad">error: {esc(j.error)}</span>'
    took = duration(j.duration) if j.duration is not None else '<span class="muted">-</span>'
    started = when(j.started_at, now) if j.started_at is not None else '<span class="muted">-</span>'
    return (
        f"<tr><td><b>{esc(j.name)}</b><br>"
        f'<small class="muted">parallelism {j.parallelism}</small>{owner}</td>'
        f'<td class="{cls}">{esc(j.condition)}</td><td>{progress}</td>'
        f'<td class="num">{j.active}</td><td class="num">{j.succeeded}</td>'
        f'<td class="num{" bad" if j.failed else ""}">{j.failed}</td>'
        f'<td class="num">{took}</td><td>{started}</td><td>{reason}</td></tr>'
    )


def _jobs_section(view: StatusView) -> str:
    headers = (
        "Job",
        "Condition",
        "Completions",
        "Active",
        "Succeeded",
        "Failed",
        "Duration",
        "Started",
        "Reason",
    )
    listing = table(headers, (_job_row(j, view.built_at) for j in view.jobs), numeric=(3, 4, 5, 6))
    return f'<section id="jobs"><h2>Jobs</h2>{listing}</section>'


_OUTCOME_CLASS = {"Complete": "ok", "Failed": "bad"}


def _cronjob_row(c: CronJobRow, now: float) -> str:
    schedule = (
        f"<code>{esc(c.schedule)}</code><br>"
        f'<small class="muted">{esc(c.time_zone)} · {esc(c.concurrency_policy)}</small>'
    )
    suspend = '<span class="warn">yes</span>' if c.suspended else "no"
    if c.next_run is not None:
        upcoming = f"{esc(c.next_run_text)}<br><small>{until(c.next_run, now)}</small>"
    elif c.suspended:
        upcoming = '<span class="muted">suspended</span>'
    else:
        upcoming = '<span class="muted">-</span>'
    last = c.last_run
    if last is not None:
        cls = _OUTCOME_CLASS.get(last.outcome, "warn")
        ran = (
            f'{esc(last.name)}<br><small class="{cls}">{esc(last.outcome or "active")}</small>'
            f' <small class="muted">scheduled {when(last.scheduled_at, now)}</small>'
        )
    else:
        ran = '<span class="muted">none yet</span>'
    active = f"<br><small>{esc(', '.join(c.active))}</small>" if c.active else ""
    reason = esc(c.reason)
    if c.error:
        reason += f'<br><span class="bad">error: {esc(c.error)}</span>'
    last_schedule = (
        when(c.last_schedule, now) if c.last_schedule is not None else '<span class="muted">-</span>'
    )
    return (
        f"<tr><td><b>{esc(c.name)}</b></td><td>{schedule}</td><td>{suspend}</td>"
        f'<td class="num">{len(c.active)}{active}</td><td>{last_schedule}</td>'
        f"<td>{upcoming}</td><td>{ran}</td><td>{reason}</td></tr>"
    )


def _cronjobs_section(view: StatusView) -> str:
    headers = ("CronJob", "Schedule", "Suspend", "Active", "Last schedule", "Next run", "Last run", "Reason")
    listing = table(headers, (_cronjob_row(c, view.built_at) for c in view.cronjobs), numeric=(3,))
    return f'<section id="cronjobs"><h2>CronJobs</h2>{listing}</section>'


def _metric(m: MetricStatus) -> str:
    current = (
        f'<b class="warn">{esc(m.current)}</b>' if m.current == "unknown" else f"<b>{esc(m.current)}</b>"
    )
    return f"{esc(m.name)} {current} / {esc(m.target)}"


def _autoscaler_row(a: AutoscalerRow) -> str:
    if a.replicas is None:
        replicas = '<span class="muted">-</span>'
    elif a.replicas >= a.max_replicas > 0:  # wants more, perhaps, and may not have them
        replicas = f'{a.replicas} <small class="warn">at max</small>'
    elif a.replicas <= a.min_replicas:
        replicas = f'{a.replicas} <small class="muted">at min</small>'
    else:
        replicas = str(a.replicas)
    metrics = "<br>".join(_metric(m) for m in a.metrics) or '<span class="muted">-</span>'
    if a.unsupported:
        metrics += f'<br><small class="muted">not read: {esc(", ".join(a.unsupported))}</small>'
    reason = esc(a.reason)
    if a.error:
        reason += f'<br><span class="bad">error: {esc(a.error)}</span>'
    return (
        f"<tr><td><b>{esc(a.name)}</b></td><td>{esc(a.target)}</td>"
        f'<td class="num">{a.min_replicas}</td><td class="num">{a.max_replicas}</td>'
        f'<td class="num">{replicas}</td><td>{metrics}</td><td>{reason}</td></tr>'
    )


def _autoscalers_section(view: StatusView) -> str:
    headers = ("Autoscaler", "Target", "Min", "Max", "Replicas", "Metrics (current / target)", "Reason")
    listing = table(headers, (_autoscaler_row(a) for a in view.autoscalers), numeric=(2, 3, 4))
    return f'<section id="autoscalers"><h2>Autoscalers</h2>{listing}</section>'


def workloads(view: StatusView, _: Mapping[str, str]) -> tuple[str, str]:
    """A section per kind that has objects: Deployments, StatefulSets, DaemonSets, Jobs,
    CronJobs, Autoscalers (Deployments, empty, when there is nothing at all)."""
    sections = []
    for kind in WORKLOAD_KINDS:
        rows = [w for w in view.workloads if w.kind == kind]
        if rows:
            sections.append(_rollouts_section(kind, rows))
    if view.jobs:
        sections.append(_jobs_section(view))
    if view.cronjobs:
        sections.append(_cronjobs_section(view))
    if view.autoscalers:
        sections.append(_autoscalers_section(view))
    if not sections:
        sections.append(_rollouts_section("Deployment", ()))
    return "", f'<section id="workloads">{"".join(sections)}</section>'


def _int(value: str | None, default: int) -> int:
    try:
        return max(1, int(value or default))
    except ValueError:
        return default


def pod_path(p: PodRow) -> str:
    """The pod's own page. Like `logs_url`, quoted: nothing in it needs HTML escaping."""
    return f"/pods/{quoted(p.namespace)}/{quoted(p.name)}"


_CALM = frozenset({"Running", "Completed", "Succeeded"})
_WAITING = frozenset({"Pending", "PodInitializing", "ContainerCreating", "Terminating"})


def _status(p: PodRow) -> str:
    """kubectl's STATUS, coloured, with the phase beneath when it says something else."""
    status = p.status or p.phase
    initialising = status.startswith("Init:") and status[5:6].isdigit()  # Init:1/2, not Init:Error
    cls = "ok" if status in _CALM else "warn" if status in _WAITING or initialising else "bad"
    phase = f'<br><small class="muted">{esc(p.phase)}</small>' if p.phase != status else ""
    return f'<span class="{cls}">{esc(status)}</span>{phase}'


def _ready_cell(p: PodRow) -> str:
    """kubectl's READY: ready app containers of all app containers."""
    done, _, total = p.ready_containers.partition("/")
    cls = "ok" if p.ready and done == total else "muted"
    return f'<td class="num {cls}" title="ready app containers">{p.ready_containers}</td>'


def _logs_links(p: PodRow) -> str:
    """A link to the pod's logs; one per app container when it has several (the pod's own
    URL then answers 400 and asks which, as `kubectl logs` does)."""
    apps = [c.name for c in p.containers if c.kind == "app"]
    if len(apps) < 2:  # one app container: the pod's own URL reads it
        return f'<a href="{p.logs_url}">logs</a>'
    links = ", ".join(f'<a href="{logs_url(p.namespace, p.name, name)}">{esc(name)}</a>' for name in apps)
    return f"logs: {links}"


def _kind(c: ContainerRow) -> str:
    return "" if c.kind == "app" else f'<span class="chip">{esc(c.kind)}</span>'


def _container_reasons(p: PodRow) -> str:
    """What a pod's containers say beyond its own reason (an init container that completed
    and one waiting for its turn say nothing worth a line)."""
    lines = [
        f"<br><small>{_kind(c)}<b>{esc(c.name)}</b>: {esc(c.reason)}</small>"
        for c in p.containers
        if c.reason and c.reason not in ("Completed", "PodInitializing") and c.reason not in p.reason
    ]
    return "".join(lines)


def pods(view: StatusView, query: Mapping[str, str]) -> tuple[str, str]:
    now = view.built_at
    text = (query.get("q") or "").strip().lower()
    phase = query.get("phase") or ""
    selected = [p for p in view.pods if (not phase or p.phase == phase) and (not text or text in p.search)]
    pages = max(1, -(-len(selected) // PER_PAGE))
    page = min(_int(query.get("page"), 1), pages)
    shown = selected[(page - 1) * PER_PAGE : page * PER_PAGE]
    rows = []
    for p in shown:
        reason = esc(p.reason) + _container_reasons(p)
        if p.last_log:
            reason += f"<details><summary>last log</summary><pre>{esc(p.last_log)}</pre></details>"
        labels = f"<br><small>{chips(f'{k}={v}' for k, v in p.labels)}</small>" if p.labels else ""
        node = esc(p.node) or '<span class="muted">unscheduled</span>'
        rows.append(
            f'<tr><td><b><a href="{pod_path(p)}">{esc(p.id)}</a></b><br>'
            f'<small class="muted">{esc(p.owner)} · {p.qos_class} · '
            f"{_logs_links(p)}</small>{labels}</td>"
            f"{_ready_cell(p)}<td>{_status(p)}</td>"
            f"<td>{node}</td>"
            f'<td class="mono">{esc(p.pod_ip)}</td>'
            f'<td class="num">{p.restarts}</td><td class="num">{ago(now - p.created_at)}</td>'
            f"<td>{reason}</td></tr>"
        )
    first = (page - 1) * PER_PAGE + 1 if shown else 0
    filtered = f" (filtered from {len(view.pods):,})" if len(selected) != len(view.pods) else ""
    last = first + len(shown) - 1 if shown else 0
    count = (
        f'<p id="pod-count">Showing {first:,}-{last:,} '
        f"of {len(selected):,} pods{filtered}, {PER_PAGE} per page.</p>"
    )

    def link(n: int, label: str) -> str:
        params = {k: v for k, v in (("q", query.get("q") or ""), ("phase", phase), ("page", str(n))) if v}
        return f'<a href="/pods?{esc(urlencode(params))}">{label}</a>'

    pager = ""
    if pages > 1:
        prev = link(page - 1, "&larr; previous") if page > 1 else '<span class="muted">&larr; previous</span>'
        nxt = link(page + 1, "next &rarr;") if page < pages else '<span class="muted">next &rarr;</span>'
        pager = f'<p class="pager">{prev}<span>page {page} of {pages}</span>{nxt}</p>'
    phases = ("", "Pending", "Running", "Succeeded", "Failed", "Unknown")
    options = "".join(
        f'<option value="{v}"{" selected" if v == phase else ""}>{v or "any phase"}</option>' for v in phases
    )
    controls = (
        '<form class="controls" method="get" action="/pods" role="search">'
        f'<label>Filter <input type="search" name="q" value="{esc(query.get("q") or "")}" '
        'placeholder="name, node, IP, reason"></label> '
        f'<label>Phase <select name="phase">{options}</select></label> '
        '<button type="submit">Show</button></form>'
    )
    headers = ("Pod", "Ready", "Status", "Node", "IP", "Restarts", "Age", "Reason")
    listing = table(headers, rows, numeric=(1, 5, 6))
    body = f'<section id="pods"><h2>Pods</h2>{count}{pager}{listing}{pager}</section>'
    return controls, body


def services(view: StatusView, _: Mapping[str, str]) -> tuple[str, str]:
    rows = []
    for s in view.services:
        shown = s.endpoints[:10]
        hidden = len(s.endpoints) - len(shown)
        more = f'<br><span class="muted">and {hidden} more</span>' if hidden else ""
        cls = "ok" if s.ready else "bad"
        kind = f'<br><small class="muted">{esc(s.type)}</small>' if s.type != "ClusterIP" else ""
        ingress = f"<br><small>ingress {esc(', '.join(s.ingress))}</small>" if s.ingress else ""
        ready = (
            f'<td class="num {cls}">{s.ready}</td>' if s.type != "ExternalName" else '<td class="num">-</td>'
        )
        rows.append(
            f'<tr><td><b>{esc(s.name)}</b>{kind}</td><td class="mono">{esc(s.vip)}{ingress}</td>'
            f"<td>{'<br>'.join(esc(p) for p in s.ports)}</td>"
            f"{ready}"
            f"<td><small>{'<br>'.join(esc(e) for e in shown)}{more}</small></td></tr>"
        )
    headers = ("Service", "VIP", "Ports", "Ready endpoints", "Endpoints")
    return "", f'<section id="services"><h2>Services</h2>{table(headers, rows, numeric=(3,))}</section>'


def events(view: StatusView, _: Mapping[str, str]) -> tuple[str, str]:
    now = view.built_at
    rows = [
        f"<tr><td>{when(e.time, now)}</td><td>{esc(e.object)}</td><td>{esc(e.reason)}</td>"
        f"<td>{esc(e.message)}</td></tr>"
        for e in view.events
    ]
    headers = ("When", "Object", "Reason", "Message")
    return "", f'<section id="events"><h2>Events (newest {len(rows)})</h2>{table(headers, rows)}</section>'


@functools.lru_cache(maxsize=256)
def _grouped(warnings: tuple[str, ...]) -> tuple[str, ...]:
    """A revision's warnings one line per kind (`gitops.diagnostics`), kept across views."""
    return tuple(warning_lines(warnings))


def revisions(view: StatusView, _: Mapping[str, str]) -> tuple[str, str]:
    now = view.built_at
    rows = []
    for r in view.revisions:
        cls = "ok" if r.status == "applied" else "bad"
        message = r.message.strip().splitlines()[0] if r.message.strip() else ""
        details = _summary(r.summary) if r.status == "applied" else ""
        if r.errors:
            items = "".join(f"<li><pre>{esc(e)}</pre></li>" for e in r.errors)
            details += (
                f"<details open><summary>{len(r.errors)} error(s)</summary>"
                f'<ul class="bad">{items}</ul></details>'
            )
        if r.warnings:
            items = "".join(f"<li><pre>{esc(w)}</pre></li>" for w in _grouped(r.warnings))
            details += f"<details><summary>{len(r.warnings)} warning(s)</summary><ul>{items}</ul></details>"
        rows.append(
            f'<tr><td><code title="{esc(r.revision)}">{esc(short(r.revision))}</code><br>'
            f'<small class="muted">{esc(r.source)}</small></td>'
            f'<td class="{cls}">{esc(r.status)}</td>'
            f'<td>{esc(message)}<br><small class="muted">{esc(r.author)}</small></td>'
            f"<td>{when(r.committed_at, now)}</td><td>{when(r.received_at, now)}</td><td>{details}</td></tr>"
        )
    headers = ("Revision", "Status", "Message", "Committed", "Received", "Changes")
    return "", f'<section id="revisions"><h2>Revisions</h2>{table(headers, rows)}</section>'


def _find(view: StatusView, query: Mapping[str, str]) -> PodRow | None:
    return find_pod(view, f"{query.get('namespace', '')}/{query.get('name', '')}")


def _state(c: ContainerRow) -> str:
    cls = {"running": "ok" if c.ready else "warn", "terminated": "ok" if c.exit_code == 0 else "bad"}
    ready = " ready" if c.state == "running" and c.ready else " not ready" if c.state == "running" else ""
    return f'<span class="{cls.get(c.state, "warn")}">{esc(c.state)}{ready}</span>'


def pod_detail(view: StatusView, query: Mapping[str, str]) -> tuple[str, str]:
    """One pod: what the list shows, and each of its containers with its own log link."""
    now = view.built_at
    p = _find(view, query)
    if p is None:
        pod_id = f"{query.get('namespace', '')}/{query.get('name', '')}"
        return "", (
            f'<section id="pod"><h2>Pod {esc(pod_id)}</h2><p class="bad">No such pod (any more).</p>'
            '<p><a href="/pods">All pods</a></p></section>'
        )
    facts = (
        ("Status", _status(p)),
        (
            "Ready",
            f"{esc(p.ready_containers)} app containers" + (", pod ready" if p.ready else ", pod not ready"),
        ),
        ("Reason", esc(p.reason) or '<span class="muted">-</span>'),
        ("Node", esc(p.node) or '<span class="muted">unscheduled</span>'),
        ("IP", f'<span class="mono">{esc(p.pod_ip) or "-"}</span>'),
        ("QoS class", esc(p.qos_class)),
        ("Restarts", str(p.restarts)),
        ("Created", when(p.created_at, now)),
        ("Owner", esc(p.owner_key)),
        ("Template", f"<code>{esc(p.template_hash)}</code>"),
        ("Host ports", esc(", ".join(f"{h}->{c}/{proto}" for c, proto, h in p.host_ports)) or "-"),
        ("Labels", chips(f"{k}={v}" for k, v in p.labels)),
        ("Logs", _logs_links(p)),
    )
    summary = "".join(f'<tr><th scope="row">{k}</th><td>{v}</td></tr>' for k, v in facts)
    last_log = (
        f"<details open><summary>last log</summary><pre>{esc(p.last_log)}</pre></details>"
        if p.last_log
        else ""
    )
    rows = []
    for c in p.containers:
        log = (
            f"<details><summary>last log</summary><pre>{esc(c.last_log)}</pre></details>"
            if c.last_log
            else ""
        )
        exit_code = "" if c.exit_code is None else str(c.exit_code)
        href = logs_url(p.namespace, p.name, c.name)
        rows.append(
            f"<tr><td><b>{esc(c.name)}</b> {_kind(c)}</td><td><code>{esc(c.image)}</code></td>"
            f'<td>{_state(c)}</td><td class="num">{c.restarts}</td><td class="num">{exit_code}</td>'
            f'<td>{esc(c.reason)}{log}</td><td><a href="{esc(href)}">logs</a></td></tr>'
        )
    headers = ("Container", "Image", "State", "Restarts", "Exit code", "Reason", "Logs")
    body = (
        f'<section id="pod"><h2>Pod {esc(p.id)}{" (terminating)" if p.terminating else ""}</h2>'
        f'<p><a href="/pods">All pods</a></p><table class="facts"><tbody>{summary}</tbody></table>{last_log}'
        f"<h2>Containers</h2>{table(headers, rows, numeric=(3, 4))}"
        '<p class="muted"><small>Init containers run one at a time, in order, before the app containers; '
        "sidecars are init containers that keep running beside them.</small></p></section>"
    )
    return "", body


Renderer = Callable[[StatusView, Mapping[str, str]], tuple[str, str]]
RENDERERS: Mapping[str, Renderer] = {
    "/": overview,
    "/nodes": nodes,
    "/workloads": workloads,
    "/pods": pods,
    "/services": services,
    "/events": events,
    "/revisions": revisions,
}


def problems_banner(problems: Sequence[Problem], now: float) -> str:
    """What fails in the control plane now, above everything else: the page may be stale."""
    if not problems:
        return ""
    items = "".join(
        f"<li><b>{esc(p.component)}</b> failing for {esc(ago(now - p.since))}: "
        f"<code>{esc(p.error)}</code></li>"
        for p in problems
    )
    return (
        f'<section id="problems" class="bad" role="alert"><h2>The control plane has problems</h2>'
        f"<ul>{items}</ul><p>What this page shows may be out of date.</p></section>"
    )


def live_fragment(view: StatusView, body: str, banner: str = "") -> str:
    as_of = dt.datetime.fromtimestamp(view.built_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f'{banner}{body}<p class="muted"><small>As of {as_of}.</small></p>'


def layout(
    path: str,
    view: StatusView,
    controls: str,
    body: str,
    *,
    banner: str = "",
    version: str = "",
    title: str = "",
) -> str:
    """The complete page of section `path` (`title`: the section's name, or an HTML-escaped own)."""
    title = title or dict(PAGES)[path]
    current = ' aria-current="page"'
    links = "".join(f'<a href="{href}"{current if href == path else ""}>{name}</a>' for href, name in PAGES)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
        f"<title>gitops: {title}</title><style>{STYLE}</style></head><body>"
        f'<header><h1>gitops</h1><nav aria-label="sections">{links}</nav>'
        '<span id="live-state" aria-live="polite">reload to update</span></header>'
        f"{controls}"
        f'<main id="live" data-version="{esc(version or view.generation)}">'
        f"{live_fragment(view, body, banner)}</main>"
        f"<script>{SCRIPT}</script></body></html>"
    )


@dataclass
class _Rendered:
    generation: str = ""
    pages: dict[tuple[Any, ...], bytes] | None = None


class StatusPage:
    """Renders the pages from a `ViewCache`, keeping each rendered page per view."""

    max_cached_pages = 512

    def __init__(self, cache: ViewCache, health: Health | None = None) -> None:
        self.cache = cache
        self.health = health or Health()
        self._rendered = _Rendered()

    def _version(self, view: StatusView) -> tuple[str, str]:
        """The page's version (the view's, and what fails now) and the problems banner."""
        problems = self.health.problems()
        if not problems:
            return view.generation, ""
        mark = hashlib.sha256(repr([(p.component, p.error, p.since) for p in problems]).encode()).hexdigest()[
            :8
        ]
        return f"{view.generation}-{mark}", problems_banner(problems, view.built_at)

    def render(self, view: StatusView, path: str, query: Mapping[str, str], *, partial: bool) -> bytes:
        version, banner = self._version(view)
        key = (path, partial, *sorted(query.items()))
        rendered = self._rendered
        if rendered.generation != version or rendered.pages is None:
            rendered = _Rendered(version, {})
            self._rendered = rendered
        assert rendered.pages is not None
        cached = rendered.pages.get(key)
        if cached is not None:
            return cached
        if path == POD_PATH:
            controls, body = pod_detail(view, query)
            section, title = "/pods", esc(f"Pod {query.get('namespace', '')}/{query.get('name', '')}")
        else:
            controls, body = RENDERERS[path](view, query)
            section, title = path, ""
        text = (
            live_fragment(view, body, banner)
            if partial
            else layout(section, view, controls, body, banner=banner, version=version, title=title)
        )
        data = text.encode()
        if len(rendered.pages) >= self.max_cached_pages:
            rendered.pages.clear()
        rendered.pages[key] = data
        return data

    async def respond(self, request: Request, path: str) -> Response:
        view = self.cache.current()
        if view is None:  # the first request, or caching is off: build in a worker thread
            view = await run_in_threadpool(self.cache.get)
        etag = f'"{self._version(view)[0]}"'
        headers = {
            "ETag": etag,
            "Cache-Control": "no-cache",
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        params = request.query_params
        query = {k: params[k] for k in ("q", "phase", "page") if params.get(k)} if path == "/pods" else {}
        found = True
        if path == POD_PATH:
            query = {"namespace": request.path_params["namespace"], "name": request.path_params["name"]}
            found = _find(view, query) is not None
        partial = params.get("partial") == "1"
        body = self.render(view, path, query, partial=partial)
        return Response(
            body, status_code=200 if found else 404, media_type="text/html; charset=utf-8", headers=headers
        )


def install_status_page(app: FastAPI, cache: ViewCache, health: Health | None = None) -> StatusPage:
    """Add the page routes (GET; HEAD and the 405s come from the read-only middleware)."""
    page = StatusPage(cache, health)

    def route(path: str) -> Callable[[Request], Any]:
        async def handler(request: Request) -> Response:
            return await page.respond(request, path)

        handler.__name__ = f"page_{path.strip('/') or 'overview'}"
        return handler

    for path, title in PAGES:
        app.add_api_route(
            path, route(path), methods=["GET"], include_in_schema=False, name=f"status page: {title}"
        )
    pod = route(POD_PATH)
    pod.__name__ = "page_pod"
    app.add_api_route(POD_PATH, pod, methods=["GET"], include_in_schema=False, name="status page: Pod")
    return page
