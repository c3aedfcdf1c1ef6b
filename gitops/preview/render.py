"""A preview as text for a terminal, Markdown for a pull-request comment, or JSON for tools.

The JSON document (format `gitops-preview/1`) is described in docs/preview.md and by
`preview.schema.json` beside this module; it lists every warning on its own, for tools.
People get them grouped (`gitops.diagnostics`): one line per kind of warning, after the
pod actions. The Markdown starts with a summary table, puts each object, the pod actions
and the warnings in collapsible sections, escapes everything that came from a manifest,
and stays under `MARKDOWN_LIMIT` characters, saying what it left out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from gitops.diagnostics import group_warnings, parse_diagnostic
from gitops.preview.compute import PodAction, Preview, RevisionInfo
from gitops.preview.diff import ObjectChange

FORMAT = "gitops-preview/1"
MARKDOWN_LIMIT = 65_000
_SIGN = {"created": "+", "changed": "~", "deleted": "-"}


def status_of(p: Preview) -> str:
    return "error" if p.errors else "changes" if p.changes else "no changes"


def _rev(r: RevisionInfo | None) -> dict[str, str] | None:
    return None if r is None else {"id": r.id, "message": r.message, "author": r.author}


def to_json(p: Preview, *, stale: bool | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "format": FORMAT,
        "status": status_of(p),
        "exit_code": p.exit_code,
        "head": _rev(p.head),
        "base": _rev(p.base),
        "state": {"version": p.state_version, "source": p.state_source},
        "errors": list(p.errors),
        "warnings": list(p.warnings),
        "notes": list(p.notes),
        "counts": dict(p.counts),
        "objects": [
            {
                "kind": o.key.kind,
                "namespace": o.key.namespace,
                "name": o.key.name,
                "change": o.change,
                "location": str(o.location),
                "fields": [{"path": f.path, "before": f.before, "after": f.after} for f in o.fields],
            }
            for o in p.objects
        ],
        "pods": [
            {
                "pass": a.pass_,
                "action": a.action,
                "kind": a.kind,
                "pod": a.pod,
                "owner": a.owner,
                "node": a.node,
                "reason": a.reason,
                **({"containers": [{"name": n, "kind": k} for n, k in a.containers]} if a.containers else {}),
                **({"placement": a.placement} if a.placement else {}),
            }
            for a in p.actions
        ],
        "rollouts": [
            {
                "deployment": r.deployment,
                "workload": r.deployment,
                "replicas": r.replicas,
                "strategy": r.strategy,
                "steps": r.steps,
                "order": list(r.order),
                "skipped": list(r.skipped),
                "summary": r.summary,
            }
            for r in p.rollouts
        ],
        "jobs": [
            {
                "job": j.job,
                "completions": j.completions,
                "parallelism": j.parallelism,
                "indexed": j.indexed,
                "started": list(j.started),
                "status": j.status,
                "cronjob": j.cronjob,
                "summary": j.summary,
            }
            for j in p.jobs
        ],
        "cronjobs": [
            {
                "cronjob": c.cronjob,
                "schedule": c.schedule,
                "time_zone": c.zone,
                "next_runs": list(c.next_runs),
                "started": list(c.started),
                "suspended": c.suspended,
                "reason": c.reason,
                "error": c.error,
                "summary": c.summary,
            }
            for c in p.cronjobs
        ],
        "autoscalers": [
            {
                "autoscaler": a.hpa,
                "target": a.target,
                "min_replicas": a.min_replicas,
                "max_replicas": a.max_replicas,
                "metrics": [{"name": n, "target": t, "current": c} for n, t, c in a.metrics],
                "unsupported": list(a.unsupported),
                "replicas": a.replicas,
                "before": a.before,
                "reason": a.reason,
                "error": a.error,
                "summary": a.summary,
            }
            for a in p.autoscalers
        ],
        "unschedulable": [{"owner": u.owner, "pods": u.pods, "reason": u.reason} for u in p.unschedulable],
        "passes": p.passes,
        "converged": p.converged,
    }
    if stale is not None:
        doc["stale"] = stale
    return doc


def to_json_text(p: Preview) -> str:
    return json.dumps(to_json(p), indent=2, ensure_ascii=False) + "\n"


# --- text -----------------------------------------------------------------------------


def warning_lines(warnings: Sequence[str]) -> list[str]:
    """`warnings` as people read them: one line per kind of warning with a count and its
    first locations; a warning that occurs once exactly as it was written."""
    parsed = [parse_diagnostic(w) for w in warnings]
    written = dict(zip(parsed, warnings, strict=True))
    return [written[g.members[0]] if g.count == 1 else g.line() for g in group_warnings(parsed)]


def _field_lines(o: ObjectChange, indent: str) -> list[str]:
    lines = []
    for f in o.fields:
        if f.before is None:
            lines.append(f"{indent}+ {f.path}: {f.after}")
        elif f.after is None:
            lines.append(f"{indent}- {f.path}: {f.before}")
        else:
            lines.append(f"{indent}~ {f.path}: {f.before} -> {f.after}")
    return lines


def _shape(a: PodAction) -> str:
    """` (init: setup; sidecar: proxy; containers: web, metrics)` for a pod of several."""
    if not a.containers:
        return ""
    groups = {"init": [], "sidecar": [], "app": []}  # type: dict[str, list[str]]
    for name, kind in a.containers:
        groups[kind].append(name)
    parts = [
        f"{label}: {', '.join(groups[kind])}"
        for kind, label in (("init", "init"), ("sidecar", "sidecar"), ("app", "containers"))
        if groups[kind]
    ]
    return " (" + "; ".join(parts) + ")"


def _pod_line(a: PodAction) -> str:
    if a.action == "create":
        where = f"on {a.node}" if a.node else "unschedulable"
        placed = f" [{a.placement}]" if a.placement else ""
        return f"+ {a.pod}{_shape(a)} {where}{placed}: {a.reason}"
    if a.action == "place":
        placed = f" [{a.placement}]" if a.placement else ""
        return f"> {a.pod} lands on {a.node}{placed}: {a.reason}"
    return f"- {a.pod}" + (f" on {a.node}" if a.node else "") + f": {a.reason}"


def _workload_sections(p: Preview, show: Callable[[str], str]) -> list[tuple[str, list[str]]]:
    """What each workload does besides its pod actions, a line each (`gitops.preview.workloads`)."""
    return [
        ("Rollouts", [f"{show(r.deployment)}: {show(r.summary)}" for r in p.rollouts]),
        ("Jobs", [f"{show(j.job)}: {show(j.summary)}" for j in p.jobs]),
        ("CronJobs", [f"{show(c.cronjob)}: {show(c.summary)}" for c in p.cronjobs]),
        ("Autoscalers", [f"{show(a.hpa)}: {show(a.summary)}" for a in p.autoscalers]),
    ]


def _headline(p: Preview) -> str:
    head = f"{p.head.id[:12]}" + (f" ({p.head.message.splitlines()[0]})" if p.head.message else "")
    base = f" onto {p.base.id[:12]}" if p.base else ""
    return f"Preview of {head}{base}"


def _counts_line(p: Preview) -> tuple[str, str]:
    c = p.counts
    objects = (
        f"{c.get('objects_created', 0)} created, {c.get('objects_changed', 0)} changed, "
        f"{c.get('objects_deleted', 0)} deleted"
    )
    pods = (
        f"{c.get('pods_created', 0)} to create, {c.get('pods_replaced', 0)} to replace, "
        f"{c.get('pods_stopped', 0)} to stop, {c.get('pods_unschedulable', 0)} unschedulable"
    )
    return objects, pods


def to_text(p: Preview) -> str:
    out = [
        _headline(p),
        f"on cluster state {p.state_version or '(unversioned)'} from {p.state_source or '(none)'}",
        "",
    ]
    if p.errors:
        out.append(f"The branch is invalid: {len(p.errors)} error{'s' if len(p.errors) != 1 else ''}")
        out += [f"  {e}" for e in p.errors]
        return "\n".join(out) + "\n"
    if not p.changes:
        out.append("No changes: the cluster already matches this revision.")
    objects, pods = _counts_line(p)
    out.append(f"Objects: {objects}")
    for o in p.objects:
        out.append(f"  {_SIGN[o.change]} {o.key} ({o.location})")
        out += _field_lines(o, "      ")
    out.append(f"Pods: {pods}")
    for n in sorted({a.pass_ for a in p.actions}):
        out.append(f"  pass {n}{' (what the next control pass does)' if n == 0 else ''}:")
        out += [f"    {_pod_line(a)}" for a in p.actions if a.pass_ == n]
    for title, lines in (
        *_workload_sections(p, str),
        (
            "Unschedulable",
            [f"{u.owner}: {u.pods} pod{'s' if u.pods != 1 else ''}: {u.reason}" for u in p.unschedulable],
        ),
        ("Warnings", warning_lines(p.warnings)),
        ("Notes", list(p.notes)),
    ):
        if lines:
            out.append(f"{title}:")
            out += [f"  {line}" for line in lines]
    return "\n".join(out) + "\n"


# --- markdown -------------------------------------------------------------------------


def _md(text: str) -> str:
    """Inline text from a manifest, safe in a table cell or a summary line."""
    text = text.replace("&", "&amp;").replace("<", "&lt;")
    # `*` too: a schedule (`*/15 * * * *`) must not turn into emphasis.
    return text.replace("|", "\\|").replace("`", "&#96;").replace("*", "\\*").replace("\n", " ")


def _fenced(lines: Sequence[str], lang: str = "diff") -> str:
    body = "\n".join(lines)
    longest, run = 0, 0
    for ch in body:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{body}\n{fence}"


def _object_section(o: ObjectChange) -> str:
    lines = []
    for f in o.fields:
        if f.before is not None:
            lines.append(f"- {f.path}: {f.before}")
        if f.after is not None:
            lines.append(f"+ {f.path}: {f.after}")
    summary = f"{_SIGN[o.change]} {_md(str(o.key))} ({o.change}, {_md(str(o.location))})"
    return f"<details><summary>{summary}</summary>\n\n{_fenced(lines)}\n\n</details>\n"


def _pods_section(actions: Sequence[PodAction], limit: int) -> str:
    rows = ["| pass | action | pod | node | reason |", "|---|---|---|---|---|"]
    shown = 0
    size = sum(len(r) + 1 for r in rows)
    for a in actions:
        node = a.node or ("unschedulable" if a.action == "create" else "")
        why = a.reason + (f" ({a.placement})" if a.placement else "")
        row = f"| {a.pass_} | {a.action} | {_md(a.pod + _shape(a))} | {_md(node)} | {_md(why)} |"
        if size + len(row) + 1 > limit:
            break
        rows.append(row)
        size += len(row) + 1
        shown += 1
    more = len(actions) - shown
    tail = f"\n\n{more} more pod actions not shown (comment size limit).\n" if more else "\n"
    return (
        f"<details><summary>Pod actions ({len(actions)})</summary>\n\n"
        + "\n".join(rows)
        + tail
        + "\n</details>\n"
    )


def _warnings_section(warnings: Sequence[str], limit: int) -> str:
    lines = warning_lines(warnings)
    items: list[str] = []
    size = 0
    for line in lines:
        item = f"- {_md(line)}"
        if size + len(item) + 1 > limit:
            break
        items.append(item)
        size += len(item) + 1
    more = len(lines) - len(items)
    tail = (
        f"\n\n{more} more kinds of warning not shown (comment size limit); "
        "`gitops plan --format json` lists every warning.\n"
        if more
        else "\n"
    )
    summary = f"{len(warnings)} warning{'s' if len(warnings) != 1 else ''}"
    return f"<details><summary>{summary}</summary>\n\n" + "\n".join(items) + tail + "\n</details>\n"


def to_markdown(p: Preview, *, limit: int = MARKDOWN_LIMIT) -> str:
    head = f"`{_md(p.head.id[:12])}`"
    base = f" onto `{_md(p.base.id[:12])}`" if p.base else ""
    parts = [f"### gitops preview of {head}{base}\n"]
    footer = (
        f"\n<sub>Computed on cluster state `{_md(p.state_version or 'unversioned')}` "
        f"from {_md(p.state_source or 'no state')} by the same planner and scheduler that apply it.</sub>\n"
    )
    if p.errors:
        parts.append(f"**:x: The branch is invalid ({len(p.errors)} errors); nothing would be applied.**\n")
        parts.append(_fenced([*p.errors], "text") + "\n")
        return _fit(parts, [], footer, limit)
    c = p.counts
    verdict = (
        "**No changes.**"
        if not p.changes
        else f"**{len(p.objects)} objects and {len(p.actions)} pod actions.**"
    )
    parts.append(verdict + "\n")
    parts.append(
        "| | created | changed | deleted |\n|---|---|---|---|\n"
        f"| objects | {c.get('objects_created', 0)} | {c.get('objects_changed', 0)} "
        f"| {c.get('objects_deleted', 0)} |\n"
    )
    parts.append(
        "| | to create | to replace | to stop | unschedulable |\n|---|---|---|---|---|\n"
        f"| pods | {c.get('pods_created', 0)} | {c.get('pods_replaced', 0)} | {c.get('pods_stopped', 0)} "
        f"| {c.get('pods_unschedulable', 0)} |\n"
    )
    for title, lines in (
        *_workload_sections(p, _md),
        ("Unschedulable", [f"{_md(u.owner)}: {u.pods} pods: {_md(u.reason)}" for u in p.unschedulable]),
        ("Notes", [_md(n) for n in p.notes]),
    ):
        if lines:
            parts.append(f"**{title}**\n\n" + "\n".join(f"- {line}" for line in lines) + "\n")
    sections = [_object_section(o) for o in p.objects]
    if p.actions:
        sections.append(_pods_section(p.actions, limit // 3))
    tail = _warnings_section(p.warnings, limit // 6) if p.warnings else ""
    return _fit(parts, sections, footer, limit, tail)


def _fit(parts: list[str], sections: list[str], footer: str, limit: int, tail: str = "") -> str:
    """Head parts always; collapsible sections while they fit; then the tail (the warnings,
    room kept for them) and the footer."""
    text = "\n".join(parts)
    reserve = len(footer) + 200
    if len(text) + reserve > limit:
        cut = text[: limit - reserve].rsplit("\n", 1)[0]
        return cut + "\n\n**Truncated** to stay under " + f"{limit:,} characters.\n" + footer
    reserve += len(tail) + 1 if tail else 0
    left = 0
    for i, section in enumerate(sections):
        if len(text) + len(section) + 1 + reserve > limit:
            left = len(sections) - i
            break
        text += "\n" + section
    if left:
        text += (
            f"\n**Truncated:** {left} more section{'s' if left != 1 else ''} not shown to stay under "
            f"{limit:,} characters; `gitops plan --format text` shows everything.\n"
        )
    if tail:
        text += "\n" + tail
    return text + footer
