"""The `gitops` command: validate reports file:line:col errors and sets the exit status;
status shows the applied and the rejected revision."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gitops.cli import main
from gitops.server import ControlPlane
from gitops.store import Store
from gitops.sync.sources import FolderSource
from tests.conftest import wait_for
from tests.servers import free_port

GOOD = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: cfg
data:
  A: "1"
"""


def test_validate_passes_a_valid_folder_with_exit_status_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "cfg.yaml").write_text(GOOD)
    assert main(["validate", str(tmp_path)]) == 0
    assert "1 file(s), 1 object(s): 0 error(s), 0 warning(s)" in capsys.readouterr().err


def test_validate_prints_each_error_with_its_position_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "cfg.yaml").write_text(GOOD.replace("name: cfg", "name: Not_Valid"))
    (tmp_path / "broken.yaml").write_text("kind: [unclosed\n")
    assert main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("cfg.yaml:4:9: ConfigMap default/Not_Valid: metadata.name: ") for line in out)
    assert any(line.startswith("broken.yaml:2:1: ") for line in out)


def test_validate_of_a_missing_path_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path / "nope")]) == 1
    assert "no such file or folder" in capsys.readouterr().err


def test_status_shows_the_rejected_revision_and_what_still_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "cfg.yaml").write_text(GOOD)
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    plane = ControlPlane(store, [FolderSource(folder)], port=free_port(), poll_interval=0.2)
    plane.start()
    try:
        wait_for(lambda: store.last_revision(plane.sources[0].name), timeout=10, what="the first sync")
        (folder / "cfg.yaml").write_text(GOOD.replace('A: "1"', "A: [1]"))
        wait_for(
            lambda: (r := store.last_revision(plane.sources[0].name)) is not None and r.status == "rejected",
            timeout=10,
            what="the rejection",
        )
        assert main(["status", "--server", plane.url]) == 0
        out = capsys.readouterr().out
        assert "REJECTED: " in out
        assert "  cfg.yaml:6:6: ConfigMap default/cfg: data.A: " in out
        assert "still running" in out
    finally:
        plane.stop()


def test_a_password_in_db_is_flagged_and_gitops_db_keeps_it_off_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from gitops.cli import _db_url

    args = argparse.Namespace(db="postgresql+psycopg2://gitops:hunter2@db.example/gitops")
    assert _db_url(args, tmp_path) == args.db
    assert "visible to every user of this host" in capsys.readouterr().err
    monkeypatch.setenv("GITOPS_DB", "postgresql+psycopg2://gitops:hunter2@db.example/gitops")
    assert (
        _db_url(argparse.Namespace(db=None), tmp_path)
        == "postgresql+psycopg2://gitops:hunter2@db.example/gitops"
    )
    assert capsys.readouterr().err == ""


def test_gitops_status_prints_nothing_that_drives_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A container's words could retitle the terminal or print a fake, coloured line."""
    from gitops.model import Node, NodeName, PodStatus, Revision
    from tests.planner.factories import deployment

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.register_node(Node(NodeName("n1"), "192.0.2.10", 4000, 8 * 2**30), "t", now=time.time())
    store.apply_revision(Revision("git:x", "a" * 40), [deployment(replicas=1)], [], now=time.time())
    from gitops.controller import reconcile_once

    reconcile_once(store, now=time.time())
    (pod,) = store.pods()
    hostile = "\x1b]0;pwned\x07\x1b[32mall pods ready\x1b[0m\nFAKE: all good \u202etxt.exe"
    store.heartbeat(
        "n1", [PodStatus(pod.id, "Failed", False, hostile, exit_code=1, last_log=hostile)], now=time.time()
    )
    plane = ControlPlane(store, [], port=free_port())
    plane.start()
    try:
        capsys.readouterr()
        assert main(["status", "--server", plane.url]) == 0
        out = capsys.readouterr().out
    finally:
        plane.stop()
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "\\x1b]0;pwned\\x07" in out and "\\u202e" in out
    assert not any(line.startswith("FAKE") for line in out.splitlines())


def test_gitops_status_summarises_many_pods_and_lists_them_all_on_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gitops.controller import reconcile_once
    from gitops.model import Revision
    from tests.planner.factories import deployment

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.apply_revision(Revision("git:x", "a" * 40), [deployment(replicas=450)], [], now=time.time())
    reconcile_once(store, now=time.time())
    plane = ControlPlane(store, [], port=free_port())
    plane.start()
    try:
        capsys.readouterr()
        assert main(["status", "--server", plane.url]) == 0
        short = capsys.readouterr().out
        assert main(["status", "--server", plane.url, "--all"]) == 0
        full = capsys.readouterr().out
    finally:
        plane.stop()
    assert "(the first 20 of 450, problems first; --all for every pod)" in short
    assert sum(line.startswith("default/web-") for line in short.splitlines()) == 20
    assert sum(line.startswith("default/web-") for line in full.splitlines()) == 450
    assert "default/web" in short  # the workload line counts them all


def test_gitops_serve_stops_cleanly_on_sigterm_leaving_one_database_file(tmp_path: Path) -> None:
    """And it raised its soft limit of open files to the hard one: started at 256 (service
    managers often give 1,024), it could not hold 5,000 agents' connections."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert hard > 256  # else this test proves nothing
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "cfg.yaml").write_text(GOOD)
    state = tmp_path / "state"
    port = free_port()
    server = subprocess.Popen(
        [
            "sh",
            "-c",
            'ulimit -Sn 256 && exec "$@"',  # the soft limit only
            "sh",
            sys.executable,
            "-m",
            "gitops.cli",
            "serve",
            "--dir",
            str(tmp_path / "m"),
            "--state-dir",
            str(state),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: _applied(port), 30, what="the first revision applied")
        limits = Path(f"/proc/{server.pid}/limits").read_text()
        files = next(line.split()[3:5] for line in limits.splitlines() if line.startswith("Max open files"))
        assert files == [str(hard), str(hard)], limits
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=30)
    finally:
        server.kill()
    assert server.returncode == 0, out
    assert "server.stopped" in out
    assert f"limit={hard}" in out and "was=256" in out  # server.open_files, logged
    wal = state / "gitops.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0  # everything is in gitops.db


def _applied(port: int) -> bool:
    try:
        revisions = httpx.get(f"http://127.0.0.1:{port}/api/v1/revisions", timeout=2).json()
    except httpx.HTTPError:
        return False
    return any(r["status"] == "applied" for r in revisions)


def test_the_cli_imports_no_database_git_or_preview_code_until_a_command_needs_it() -> None:
    """`gitops status` at 8,000 pods must answer within a second; those imports alone took 0.7 s."""
    heavy = ("sqlalchemy", "git", "gitops.sync.previews", "gitops.schemas.validate", "gitops.preview.render")
    code = f"import sys, gitops.cli; print([m for m in {heavy!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_node_labels_and_topology_flags_are_checked_before_the_agent_registers() -> None:
    from gitops.cli import _parse_labels, _topology

    assert _parse_labels(["zone=a", "disk=ssd"]) == (("disk", "ssd"), ("zone", "a"))
    with pytest.raises(SystemExit, match=r"--label 'a b=c': the key is not a label key"):
        _parse_labels(["a b=c"])
    with pytest.raises(SystemExit, match=r"--label 'disk=s s': the value is not a label value"):
        _parse_labels(["disk=s s"])
    with pytest.raises(SystemExit, match=r"--zone 'eu 1': expected a label value"):
        _topology("--zone", "eu 1")


def test_gitops_status_reads_no_job_tables_from_a_server_of_before_those_routes() -> None:
    """A server without `/api/v1/jobs` (404) has none to show; other errors still fail."""
    from gitops.cli import _listed

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/jobs":
            return httpx.Response(404, json={"detail": "Not Found"})
        if request.url.path == "/api/v1/cronjobs":
            return httpx.Response(200, json=[{"name": "report"}])
        return httpx.Response(401, json={"detail": "missing read token"})

    with httpx.Client(base_url="http://server", transport=httpx.MockTransport(answer)) as http:
        assert _listed(http, "/api/v1/jobs") == []
        assert _listed(http, "/api/v1/cronjobs") == [{"name": "report"}]
        with pytest.raises(httpx.HTTPStatusError):
            _listed(http, "/api/v1/autoscalers")


def _loaded_after(argv: list[str], modules: tuple[str, ...]) -> tuple[list[str], str]:
    """Which of `modules` a fresh interpreter holds after `gitops ARGV`, and what it printed."""
    code = (
        "import contextlib, json, sys\n"
        "from gitops.cli import main\n"
        "with contextlib.suppress(SystemExit):\n"
        f"    main({argv!r})\n"
        f"print(json.dumps([m for m in {modules!r} if m in sys.modules]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    *printed, loaded = done.stdout.splitlines()
    return json.loads(loaded), "\n".join(printed) + done.stderr


SERVER_SIDE = ("sqlalchemy", "alembic", "fastapi", "starlette", "uvicorn", "numpy", "docker", "git")


def test_gitops_help_imports_no_server_http_logging_or_manifest_code() -> None:
    modules = (*SERVER_SIDE, "httpx", "structlog", "rich", "jsonschema", "yaml", "gitops.model")
    loaded, printed = _loaded_after(["--help"], modules)
    assert "{up,serve,agent,validate," in printed
    assert loaded == []


def test_gitops_validate_imports_the_schemas_but_no_git_store_http_or_logging(tmp_path: Path) -> None:
    """Nor croniter without a CronJob, nor pathspec without a `.gitopsignore`."""
    (tmp_path / "cfg.yaml").write_text(GOOD)
    modules = (*SERVER_SIDE, "httpx", "structlog", "croniter", "pathspec", "jsonschema")
    loaded, printed = _loaded_after(["validate", str(tmp_path)], modules)
    assert "1 file(s), 1 object(s): 0 error(s), 0 warning(s)" in printed
    assert loaded == ["jsonschema"]


def test_gitops_status_imports_httpx_but_no_store_or_schema_code() -> None:
    modules = (*SERVER_SIDE, "jsonschema", "yaml", "httpx")
    loaded, printed = _loaded_after(["status", "--server", f"http://127.0.0.1:{free_port()}"], modules)
    assert "cannot reach the gitops server" in printed
    assert loaded == ["httpx"]


def test_gitops_serve_api_only_needs_no_source_and_refuses_to_host_a_repository(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An --api-only control plane never syncs: a repository pushed to it would never be
    deployed. A plain one still needs a source."""
    state = ["--state-dir", str(tmp_path / "state"), "--port", str(free_port())]
    assert main(["serve", "--api-only", "--host-repo", "apps", *state]) == 2
    assert "--api-only never syncs, so it cannot host a repository" in capsys.readouterr().err
    assert main(["serve", *state]) == 2
    assert "give at least one --dir, --git or --host-repo source" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()  # refused before anything was made
