"""`gitops plan` on real git repositories: what a branch changes, where pods land, and why."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import jsonschema
import pytest

from gitops.cli import main
from gitops.preview.render import MARKDOWN_LIMIT
from tests.preview.repos import Repo, deployment, nodes, service

SCHEMA = json.loads((Path(__file__).parents[2] / "gitops" / "preview" / "preview.schema.json").read_text())


def plan(capsys: pytest.CaptureFixture[str], repo: Repo, *args: str) -> tuple[int, str, str]:
    code = main(["plan", "--repo", str(repo.path), *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def nodes_file(tmp_path: Path) -> Path:
    path = tmp_path / "nodes.yaml"
    path.write_text(nodes(3))
    return path


def test_an_invalid_head_lists_its_errors_with_file_and_line_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], nodes_file: Path
) -> None:
    repo = Repo(tmp_path / "repo")
    base = repo.commit({"apps/web.yaml": deployment()}, "base")
    repo.commit({"apps/web.yaml": deployment().replace("replicas: 3", "replicas: three")}, "typo")
    code, out, _ = plan(capsys, repo, "--base", base, "--head", "HEAD", "--state", str(nodes_file))
    assert code == 1
    assert "apps/web.yaml:6:13: Deployment default/web: spec.replicas:" in out
    assert "The branch is invalid: 1 error" in out


def test_no_change_exits_0_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], nodes_file: Path
) -> None:
    repo = Repo(tmp_path / "repo")
    base = repo.commit({"web.yaml": deployment()}, "base")
    repo.commit({"README.md": "docs only\n"}, "docs")
    code, out, _ = plan(capsys, repo, "--base", base, "--state", str(nodes_file))
    assert code == 0
    assert "No changes" in out


def test_a_change_exits_2_with_field_diffs_and_the_node_of_every_new_pod(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], nodes_file: Path
) -> None:
    repo = Repo(tmp_path / "repo")
    base = repo.commit({"web.yaml": deployment(replicas=2)}, "base")
    repo.commit({"web.yaml": deployment(replicas=4)}, "scale")
    code, out, _ = plan(capsys, repo, "--base", base, "--state", str(nodes_file), "--format", "json")
    assert code == 2
    doc = json.loads(out)
    jsonschema.validate(doc, SCHEMA)
    (obj,) = doc["objects"]
    assert (obj["kind"], obj["name"], obj["change"]) == ("Deployment", "web", "changed")
    assert obj["fields"] == [{"path": "spec.replicas", "before": "2", "after": "4"}]
    created = [p for p in doc["pods"] if p["action"] == "create"]
    assert len(created) == 2
    assert {p["reason"] for p in created} == {"scale up: 2 -> 4 replicas"}
    assert all(p["node"] in {"node-1", "node-2", "node-3"} for p in created)
    assert doc["counts"]["pods_created"] == 2 and doc["counts"]["pods_stopped"] == 0


def test_a_template_change_shows_every_replacement_and_the_rollout_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], nodes_file: Path
) -> None:
    strategy = "strategy:\n  rollingUpdate: {maxSurge: 1, maxUnavailable: 0}\n"
    repo = Repo(tmp_path / "repo")
    base = repo.commit({"web.yaml": deployment(replicas=4, strategy=strategy)}, "base")
    repo.commit({"web.yaml": deployment(replicas=4, strategy=strategy, image="web:2")}, "web 2")
    code, out, _ = plan(capsys, repo, "--base", base, "--state", str(nodes_file))
    assert code == 2
    assert "Deployment default/web: 4 replicas, rolling update, surge 1, unavailable 0: 4 steps" in out
    assert "~ spec.template.spec.containers[0].image: web:1 -> web:2" in out
    assert "Pods: 0 to create, 4 to replace, 0 to stop, 0 unschedulable" in out
    assert out.count("image changed: web:1 -> web:2 (rolling update, surge 1, unavailable 0: new pod)") == 4
    assert out.count("(rolling update, surge 1, unavailable 0: old pod replaced)") == 4


def test_removed_objects_stop_their_pods(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], nodes_file: Path
) -> None:
    repo = Repo(tmp_path / "repo")
    base = repo.commit(
        {"web.yaml": deployment(replicas=2), "api.yaml": deployment("api", replicas=1)}, "base"
    )
    repo.commit({"api.yaml": None}, "drop api")
    code, out, _ = plan(capsys, repo, "--base", base, "--state", str(nodes_file), "--format", "json")
    doc = json.loads(out)
    assert code == 2
    assert [(o["name"], o["change"]) for o in doc["objects"]] == [("api", "deleted")]
    (stop,) = doc["pods"]
    assert stop["action"] == "stop" and stop["owner"] == "Deployment default/api"
    assert stop["reason"] == "Deployment default/api was removed from the source"
    assert stop["node"] in {"node-1", "node-2", "node-3"}


def test_unschedulable_pods_are_reported_with_reasons_per_node_group(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "nodes.yaml"
    state.write_text(
        nodes(2, memory="1Gi")
        + "  - name: gpu\n    cpu: '8'\n    memory: 64Gi\n"
        + "    taints: [{key: dedicated, value: gpu, effect: NoSchedule}]\n"
    )
    repo = Repo(tmp_path / "repo")
    base = repo.commit({"web.yaml": deployment(replicas=1)}, "base")
    repo.commit({"big.yaml": deployment("big", replicas=2, memory="2Gi")}, "big")
    code, out, _ = plan(capsys, repo, "--base", base, "--state", str(state), "--format", "json")
    doc = json.loads(out)
    assert code == 2
    assert doc["unschedulable"] == [
        {
            "owner": "Deployment default/big",
            "pods": 2,
            "reason": "0/3 nodes: 2 insufficient memory, 1 untolerated taint {dedicated=gpu:NoSchedule}",
        }
    ]
    assert [p["node"] for p in doc["pods"]] == [None, None]


def test_warnings_name_a_service_that_selects_nothing_and_an_unused_configmap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], nodes_file: Path
) -> None:
    unused = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: leftover\ndata:\n  a: b\n"
    repo = Repo(tmp_path / "repo")
    base = repo.commit({"web.yaml": deployment()}, "base")
    repo.commit({"svc.yaml": service("api", selector="api"), "cm.yaml": unused}, "svc")
    code, out, _ = plan(capsys, repo, "--base", base, "--state", str(nodes_file))
    assert code == 2
    assert "svc.yaml:1:1: Service default/api: spec.selector: selects no pods (app=api)" in out
    assert "cm.yaml:1:1: ConfigMap default/leftover: no workload uses this ConfigMap" in out


def test_an_external_name_service_selecting_nothing_is_no_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], nodes_file: Path
) -> None:
    external = (
        "apiVersion: v1\nkind: Service\nmetadata: {name: db}\n"
        "spec: {type: ExternalName, externalName: db.example.com}\n"
    )
    repo = Repo(tmp_path / "repo")
    base = repo.commit({"web.yaml": deployment()}, "base")
    repo.commit({"db.yaml": external}, "db")
    _, out, _ = plan(capsys, repo, "--base", base, "--state", str(nodes_file))
    assert "selects no pods" not in out


def test_a_secret_change_shows_which_key_changed_but_never_a_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], nodes_file: Path
) -> None:
    def secret(value: str) -> str:
        encoded = base64.b64encode(value.encode()).decode()
        return f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ndata:\n  password: {encoded}\n"

    env = "env:\n  - name: PASSWORD\n    valueFrom: {secretKeyRef: {name: db, key: password}}\n"
    repo = Repo(tmp_path / "repo")
    base = repo.commit({"s.yaml": secret("hunter2-old"), "web.yaml": deployment(replicas=1, env=env)}, "base")
    repo.commit({"s.yaml": secret("correct-horse-new")}, "rotate")
    for fmt in ("text", "markdown", "json"):
        code, out, _ = plan(capsys, repo, "--base", base, "--state", str(nodes_file), "--format", fmt)
        assert code == 2
        for value in ("hunter2-old", "correct-horse-new"):
            assert value not in out
            assert base64.b64encode(value.encode()).decode() not in out
        assert "data.password" in out
        assert "env PASSWORD changed (uses Secret default/db)" in out


def test_markdown_opens_with_a_summary_table_and_folds_each_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], nodes_file: Path
) -> None:
    repo = Repo(tmp_path / "repo")
    base = repo.commit({"web.yaml": deployment()}, "base")
    hostile = deployment("api").replace("image: web:1", "image: 'web:1 </details><script>x()</script> | ```'")
    repo.commit({"api.yaml": hostile}, "api")
    code, out, _ = plan(capsys, repo, "--base", base, "--state", str(nodes_file), "--format", "markdown")
    assert code == 2
    lines = out.splitlines()
    assert lines[0].startswith("### gitops preview of ")
    assert "| objects | 1 | 0 | 0 |" in out and "| pods | 3 | 0 | 0 | 0 |" in out
    assert out.index("| objects |") < out.index("<details>")
    # Outside code fences (where GitHub shows HTML as text) the manifest's HTML is escaped.
    prose = re.sub(r"(`{3,})diff\n.*?\n\1", "", out, flags=re.DOTALL)
    assert prose.count("<details>") == prose.count("</details>") == 2  # the object, the pod actions
    assert "<script>" not in prose
    assert "web:1 </details><script>x()</script> | ```" in out  # verbatim inside the fence


def test_markdown_stays_under_the_comment_limit_and_says_what_it_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], nodes_file: Path
) -> None:
    many = "".join(
        f"---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-{i}\ndata:\n"
        + "".join(f"  key{j}: value-{i}-{j}\n" for j in range(20))
        for i in range(400)
    )
    repo = Repo(tmp_path / "repo")
    base = repo.commit({"web.yaml": deployment()}, "base")
    repo.commit({"configs.yaml": many}, "many configs")
    code, out, _ = plan(capsys, repo, "--base", base, "--state", str(nodes_file), "--format", "markdown")
    assert code == 2
    assert len(out) < MARKDOWN_LIMIT
    assert "**Truncated:**" in out and "more sections not shown" in out
    assert "| objects | 400 | 0 | 0 |" in out


def test_bad_state_input_is_an_error_naming_file_line_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = Repo(tmp_path / "repo")
    repo.commit({"web.yaml": deployment()}, "base")
    state = tmp_path / "nodes.yaml"
    state.write_text("nodes:\n  - name: a\n    cpu: lots\n    memory: 1Gi\n")
    code, _, err = plan(capsys, repo, "--state", str(state))
    assert code == 1
    assert f"{state}:3:10: nodes[0].cpu:" in err
    code, _, err = plan(capsys, repo, "--head", "no-such-branch")
    assert code == 1 and "no revision 'no-such-branch'" in err


def test_an_invalid_base_is_noted_and_a_missing_path_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], nodes_file: Path
) -> None:
    repo = Repo(tmp_path / "repo")
    base = repo.commit({"apps/web.yaml": deployment().replace("replicas: 3", "replicas: x")}, "broken base")
    repo.commit({"apps/web.yaml": deployment()}, "fixed")
    code, out, _ = plan(capsys, repo, "--base", base, "--state", str(nodes_file), "--path", "apps")
    assert code == 2
    assert (
        f"the base revision {base[:12]} itself has 1 error; objects it could not read count as created" in out
    )
    code, out, _ = plan(capsys, repo, "--state", str(nodes_file), "--path", "nowhere")
    assert code == 1
    assert "path 'nowhere' does not exist in" in out
