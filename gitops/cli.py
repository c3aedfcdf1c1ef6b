"""The `gitops` command: run the parts, validate manifests, read the status.

gitops up [DIR]          control plane + one local agent on DIR, embedded SQLite
gitops serve ...         the control plane alone (sources, store, API, controller)
gitops agent ...         a node agent for the local Docker engine
gitops validate PATH...  check manifests; exit 1 on any error
gitops status            what the cluster runs, and the last rejected revision
gitops logs POD          a container's log, read through its node's agent (as kubectl logs)
gitops plan ...          preview what a revision would change (exit 0 none, 2 changes, 1 error)
gitops state export      the cluster state as a snapshot file for `gitops plan --state`
gitops backup -o FILE    a copy of the store (Secret values sealed; the key file is not in it)
gitops restore FILE      put a backup back into a database no server is using
gitops down              remove this node's containers and iptables chains

The module itself imports only what building the parser needs (the standard library and
`gitops.terminal`); each command imports what it uses when it runs: httpx for the commands
that ask a server, structlog for all but `validate` (which logs nothing), the schemas for
`validate`, SQLAlchemy, git, Docker and the web framework for the rest. `gitops --help`
starts in a few hundredths of a second, `gitops status` (which must answer within a second
at 8,000 pods) carries no database or validation code, and `gitops validate` no server
(bench/cli_start.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gitops.terminal import SafeStream, escape

if TYPE_CHECKING:
    import httpx

    from gitops.model import ClusterState, Diagnostic, Taint
    from gitops.schemas.validate import Policy
    from gitops.sync.sources import Source

DEFAULT_STATE = Path(os.environ.get("GITOPS_STATE_DIR", ".gitops"))


def configure_logging(json_logs: bool, level: str = "info") -> None:
    import logging  # noqa: PLC0415 - see the module docstring

    import structlog  # noqa: PLC0415

    from gitops.redact import log_processor  # noqa: PLC0415

    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_logs
        else structlog.dev.ConsoleRenderer(colors=False)  # the CLI's streams escape control characters
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
            log_processor,  # Secret values and URL credentials never reach the log
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )


# --- validate ---------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    """Warnings first, one line per kind (`gitops.diagnostics`), then every error on its own."""
    from gitops.diagnostics import group_warnings  # noqa: PLC0415 - see the imports above
    from gitops.schemas.loader import SourceFile  # noqa: PLC0415
    from gitops.schemas.validate import validate_files  # noqa: PLC0415
    from gitops.sync.sources import read_folder  # noqa: PLC0415

    files: list[SourceFile] = []
    problems: list[Diagnostic] = []
    for raw in args.paths:
        path = Path(raw)
        if path.is_dir():
            found, bad = read_folder(path)
            prefix = "" if len(args.paths) == 1 else f"{raw.rstrip('/')}/"
            files += [SourceFile(prefix + f.path, f.content) for f in found]
            problems += bad
        elif path.is_file():
            files.append(SourceFile(raw, path.read_bytes()))
        else:
            print(f"{raw}: no such file or folder", file=sys.stderr)
            return 1
    result = validate_files(files, policy=_policy(args))
    errors = [*problems, *result.errors]
    if not args.quiet:
        for group in group_warnings(result.warnings):
            print(group)
    for d in errors:
        print(d)
    print(
        f"{len(files)} file(s), {len(result.manifests)} object(s): "
        f"{len(errors)} error(s), {len(result.warnings)} warning(s)",
        file=sys.stderr,
    )
    return 1 if errors else 0


def _policy(args: argparse.Namespace) -> Policy:
    """The server's `Policy` from its options (--allow-host-path), as `serve` and `validate`
    take them."""
    from gitops.schemas.validate import Policy  # noqa: PLC0415

    try:
        return Policy(
            host_paths=tuple(getattr(args, "allow_host_path", None) or ()),
            privileged=bool(getattr(args, "allow_privileged", False)),
        )
    except ValueError as exc:
        raise SystemExit(f"--allow-host-path: {exc}") from None


# --- status -----------------------------------------------------------------------------


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _subject(revision: dict[str, Any]) -> str:
    lines = str(revision["message"]).splitlines()
    return lines[0] if lines else ""


def _read_headers(args: argparse.Namespace) -> dict[str, str]:
    """The read token for a server that needs one: --read-token-file, else GITOPS_READ_TOKEN."""
    token = ""
    if getattr(args, "read_token_file", None):
        token = _read_secret(args.read_token_file, "--read-token-file")
    elif os.environ.get("GITOPS_READ_TOKEN"):
        token = os.environ["GITOPS_READ_TOKEN"].strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _unauthorized(url: str, exc: httpx.HTTPError) -> str:
    import httpx  # noqa: PLC0415 - see the module docstring

    if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == 401:
        return f"{url}: the server needs its read token (GITOPS_READ_TOKEN or --read-token-file)"
    return f"cannot reach the gitops server at {url}: {exc}"


STATUS_PODS = 20  # pods `gitops status` lists without --all


def _one_line(value: Any) -> Any:
    """Every string of an API answer fit for one terminal line (log tails: per line)."""
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, list):
        return [_one_line(v) for v in value]
    if isinstance(value, dict):
        return {
            k: "\n".join(escape(line) for line in v.splitlines())
            if k == "last_log" and isinstance(v, str)
            else _one_line(v)
            for k, v in value.items()
        }
    return value


_QUIET = ("", "Completed", "PodInitializing")  # what a container says when all is well or it waits its turn


def _pod_lines(p: dict[str, Any]) -> list[str]:
    """A pod's row as kubectl shows it (READY: ready app containers of all; STATUS such as
    `Init:1/2`, `CrashLoopBackOff`, `OOMKilled`), then, for a pod of several containers, a line
    for each container that has something to say, init containers and sidecars marked. A
    server of before per-container status sends neither: its phase and readiness stand in."""
    ready = p.get("ready_containers") or ("1/1" if p["ready"] else "0/1")
    lines = [
        f"{p['id']:<44} {ready:<5} {p.get('status') or p['phase']:<16} {p['restarts']:>8} "
        f"{p.get('qos_class') or '-':<10} {p['node'] or '-':<14} {p['pod_ip'] or '-':<15}  {p['reason']}"
    ]
    containers = p.get("containers") or []
    if len(containers) > 1:
        for c in containers:
            fine = c["state"] != "running" or c["ready"]
            if c["reason"] in _QUIET and fine and c["exit_code"] in (None, 0):
                continue
            state = c["state"] + (" ready" if c["ready"] else " not ready" if c["state"] == "running" else "")
            ended = f"exit code {c['exit_code']}" if c["exit_code"] is not None else ""
            reason = c["reason"] or ended
            lines.append(
                f"    {c['kind']:<7} {c['name']:<24} {state:<17} {c['restarts']:>3} restarts  {reason}"
            )
    return lines


def _first_pods(http: httpx.Client, limit: int) -> list[Any]:
    """The first `limit` pods, those with a problem first (every pod, by name, for 0): the
    first page of the paged list, or the plain list a server of before paging answers (its
    `limit` meant the same and it ignores `order`)."""
    params: dict[str, Any] = {"limit": limit, "order": "problems"} if limit else {}
    answer = http.get("/api/v1/pods", params=params).raise_for_status().json()
    pods: list[Any] = answer["items"] if isinstance(answer, dict) else answer
    return pods


def _listed(http: httpx.Client, path: str) -> list[Any]:
    """A list the server answers, or none from a server of before that route."""
    response = http.get(path)
    if response.status_code == 404:
        return []
    answer: list[Any] = response.raise_for_status().json()
    return answer


def _jobs_table(jobs: list[dict[str, Any]]) -> list[str]:
    """`kubectl get jobs`, with the reason a Job ended or waits; nothing when there are none."""
    if not jobs:
        return []
    out = [f"{'JOB':<40} {'COMPLETIONS':<12} {'DURATION':>8}  {'STATUS':<10} REASON"]
    for j in jobs:
        took = _age(j["duration"]) if j["duration"] is not None else "-"
        reason = j["reason"] + (f"  ERROR: {j['error']}" if j.get("error") else "")
        name = f"{j['namespace']}/{j['name']}"
        out.append(f"{name:<40} {j['completions']:<12} {took:>8}  {j['condition']:<10} {reason}".rstrip())
    return [*out, ""]


def _cronjobs_table(cronjobs: list[dict[str, Any]], now: float) -> list[str]:
    """`kubectl get cronjobs`, with when each runs next; nothing when there are none."""
    if not cronjobs:
        return []
    out = [f"{'CRONJOB':<30} {'SCHEDULE':<16} {'SUSPEND':<7} {'ACTIVE':>6}  {'LAST-SCHEDULE':<13} NEXT-RUN"]
    for c in cronjobs:
        last = f"{_age(now - c['last_schedule'])} ago" if c["last_schedule"] is not None else "<none>"
        if c["next_run"] is not None:
            upcoming = f"in {_age(c['next_run'] - now)} ({c['next_run_text']})"
        else:
            upcoming = "<suspended>" if c["suspend"] else "<none>"
        if c.get("error"):
            upcoming += f"  ERROR: {c['error']}"
        name = f"{c['namespace']}/{c['name']}"
        out.append(
            f"{name:<30} {c['schedule']:<16} {c['suspend']!s:<7} {len(c['active']):>6}  {last:<13} {upcoming}"
        )
    return [*out, ""]


def _autoscalers_table(autoscalers: list[dict[str, Any]]) -> list[str]:
    """`kubectl get hpa`, with the reason of the last decision; nothing when there are none."""
    if not autoscalers:
        return []
    out = [f"{'AUTOSCALER':<30} {'TARGET':<30} {'MIN':>4} {'MAX':>4} {'REPLICAS':>8}  {'METRICS':<24} REASON"]
    for a in autoscalers:
        target = f"{a['target']['kind']}/{a['target']['name']}"
        replicas = str(a["replicas"]) if a["replicas"] is not None else "-"
        metrics = ", ".join(m["text"] for m in a["metrics"]) or "-"
        reason = a["reason"] + (f"  ERROR: {a['error']}" if a.get("error") else "")
        name = f"{a['namespace']}/{a['name']}"
        out.append(
            f"{name:<30} {target:<30} {a['min_replicas']:>4} {a['max_replicas']:>4} {replicas:>8}  "
            f"{metrics:<24} {reason}".rstrip()
        )
    return [*out, ""]


def cmd_status(args: argparse.Namespace) -> int:
    import httpx  # noqa: PLC0415 - see the module docstring

    try:
        with httpx.Client(base_url=args.server, timeout=10, headers=_read_headers(args)) as http:
            status = http.get("/api/v1/status").raise_for_status().json()
            nodes = http.get("/api/v1/nodes").raise_for_status().json()
            pods = _first_pods(http, 0 if getattr(args, "all", False) else STATUS_PODS)
            services = http.get("/api/v1/services").raise_for_status().json()
            workloads = http.get("/api/v1/workloads").raise_for_status().json()
            jobs, cronjobs, autoscalers = (
                _listed(http, "/api/v1/jobs"),
                _listed(http, "/api/v1/cronjobs"),
                _listed(http, "/api/v1/autoscalers"),
            )
    except httpx.HTTPError as exc:
        print(_unauthorized(args.server, exc), file=sys.stderr)
        return 1
    status, nodes, pods, services, workloads, jobs, cronjobs, autoscalers = (
        _one_line(status),
        _one_line(nodes),
        _one_line(pods),
        _one_line(services),
        _one_line(workloads),
        _one_line(jobs),
        _one_line(cronjobs),
        _one_line(autoscalers),
    )
    now = time.time()
    out = []
    for problem in status.get("problems") or []:
        out.append(
            f"PROBLEM: {problem['component']} failing for {_age(problem['for_seconds'])}: {problem['error']} "
            "(what follows may be out of date)"
        )
    out.append("Sources: " + (", ".join(status["sources"]) or "(none)"))
    applied = status["last_applied"]
    running = applied["revision"][:12] if applied else "nothing"
    if applied:
        author = applied["author"] or "unknown author"
        out.append(
            f"Applied: {running} {_subject(applied)} ({author}, {_age(now - applied['received_at'])} ago)"
        )
    else:
        out.append("Applied: nothing yet")
    rejected = status["last_rejected"]
    if rejected:
        out.append(
            f"REJECTED: {rejected['revision'][:12]} {_subject(rejected)} "
            f"({_age(now - rejected['received_at'])} ago), "
            f"{len(rejected['errors'])} error(s); still running {running}:"
        )
        out += [f"  {e}" for e in rejected["errors"]]
    per_source = status.get("per_source") or []
    for row in per_source:
        if row.get("error"):
            since = _age(now - row["error_since"]) if row.get("error_since") else "?"
            out.append(f"CANNOT READ {row['source']} (for {since}): {row['error']}")
    if len(per_source) > 1:
        for row in per_source:
            at = row["last_applied"]["revision"][:12] if row["last_applied"] else "nothing applied"
            line = f"  {row['source']}: {row['objects']} object(s) at {at}"
            if not row["configured"]:
                line += " (not configured any more; its objects are kept)"
            out.append(line)
            held = row["last_rejected"]
            if held and (not rejected or held["id"] != rejected["id"]):
                out.append(f"    HELD: {held['revision'][:12]} rejected, {len(held['errors'])} error(s):")
                out += [f"      {e}" for e in held["errors"]]
    c = status["counts"]
    kinds = ", ".join(f"{kind} {n}" for kind, n in (c.get("objects_by_kind") or {}).items())
    out.append(
        f"Nodes: {c['nodes_ready']}/{c['nodes']} ready   "
        f"Pods: {c['pods_ready']}/{c['pods']} ready   Objects: {c['objects']}"
        + (f" ({kinds})" if kinds else "")
    )
    out.append("")
    out.append(f"{'NODE':<20} {'READY':<6} {'ADDRESS':<16} {'CPU':>8} {'MEMORY':>10} HEARTBEAT")
    for n in nodes:
        ready = "yes" if n["ready"] else "NO"
        memory = f"{n['memory_bytes'] // 2**20}Mi"
        out.append(
            f"{n['name']:<20} {ready:<6} {n['address']:<16} {n['cpu_milli']:>7}m {memory:>10} "
            f"{n['heartbeat_age']}s ago" + (f"  {n.get('reason')}" if n.get("reason") else "")
        )
    out.append("")
    out.append(
        f"{'WORKLOAD':<30} {'KIND':<11} {'DESIRED':>7} {'UPDATED':>7} {'READY':>5} {'AVAILABLE':>9}  STEP"
    )
    for w in workloads:
        out.append(
            f"{w['deployment']:<30} {w.get('kind', 'Deployment'):<11} {w['desired']:>7} {w['updated']:>7} "
            f"{w['ready']:>5} {w['available']:>9}  "
            f"{w['state'].upper() if w['state'] in ('failed', 'rolled back') else ''}"
            f"{': ' + w['reason'] if w['reason'] else w['step']}"
            + (f"  ERROR: {w['error']}" if w.get("error") else "")
        )
    out.append("")
    out += _jobs_table(jobs)
    out += _cronjobs_table(cronjobs, now)
    out += _autoscalers_table(autoscalers)
    total = status["counts"]["pods"]
    heading = (
        f"{'POD':<44} {'READY':<5} {'STATUS':<16} {'RESTARTS':>8} {'QOS':<10} {'NODE':<14} {'IP':<15}  REASON"
    )
    if len(pods) < total:
        heading += f"   (the first {len(pods)} of {total}, problems first; --all for every pod)"
    out.append(heading)
    for p in pods:
        out += _pod_lines(p)
        if p["last_log"] and not p["ready"]:
            out += [f"    | {line}" for line in p["last_log"].rstrip().splitlines()[-5:]]
    out.append("")
    out.append(f"{'SERVICE':<30} {'TYPE':<12} {'VIP':<15} PORTS -> READY ENDPOINTS")
    for s in services:
        ports = []
        for port, eps in s["endpoints"]:
            node_port = f":{port['node_port']}" if port.get("node_port") else ""
            ports.append(f"{port['port']}{node_port}/{port['protocol']}->{len(eps)}")
        kind = s.get("type", "ClusterIP")
        if s.get("headless"):
            address = "None"
            ports.append(f"({len(s.get('addresses', []))} addresses)")
        else:
            address = s.get("external_name") or s["vip"]
        if s.get("ingress"):
            ports.append("ingress " + ",".join(s["ingress"]))
        out.append(f"{s['namespace'] + '/' + s['name']:<30} {kind:<12} {address:<15} {' '.join(ports)}")
    print("\n".join(out))
    return 0


# --- logs -------------------------------------------------------------------------------


def _duration(value: str) -> int:
    """`--since`: seconds, or a duration such as 30s, 5m, 2h."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (value[:-1], value[-1]) if value[-1:] in units else (value, "s")
    if not number.isdigit():
        raise argparse.ArgumentTypeError(
            f"expected seconds or a duration such as 30s, 5m or 2h, got {value!r}"
        )
    return int(number) * units[unit]


def _log_text(text: str) -> str:
    """A log's text for the terminal: control characters escaped, newlines and tabs kept.
    The server has done so already; done again here, as for everything the CLI prints."""
    return "\t".join(escape(part, keep_newlines=True) for part in text.replace("\r\n", "\n").split("\t"))


def _error_detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    return str(detail) if detail else f"HTTP {response.status_code}: {response.text[:200]}"


def cmd_logs(args: argparse.Namespace) -> int:
    """A container's log, streamed by the server from the pod's node (`gitops.api.logs`)."""
    from urllib.parse import quote  # noqa: PLC0415

    import httpx  # noqa: PLC0415 - see the module docstring

    pod = args.pod.removeprefix("pods/").removeprefix("pod/")
    path = f"/api/v1/pods/{quote(args.namespace, safe='')}/{quote(pod, safe='')}/logs"
    params: dict[str, Any] = {"previous": args.previous, "follow": args.follow}
    if args.container:
        params["container"] = args.container
    if args.tail >= 0:
        params["tail"] = args.tail
    if args.since:
        params["since"] = args.since
    # Written past the SafeStream, which would escape tabs too: `_log_text` escapes the rest.
    out = getattr(sys.stdout, "stream", sys.stdout)
    node = ""
    timeout = httpx.Timeout(30.0, read=None if args.follow else 30.0)
    try:
        with (
            httpx.Client(base_url=args.server, headers=_read_headers(args), timeout=timeout) as http,
            http.stream("GET", path, params=params) as response,
        ):
            if response.status_code >= 400:
                response.read()
                print(f"error: {_error_detail(response)}", file=sys.stderr)
                return 1
            node = response.headers.get("x-gitops-node", "")
            for text in response.iter_text():
                out.write(_log_text(text))
                out.flush()
    except httpx.RemoteProtocolError:
        print(
            f"error: the log from node {node or '?'} broke off before its end "
            "(its agent stopped answering, or the server stopped)",
            file=sys.stderr,
        )
        return 1
    except httpx.HTTPError as exc:
        print(_unauthorized(args.server, exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `gitops logs POD | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
    return 0


# --- serve / agent / up -----------------------------------------------------------------


def _sources(args: argparse.Namespace, state: Path) -> list[Source]:
    from gitops.sync.sources import FolderSource, GitSource, mirror_folder  # noqa: PLC0415

    sources: list[Source] = []
    for folder in args.dir or []:
        sources.append(FolderSource(Path(folder)))
    for url in args.git or []:
        cache = mirror_folder(state / "git", url)
        sources.append(GitSource(url, cache, branch=args.branch, path=args.path))
    return sources


def private_folder(path: Path) -> Path:
    """`path`, created 0700 (and tightened to 0700 if it exists and is ours)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid == os.geteuid() and path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def _given_db(args: argparse.Namespace) -> str:
    """--db, else GITOPS_DB. A password written in --db is on the command line, where every
    user of the host can read it (ps): say so, once."""
    if getattr(args, "db", None):
        from sqlalchemy.engine import make_url  # noqa: PLC0415 - SQLAlchemy only with a store

        if make_url(str(args.db)).password:
            print(
                "gitops: the password in --db is visible to every user of this host (ps); "
                "give the URL in GITOPS_DB, or the password in ~/.pgpass",
                file=sys.stderr,
            )
        return str(args.db)
    return os.environ.get("GITOPS_DB", "")


def _db_url(args: argparse.Namespace, state: Path) -> str:
    given = _given_db(args)
    if given:
        return given
    private_folder(state)
    database = (state / "gitops.db").resolve()
    if not database.exists():
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT, 0o600))
    return f"sqlite:///{database}"


def _keys(args: argparse.Namespace, state: Path, *, create: bool = True) -> Any:
    """The cluster's secret key (created on first start), or exit saying what is wrong."""
    from gitops.store import SecretKeyError, SecretKeys  # noqa: PLC0415 - cryptography only where needed

    path = Path(args.secret_key_file) if getattr(args, "secret_key_file", None) else state / "secret.key"
    if create and not getattr(args, "secret_key_file", None):
        private_folder(state)
    try:
        return SecretKeys.from_file(path, create=create)
    except (SecretKeyError, OSError) as exc:
        raise SystemExit(f"--secret-key-file {path}: {exc}") from exc


def _open_store(args: argparse.Namespace, state: Path, *, read_only: bool = False, **options: Any) -> Any:
    """The store of the state folder (or --db); `read_only` for tools that must not change
    it: no migration, no key created. A database that cannot be used is one line."""
    from sqlalchemy.engine import make_url  # noqa: PLC0415 - SQLAlchemy only with a store
    from sqlalchemy.exc import DBAPIError  # noqa: PLC0415

    from gitops.store import SecretKeyError, Store  # noqa: PLC0415

    url = _given_db(args) if read_only and _given_db(args) else _db_url(args, state)
    keys = _keys(args, state, create=not read_only)
    try:
        return Store(url, keys=keys, read_only=read_only, **options)
    except (SecretKeyError, ValueError) as exc:
        raise SystemExit(f"gitops: {exc}") from exc
    except DBAPIError as exc:
        where = make_url(url).render_as_string(hide_password=True)
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
        raise SystemExit(
            f"gitops: the database {where} cannot be used: {reason}. Restore it from a backup "
            "(gitops restore FILE), or move it away to start with an empty one: the sources are "
            "read again, and the containers the agents run are adopted, not recreated."
        ) from None


def _parse_labels(values: Sequence[str]) -> tuple[tuple[str, str], ...]:
    from gitops.schemas.checks import LABEL_KEY_HELP, LABEL_VALUE_HELP, is_label_key, is_label_value  # noqa: PLC0415

    pairs = []
    for v in values:
        key, sep, value = v.partition("=")
        if not sep:
            raise SystemExit(f"--label {v!r}: expected key=value")
        if not is_label_key(key):
            raise SystemExit(f"--label {v!r}: the key is not {LABEL_KEY_HELP}")
        if not is_label_value(value):
            raise SystemExit(f"--label {v!r}: the value is not {LABEL_VALUE_HELP}")
        pairs.append((key, value))
    return tuple(sorted(pairs))


def _topology(flag: str, value: str) -> str:
    from gitops.schemas.checks import LABEL_VALUE_HELP, is_label_value  # noqa: PLC0415

    if not is_label_value(value):
        raise SystemExit(f"{flag} {value!r}: expected {LABEL_VALUE_HELP}")
    return value


def _cluster_domain(value: str) -> str:
    from gitops.agents.dns import cluster_domain  # noqa: PLC0415 - dnspython only for agents

    try:
        cluster_domain(value)
    except ValueError as exc:
        raise SystemExit(f"--cluster-domain {value!r}: {exc}") from None
    return value.strip(".").lower()


def _parse_taints(values: Sequence[str]) -> tuple[Taint, ...]:
    from gitops.model import Taint  # noqa: PLC0415 - see the module docstring

    taints = []
    for v in values:
        kv, sep, effect = v.rpartition(":")
        if not sep or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise SystemExit(f"--taint {v!r}: expected key[=value]:NoSchedule|PreferNoSchedule|NoExecute")
        key, _, value = kv.partition("=")
        taints.append(Taint(key, value, effect))  # type: ignore[arg-type]
    return tuple(taints)


def _control_plane(args: argparse.Namespace, state: Path, sources: list[Source]) -> Any:
    from gitops.server import ControlPlane  # noqa: PLC0415 - keeps `validate` and `status` light

    store = _open_store(
        args,
        state,
        service_cidr=args.service_cidr,
        cluster_cidr=args.cluster_cidr,
        node_cidr_mask=args.node_cidr_mask,
        heartbeat_grace=args.node_grace,
    )
    token = _join_token(args, state, create=True)
    push = _push_options(args, state)
    try:
        plane = ControlPlane(
            store,
            sources,
            allow_empty=_allow_empty(args, sources, push.get("hosted", [])),
            host=args.host,
            port=args.port,
            poll_interval=args.poll,
            allow_probe_hosts=args.allow_probe_hosts,
            policy=_policy(args),
            read_token=_read_token(args, state),
            not_ready_toleration=args.not_ready_toleration,
            preview_refspec=getattr(args, "previews", ""),
            name=getattr(args, "name", ""),
            lead=not getattr(args, "api_only", False),
            **push,
        )
    except ValueError as exc:
        raise SystemExit(f"gitops: {exc}") from exc
    plane.join_token = token
    return plane


def _read_token(args: argparse.Namespace, state: Path) -> str | None:
    """The token reads need: none on loopback or with --public-read; else --read-token-file,
    GITOPS_READ_TOKEN, or STATE_DIR/read-token (generated 0600 on first start)."""
    import secrets  # noqa: PLC0415 - see the module docstring

    from gitops.api.auth import is_loopback  # noqa: PLC0415 - the HTTP side only when serving

    if getattr(args, "public_read", False):
        return None
    given = getattr(args, "read_token_file", None) or os.environ.get("GITOPS_READ_TOKEN")
    if is_loopback(args.host) and not given:
        return None
    if getattr(args, "read_token_file", None):
        return _read_secret(args.read_token_file, "--read-token-file")
    if os.environ.get("GITOPS_READ_TOKEN"):
        return os.environ["GITOPS_READ_TOKEN"].strip()
    path = private_folder(state) / "read-token"
    if path.exists():
        return _read_secret(str(path), "the generated read token")
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    print(f"reads (page, API, metrics) need the token in {path}", file=sys.stderr)
    return token


def _refuse_token_argument(args: argparse.Namespace) -> None:
    if getattr(args, "join_token", None):
        raise SystemExit(
            "--join-token puts the token on the command line, where every user of this host can read "
            "it (ps, /proc); give it with --join-token-file PATH or the GITOPS_JOIN_TOKEN environment "
            "variable"
        )


def _join_token(args: argparse.Namespace, state: Path, *, create: bool) -> str:
    """The join token from --join-token-file or GITOPS_JOIN_TOKEN; for a server without either,
    the one in STATE_DIR/join-token, generated (0600) on first start."""
    import secrets  # noqa: PLC0415 - see the module docstring

    _refuse_token_argument(args)
    if getattr(args, "join_token_file", None):
        return _read_secret(args.join_token_file, "--join-token-file")
    if os.environ.get("GITOPS_JOIN_TOKEN"):
        return os.environ["GITOPS_JOIN_TOKEN"].strip()
    if not create:
        raise SystemExit("gitops agent: give the join token with --join-token-file PATH or GITOPS_JOIN_TOKEN")
    path = private_folder(state) / "join-token"
    if path.exists():
        return _read_secret(str(path), "the generated join token")
    token = secrets.token_hex(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def _allow_empty(
    args: argparse.Namespace, sources: Sequence[Source], hosted: Sequence[Any]
) -> frozenset[str]:
    """Names of the sources `--allow-empty` names (by folder, URL, hosted name or source name)."""
    from gitops.sync.sources import FolderSource, GitSource  # noqa: PLC0415

    chosen = set()
    for given in getattr(args, "allow_empty", None) or []:
        matches = [
            s.name
            for s in sources
            if given == s.name
            or (isinstance(s, FolderSource) and Path(given).resolve() == s.path.resolve())
            or (isinstance(s, GitSource) and given == s.url)
        ]
        matches += [h.source.name for h in hosted if given in (h.name, h.source.name)]
        if not matches:
            names = ", ".join([*(s.name for s in sources), *(h.name for h in hosted)]) or "(none)"
            raise SystemExit(f"--allow-empty {given}: no such source (the sources are: {names})")
        chosen.update(matches)
    return frozenset(chosen)


def _read_secret(path: str, option: str) -> str:
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise SystemExit(f"{option} {path}: cannot read: {exc.strerror}") from exc
    if not value:
        raise SystemExit(f"{option} {path}: the file is empty")
    return value


def _push_token_path(args: argparse.Namespace, state: Path) -> Path:
    return Path(args.push_token_file) if getattr(args, "push_token_file", None) else state / "push-token"


def _push_options(args: argparse.Namespace, state: Path) -> dict[str, Any]:
    """Hosted repositories, their push token and the webhook secret (read from files only)."""
    import secrets  # noqa: PLC0415 - see the module docstring

    from gitops.sync.hosted import HostedRepo  # noqa: PLC0415

    options: dict[str, Any] = {}
    if getattr(args, "webhook_secret_file", None):
        options["webhook_secret"] = _read_secret(args.webhook_secret_file, "--webhook-secret-file").encode()
    names = getattr(args, "host_repo", None) or []
    if names:
        try:
            options["hosted"] = [HostedRepo(name, state) for name in names]
        except ValueError as exc:
            raise SystemExit(f"--host-repo {exc}") from exc
        path = _push_token_path(args, state)
        if getattr(args, "push_token_file", None):
            options["push_token"] = _read_secret(str(path), "--push-token-file")
        elif path.exists():
            options["push_token"] = _read_secret(str(path), "the generated push token")
        else:
            token = secrets.token_hex(24)
            state.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
            options["push_token"] = token
    return options


def _agent(args: argparse.Namespace, server: str, token: str, state: Path) -> Any:
    from gitops.agents.agent import Agent, AgentConfig  # noqa: PLC0415
    from gitops.agents.runtime import DockerRuntime  # noqa: PLC0415
    from gitops.model import NodeName  # noqa: PLC0415
    from gitops.redact import redact_logs_with  # noqa: PLC0415

    runtime = DockerRuntime(args.docker)
    runtime.ping()
    private_folder(state / "agent")
    config = AgentConfig(
        server=server,
        node=NodeName(args.node),
        join_token=token,
        state_dir=state / "agent" / args.node,
        address=args.address or "",
        labels=_parse_labels(args.label or []),
        taints=_parse_taints(args.taint or []),
        zone=_topology("--zone", args.zone),
        region=_topology("--region", args.region),
        iptables=args.iptables,
        chain_prefix=args.chain_prefix,
        proxy_mode=args.proxy_mode,
        secret_dir=Path(args.secret_dir) if args.secret_dir else None,
        cluster_domain=_cluster_domain(args.cluster_domain),
        usage_interval=max(1.0, float(args.usage_interval)),
    )
    agent = Agent(config, runtime)
    redact_logs_with(agent.redactor)
    return agent


def cmd_serve(args: argparse.Namespace) -> int:
    state = Path(args.state_dir)
    sources = _sources(args, state)
    if args.api_only and args.host_repo:
        # A push lands on the disk of the control plane that took it, which would never sync it.
        print(
            "gitops serve: --api-only never syncs, so it cannot host a repository (--host-repo)",
            file=sys.stderr,
        )
        return 2
    if not sources and not args.host_repo and not args.api_only:
        print("gitops serve: give at least one --dir, --git or --host-repo source", file=sys.stderr)
        return 2
    plane = _control_plane(args, state, sources)
    for repo in plane.hosted:
        print(
            f"hosting {repo.name}: git push {plane.url}/git/{repo.name}.git (deploys {repo.branch}; "
            f"the password is the push token in {_push_token_path(args, state)})",
            file=sys.stderr,
        )
    if not (getattr(args, "join_token_file", None) or os.environ.get("GITOPS_JOIN_TOKEN")):
        print(f"agents join with the token in {state / 'join-token'}", file=sys.stderr)
    plane.serve()
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    from gitops.agents.agent import NodeRefused  # noqa: PLC0415

    token = _join_token(args, Path(args.state_dir), create=False)
    agent = _agent(args, args.server, token, Path(args.state_dir))
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    try:
        agent.run()
    except NodeRefused as exc:
        print(f"gitops agent: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    state = Path(args.state_dir)
    folder = Path(args.directory)
    if not folder.is_dir():
        print(f"gitops up: {folder} is not a folder", file=sys.stderr)
        return 2
    args.dir, args.git = [str(folder)], []
    plane = _control_plane(args, state, _sources(args, state))
    plane.start()
    agent = _agent(args, plane.url, plane.join_token, state)
    agent.start()
    print(
        f"""
gitops is up.
  manifests:  {folder.resolve()} (edits are applied within a second; invalid ones are rejected)
  API:        {plane.url}/api/v1/status   (pods: /api/v1/pods, services: /api/v1/services)
  status:     gitops status --server {plane.url}
  database:   {_db_url(args, state)}
Press Ctrl-C to stop (containers keep running; `gitops down` removes them).
""",
        file=sys.stderr,
        flush=True,
    )
    stop = {"now": False}

    def _stop(*_: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not stop["now"]:
        time.sleep(0.2)
    agent.stop()
    plane.stop()
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    import shutil  # noqa: PLC0415 - see the module docstring

    from gitops.agents.iptables import IptablesProxy  # noqa: PLC0415
    from gitops.agents.network import PodNetwork, pod_network_name  # noqa: PLC0415
    from gitops.agents.nftables import NftablesProxy, nftables_works  # noqa: PLC0415
    from gitops.agents.runtime import DockerRuntime  # noqa: PLC0415
    from gitops.model import NodeName  # noqa: PLC0415

    runtime = DockerRuntime(args.docker)
    removed = 0
    for c in runtime.list(NodeName(args.node)):
        runtime.remove(c.id, 10)
        removed += 1
    # Pods' emptyDir volumes go with their pods; claims' volumes hold data and stay (a
    # control plane that no longer has the claim makes its agent delete them).
    volumes = len(runtime.remove_volumes(NodeName(args.node), keep=set()))
    runtime.remove_network(pod_network_name(args.node))
    PodNetwork(prefix=args.chain_prefix, iptables=args.iptables).cleanup()
    IptablesProxy(args.service_cidr, prefix=args.chain_prefix, iptables=args.iptables).cleanup()
    if not nftables_works():  # the nftables proxy's table, when the agent chose it
        NftablesProxy(args.service_cidr, prefix=args.chain_prefix).cleanup()
    secrets_dir = Path(args.secret_dir) if args.secret_dir else Path("/dev/shm/gitops") / args.node  # noqa: S108
    shutil.rmtree(secrets_dir, ignore_errors=True)
    print(
        f"removed {removed} container(s) and {volumes} emptyDir volume(s) of node {args.node}, "
        "its pod network and routes, the "
        f"{args.chain_prefix} iptables chains "
        f"and the Secret files in {secrets_dir}"
    )
    return 0


# --- parser -----------------------------------------------------------------------------


# --- plan and state ---------------------------------------------------------------------


def _read_state(source: str | None, headers: dict[str, str]) -> tuple[ClusterState, str, bool]:
    """The state to preview on, where it came from, and whether it is nodes only."""
    import httpx  # noqa: PLC0415 - see the module docstring

    from gitops.model import ClusterState  # noqa: PLC0415
    from gitops.preview.state import StateError, from_json, load_state  # noqa: PLC0415

    if source is None:
        return ClusterState(desired=(), pods=(), nodes=()), "no --state (no nodes: pods are not placed)", True
    if source.startswith(("http://", "https://")):
        url = source.rstrip("/")
        if not url.endswith("/api/v1/state"):
            url += "/api/v1/state"
        try:
            response = httpx.get(url, timeout=30, trust_env=False, headers=headers)
            response.raise_for_status()
            return from_json(response.json(), url), url, False
        except httpx.HTTPStatusError as exc:
            raise StateError(_unauthorized(url, exc)) from exc
        except (httpx.HTTPError, ValueError) as exc:
            raise StateError(f"{url}: cannot read the cluster state: {exc}") from exc
    path = Path(source)
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise StateError(f"{source}: cannot read: {exc.strerror}") from exc
    state = load_state(source, content)
    snapshot = content.lstrip().startswith(b"{")  # else a nodes file: the base is settled on it
    return state, source, not snapshot


def cmd_plan(args: argparse.Namespace) -> int:
    import secrets  # noqa: PLC0415 - see the module docstring

    from gitops.preview.render import to_json_text, to_markdown, to_text  # noqa: PLC0415
    from gitops.preview.state import StateError  # noqa: PLC0415
    from gitops.sync.previews import preview_revisions  # noqa: PLC0415

    try:
        state, where, nodes_only = _read_state(args.state, _read_headers(args))
        result = preview_revisions(
            Path(args.repo),
            args.base,
            args.head,
            args.path,
            state,
            state_source=where,
            settle_base=nodes_only,
            now=time.time(),
            secret_key=secrets.token_bytes(32),
            policy=_policy(args),
        )
    except (StateError, ValueError) as exc:
        print(f"gitops plan: {exc}", file=sys.stderr)
        return 1
    render = {"text": to_text, "markdown": to_markdown, "json": to_json_text}[args.format]
    sys.stdout.write(render(result))
    if result.errors and args.format != "text":
        for error in result.errors:
            print(error, file=sys.stderr)
    return result.exit_code


def cmd_state_export(args: argparse.Namespace) -> int:
    if args.db:
        from gitops.api.readmodel import ReadModel  # noqa: PLC0415 - SQLAlchemy only for --db

        document = ReadModel(_open_store(args, Path(args.state_dir), read_only=True)).state()
    else:
        import httpx  # noqa: PLC0415 - see the module docstring

        url = args.server.rstrip("/") + "/api/v1/state"
        try:
            response = httpx.get(url, timeout=30, trust_env=False, headers=_read_headers(args))
            response.raise_for_status()
            document = response.json()
        except httpx.HTTPError as exc:
            print(f"gitops state export: {_unauthorized(url, exc)}", file=sys.stderr)
            return 1
    text = json.dumps(document, indent=1, ensure_ascii=False) + "\n"
    if args.output and args.output != "-":
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


# --- backup and restore ----------------------------------------------------------------


def _store_url(args: argparse.Namespace) -> str:
    """--db (or GITOPS_DB), else the SQLite file of --state-dir; nothing is created."""
    from sqlalchemy.exc import ArgumentError  # noqa: PLC0415 - SQLAlchemy only with a store

    try:
        given = _given_db(args)
    except ArgumentError:
        raise SystemExit("--db: not a database URL (e.g. postgresql+psycopg2://USER@HOST/DB)") from None
    return given or f"sqlite:///{(Path(args.state_dir) / 'gitops.db').resolve()}"


def _key_path(args: argparse.Namespace) -> Path:
    return Path(args.secret_key_file) if args.secret_key_file else Path(args.state_dir) / "secret.key"


def cmd_backup(args: argparse.Namespace) -> int:
    from gitops.store.backup import FORMATS, BackupError, backup, size_text  # noqa: PLC0415 - SQLAlchemy lazily

    keys = _keys(args, Path(args.state_dir), create=False)
    try:
        written = backup(_store_url(args), Path(args.output), keys=keys)
    except BackupError as exc:
        print(f"gitops backup: {exc}", file=sys.stderr)
        return 1
    print(
        f"wrote {written.path} ({size_text(written.size)}, {FORMATS[written.kind]}); it holds Secret "
        f"values sealed with the key in {_key_path(args)}, which is not in the backup: keep that file with it"
    )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from gitops.store.backup import BackupError, restore  # noqa: PLC0415 - SQLAlchemy lazily

    keys = _keys(args, Path(args.state_dir), create=False)
    try:
        done = restore(Path(args.file), _store_url(args), keys=keys, force=args.force)
    except BackupError as exc:
        print(f"gitops restore: {exc}", file=sys.stderr)
        return 1
    print(
        f"restored {args.file} into {done.target} ({done.objects} objects, {done.pods} pods, "
        f"{done.nodes} nodes) and opened it with the key in {_key_path(args)}; now start the server on it"
    )
    if done.set_aside is not None:
        print(f"the unreadable database it replaced is kept as {done.set_aside}")
    return 0


def cmd_node_delete(args: argparse.Namespace) -> int:
    store = _open_store(args, Path(args.state_dir))
    try:
        pods = store.delete_node(args.name, time.time())
    except KeyError:
        print(f"gitops node delete: no node {args.name!r} is registered", file=sys.stderr)
        return 1
    print(
        f"deleted node {args.name}: its pod subnet is free, its {pods} pod(s) are placed anew, and the "
        "other nodes drop their route to it at their next sync. An agent still running there "
        "registers again; stop it first (gitops down on that host removes its containers)."
    )
    return 0


def cmd_pod_delete(args: argparse.Namespace) -> int:
    store = _open_store(args, Path(args.state_dir))
    namespace, _, name = args.name.rpartition("/")
    pod_id = f"{namespace or args.namespace}/{name}"
    try:
        store.delete_pod(pod_id, time.time())
    except KeyError:
        print(f"gitops pod delete: no pod {pod_id!r}", file=sys.stderr)
        return 1
    print(
        f"pod {pod_id} is terminating: it leaves its Services' endpoints and its containers stop "
        "within its grace period; its workload replaces it (a StatefulSet's under the same name)"
    )
    return 0


def _backup_parsers(sub: Any) -> None:
    where = "the store's SQLAlchemy URL (or GITOPS_DB; default: SQLite in the state folder)"
    key = "the key that seals the store's Secret values (default: STATE_DIR/secret.key)"
    backup = sub.add_parser(
        "backup",
        help="copy the store into a file, while the server runs",
        description="The backup holds Secret values sealed with the key file, which is not in it: "
        "keep the key file with the backup.",
    )
    backup.add_argument("-o", "--output", required=True, metavar="FILE", help="the backup to write (0600)")
    backup.add_argument("--db", help=where)
    backup.add_argument("--state-dir", default=str(DEFAULT_STATE))
    backup.add_argument("--secret-key-file", metavar="PATH", help=key)
    backup.set_defaults(func=cmd_backup)
    restore = sub.add_parser(
        "restore",
        help="put a backup into a database no server is using",
        description="Stop every server of the store first; start it again afterwards.",
    )
    restore.add_argument("file", metavar="FILE", help="a file written by 'gitops backup'")
    restore.add_argument("--db", help=where)
    restore.add_argument("--state-dir", default=str(DEFAULT_STATE))
    restore.add_argument("--secret-key-file", metavar="PATH", help=key + "; the one kept with the backup")
    restore.add_argument("--force", action="store_true", help="replace a store the database already holds")
    restore.set_defaults(func=cmd_restore)
    node = sub.add_parser("node", help="nodes the control plane knows")
    node_sub = node.add_subparsers(dest="node_command", required=True)
    delete = node_sub.add_parser(
        "delete",
        help="forget a node: free its pod subnet and place its pods elsewhere",
        description="Works on the store directly, while the server runs.",
    )
    delete.add_argument("name", metavar="NAME")
    delete.add_argument("--db", help=where)
    delete.add_argument("--state-dir", default=str(DEFAULT_STATE))
    delete.add_argument("--secret-key-file", metavar="PATH", help=key)
    delete.set_defaults(func=cmd_node_delete)
    pod = sub.add_parser("pod", help="pods the control plane runs")
    pod_sub = pod.add_subparsers(dest="pod_command", required=True)
    delete_pod = pod_sub.add_parser(
        "delete",
        help="stop a pod gracefully; its workload replaces it (kubectl delete pod)",
        description="Works on the store directly, while the server runs.",
    )
    delete_pod.add_argument("name", metavar="[NAMESPACE/]NAME")
    delete_pod.add_argument("-n", "--namespace", default="default")
    delete_pod.add_argument("--db", help=where)
    delete_pod.add_argument("--state-dir", default=str(DEFAULT_STATE))
    delete_pod.add_argument("--secret-key-file", metavar="PATH", help=key)
    delete_pod.set_defaults(func=cmd_pod_delete)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gitops", description="GitOps for plain Docker hosts")
    p.add_argument("--log-json", action="store_true", help="JSON log lines")
    p.add_argument("--log-level", default="info")
    sub = p.add_subparsers(dest="command", required=True)

    def plane_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--host", default="127.0.0.1", help="listen address of the API")
        sp.add_argument("--port", type=int, default=8080)
        sp.add_argument(
            "--db",
            help="SQLAlchemy URL (or GITOPS_DB, which keeps a password off the command line; "
            "default: SQLite in the state folder)",
        )
        sp.add_argument(
            "--secret-key-file",
            metavar="PATH",
            help="key that seals Secret values in the database (default: STATE_DIR/secret.key, created 0600)",
        )
        sp.add_argument("--service-cidr", default="10.243.0.0/16")
        sp.add_argument(
            "--cluster-cidr",
            default="10.244.0.0/16",
            help="the pod range: each node gets a subnet of it (default 10.244.0.0/16)",
        )
        sp.add_argument(
            "--node-cidr-mask",
            type=int,
            default=24,
            metavar="BITS",
            help="prefix length of each node's pod subnet (default 24: 254 pod addresses)",
        )
        sp.add_argument("--poll", type=float, default=30.0, help="seconds between source polls")
        sp.add_argument(
            "--join-token-file",
            metavar="PATH",
            help="file holding the token agents present to register "
            "(or GITOPS_JOIN_TOKEN; default: generated into STATE_DIR/join-token)",
        )
        sp.add_argument("--join-token", help=argparse.SUPPRESS)  # refused: it would show in ps
        sp.add_argument(
            "--webhook-secret-file",
            metavar="PATH",
            help="file holding the secret of the push webhooks /hooks/{github,gitlab,gitea} (off without it)",
        )
        sp.add_argument(
            "--public-read",
            action="store_true",
            help="serve the page, read API and metrics without the read token on any address "
            "(by default only loopback is open)",
        )
        sp.add_argument(
            "--read-token-file",
            metavar="PATH",
            help="file holding the read token (or GITOPS_READ_TOKEN; default: STATE_DIR/read-token, "
            "generated when listening beyond loopback)",
        )
        sp.add_argument(
            "--allow-probe-hosts",
            action="store_true",
            help="let httpGet/tcpSocket probes go to their 'host' (the agents probe from the host's "
            "network); by default probes go to the pod's own address",
        )
        sp.add_argument(
            "--allow-host-path",
            action="append",
            metavar="PREFIX",
            help="let hostPath volumes mount the nodes' files under this absolute folder (repeatable; "
            "by default none: a revision with a hostPath is refused)",
        )
        sp.add_argument(
            "--allow-privileged",
            action="store_true",
            help="let pods run privileged containers and use the host's PID and IPC namespaces "
            "(by default a revision asking for them is refused; the host's network never is allowed)",
        )
        sp.add_argument(
            "--node-grace",
            type=float,
            default=40.0,
            help="seconds without heartbeat before a node is NotReady",
        )
        sp.add_argument(
            "--not-ready-toleration",
            type=float,
            default=60.0,
            help="seconds pods stay on a NotReady node before they are replaced (per pod: tolerationSeconds)",
        )

    def agent_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--node", default=os.uname().nodename.split(".")[0].lower())
        sp.add_argument("--address", help="this node's address other nodes reach it on")
        sp.add_argument("--label", action="append", help="node label key=value (repeatable)")
        sp.add_argument("--taint", action="append", help="node taint key[=value]:Effect (repeatable)")
        sp.add_argument("--zone", default="", help="the node's topology.kubernetes.io/zone label")
        sp.add_argument("--region", default="", help="the node's topology.kubernetes.io/region label")
        sp.add_argument("--docker", help="Docker engine URL (default: DOCKER_HOST or the local socket)")
        sp.add_argument(
            "--iptables", default="iptables", help="iptables binary (iptables or iptables-legacy)"
        )
        sp.add_argument("--chain-prefix", default="GITOPS")
        sp.add_argument(
            "--proxy-mode",
            choices=("auto", "nftables", "iptables"),
            default="auto",
            help="program Services with nftables or iptables; auto (default): nftables where it works, "
            "unless --iptables names another binary",
        )
        sp.add_argument(
            "--cluster-domain",
            default="cluster.local",
            help="the domain of Service names in the cluster DNS (default cluster.local)",
        )
        sp.add_argument(
            "--secret-dir",
            metavar="PATH",
            help="folder on tmpfs for the files of Secret volumes (default: /dev/shm/gitops/NODE)",
        )
        sp.add_argument(
            "--usage-interval",
            type=float,
            default=15.0,
            metavar="SECONDS",
            help="how often containers' CPU and memory use is measured, for autoscalers (default 15)",
        )

    up = sub.add_parser("up", help="control plane and a local agent on a folder")
    up.add_argument("directory", nargs="?", default="manifests-example")
    up.add_argument(
        "--allow-empty",
        action="append",
        metavar="SOURCE",
        help="let the folder hold no objects (deleting all of them); refused otherwise",
    )
    up.add_argument("--state-dir", default=str(DEFAULT_STATE))
    plane_options(up)
    agent_options(up)
    up.set_defaults(func=cmd_up, branch="main", path="")

    serve = sub.add_parser("serve", help="the control plane")
    serve.add_argument("--dir", action="append", help="a local folder source (repeatable)")
    serve.add_argument("--git", action="append", help="a git URL source (repeatable)")
    serve.add_argument("--branch", default="main")
    serve.add_argument("--path", default="", help="folder inside the repository")
    serve.add_argument(
        "--name",
        default="",
        help="this control plane's name among several on one database (shown as the leader's; "
        "default: host:port)",
    )
    serve.add_argument(
        "--api-only",
        action="store_true",
        help="serve the page, the API and agents, and never lead (no source syncs, previews or "
        "controller): beside a control plane that leads on the same database, it takes agents' "
        "calls off the process whose controller passes share its interpreter (docs/ha.md)",
    )
    serve.add_argument(
        "--previews",
        default="refs/heads/*",
        metavar="REFSPEC",
        help="refs of git sources to preview, e.g. 'refs/pull/*/head' ('' for none; default: other branches)",
    )
    serve.add_argument(
        "--host-repo",
        action="append",
        metavar="NAME",
        help="host a repository at /git/NAME.git and deploy its main branch (repeatable)",
    )
    serve.add_argument(
        "--allow-empty",
        action="append",
        metavar="SOURCE",
        help="let revisions of SOURCE (a --dir, --git URL or --host-repo NAME) hold no objects, "
        "deleting all of its objects; refused otherwise (repeatable)",
    )
    serve.add_argument(
        "--push-token-file",
        metavar="PATH",
        help="file holding the password for /git/ (default: generated into STATE_DIR/push-token)",
    )
    serve.add_argument("--state-dir", default=str(DEFAULT_STATE))
    plane_options(serve)
    serve.set_defaults(func=cmd_serve)

    agent = sub.add_parser("agent", help="a node agent for the local Docker engine")
    agent.add_argument(
        "--server",
        default="http://127.0.0.1:8080",
        help="the control plane's URL, or several separated by commas (control planes on one "
        "database): the agent moves to the next when one cannot be reached",
    )
    agent.add_argument(
        "--join-token-file",
        metavar="PATH",
        help="file holding the cluster's join token (or GITOPS_JOIN_TOKEN)",
    )
    agent.add_argument("--join-token", help=argparse.SUPPRESS)  # refused: it would show in ps
    agent.add_argument("--state-dir", default=str(DEFAULT_STATE))
    agent_options(agent)
    agent.set_defaults(func=cmd_agent)

    validate = sub.add_parser("validate", help="validate manifest files or folders")
    validate.add_argument("paths", nargs="+")
    validate.add_argument("-q", "--quiet", action="store_true", help="errors only")
    validate.add_argument(
        "--allow-host-path",
        action="append",
        metavar="PREFIX",
        help="check hostPath volumes as a server given this --allow-host-path does (repeatable; "
        "by default every hostPath is an error)",
    )
    validate.add_argument(
        "--allow-privileged", action="store_true", help="check as a server given --allow-privileged does"
    )
    validate.set_defaults(func=cmd_validate)

    status = sub.add_parser("status", help="cluster status from a running server")
    status.add_argument("--server", default=os.environ.get("GITOPS_SERVER", "http://127.0.0.1:8080"))
    status.add_argument(
        "--read-token-file", metavar="PATH", help="the server's read token (or GITOPS_READ_TOKEN)"
    )
    status.add_argument(
        "--all",
        action="store_true",
        help=f"list every pod (by default the first {STATUS_PODS}, problems first)",
    )
    status.set_defaults(func=cmd_status)

    logs = sub.add_parser(
        "logs",
        help="a container's log, read through its node's agent (as kubectl logs)",
        description="Secret values are redacted and control characters escaped. Exit status 1 when "
        "the log cannot be read (no such pod or container, its node NotReady or not answering).",
    )
    logs.add_argument("pod", metavar="POD")
    logs.add_argument("-n", "--namespace", default="default")
    logs.add_argument("-c", "--container", default="", help="the container (needed in a pod of several)")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="go on printing what it writes, until it ends (or Ctrl-C)"
    )
    logs.add_argument(
        "-p", "--previous", action="store_true", help="the run before the current one (the one that crashed)"
    )
    logs.add_argument(
        "--tail", type=int, default=-1, metavar="N", help="the last N lines (default: all, at most 10000)"
    )
    logs.add_argument(
        "--since",
        type=_duration,
        default=0,
        metavar="DURATION",
        help="only what it wrote in the last DURATION (seconds, or 30s, 5m, 2h)",
    )
    logs.add_argument("--server", default=os.environ.get("GITOPS_SERVER", "http://127.0.0.1:8080"))
    logs.add_argument(
        "--read-token-file", metavar="PATH", help="the server's read token (or GITOPS_READ_TOKEN)"
    )
    logs.set_defaults(func=cmd_logs)

    plan = sub.add_parser(
        "plan",
        help="preview what a revision would change and where its pods would land",
        description="Exit status: 0 no changes, 2 changes, 1 error (invalid revision or bad input).",
    )
    plan.add_argument("--repo", default=".", help="a local git repository (default: .)")
    plan.add_argument("--base", help="the revision to compare with (default: none, everything is new)")
    plan.add_argument("--head", default="HEAD", help="the revision to preview (default: HEAD)")
    plan.add_argument("--path", default="", help="folder inside the repository")
    plan.add_argument(
        "--state",
        help="a server URL (its read-only API), a snapshot from 'gitops state export', or a nodes file",
    )
    plan.add_argument("--format", choices=("text", "markdown", "json"), default="text")
    plan.add_argument(
        "--read-token-file", metavar="PATH", help="the server's read token (or GITOPS_READ_TOKEN)"
    )
    plan.add_argument(
        "--allow-host-path",
        action="append",
        metavar="PREFIX",
        help="judge hostPath volumes as a server given this option does (repeatable)",
    )
    plan.add_argument(
        "--allow-privileged", action="store_true", help="judge as a server given --allow-privileged does"
    )
    plan.set_defaults(func=cmd_plan)

    state = sub.add_parser("state", help="cluster state snapshots")
    state_sub = state.add_subparsers(dest="state_command", required=True)
    export = state_sub.add_parser("export", help="write the cluster state (no Secret values) as JSON")
    export.add_argument("--server", default=os.environ.get("GITOPS_SERVER", "http://127.0.0.1:8080"))
    export.add_argument("--db", help="read a store directly (SQLAlchemy URL) instead of a server")
    export.add_argument("--state-dir", default=str(DEFAULT_STATE))
    export.add_argument(
        "--secret-key-file", metavar="PATH", help="the store's key (default: STATE_DIR/secret.key)"
    )
    export.add_argument("-o", "--output", help="file to write (default: standard output)")
    export.add_argument(
        "--read-token-file", metavar="PATH", help="the server's read token (or GITOPS_READ_TOKEN)"
    )
    export.set_defaults(func=cmd_state_export)

    down = sub.add_parser("down", help="remove this node's containers and iptables chains")
    down.add_argument("--service-cidr", default="10.243.0.0/16")
    agent_options(down)
    down.set_defaults(func=cmd_down)
    _backup_parsers(sub)
    return p


# `validate` writes no log line, so it leaves logging alone: importing structlog (and rich,
# which structlog brings) would take longer than validating a small folder. Commands that
# ask a server configure it, as `main` called in a process that runs a server expects.
SILENT_COMMANDS = (cmd_validate,)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Nothing this command prints (pod reasons, log tails, manifest text) drives the terminal.
    real = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = SafeStream(real[0]), SafeStream(real[1])
    try:
        if args.func not in SILENT_COMMANDS:
            configure_logging(args.log_json, args.log_level)
        code: int = args.func(args)
    finally:
        sys.stdout, sys.stderr = real
    return code


if __name__ == "__main__":
    sys.exit(main())
