"""A preview shows objects of the kinds gitops only stores being added, changed and removed,
field by field, and no pod moves for them."""

from __future__ import annotations

import textwrap

from gitops.model import ClusterState, Node, NodeName, ObjectKey
from gitops.preview import preview
from gitops.preview.compute import Preview, RevisionInfo
from gitops.preview.diff import FieldChange
from gitops.preview.render import to_text
from gitops.schemas.loader import SourceFile
from gitops.schemas.validate import validate_files
from tests.schemas.test_kinds import LEDGER

NODES = ClusterState(desired=(), pods=(), nodes=(Node(NodeName("n1"), "192.0.2.1", 4000, 2**33),))


def files(docs: dict[str, str]) -> list[SourceFile]:
    return [SourceFile(name, textwrap.dedent(text).lstrip("\n").encode()) for name, text in docs.items()]


def run(base: dict[str, str], head: dict[str, str]) -> Preview:
    base_manifests = validate_files(files(base)).manifests
    return preview(
        files(head),
        base_manifests,
        NODES,
        head=RevisionInfo("b" * 40, "branch"),
        base_info=RevisionInfo("a" * 40),
        now=100.0,
        secret_key=b"one-time",
        settle_base=True,
    )


def test_a_stored_object_added_changed_and_removed_shows_in_the_preview() -> None:
    base = {k: v for k, v in LEDGER.items() if k != "ingress.yaml"}
    head = {k: v for k, v in LEDGER.items() if k != "cluster.yaml"}
    head["policies.yaml"] = LEDGER["policies.yaml"].replace("maxReplicas: 9", "maxReplicas: 12")
    result = run(base, head)
    assert result.errors == ()
    changes = {(str(o.key), o.change) for o in result.objects}
    assert changes == {
        ("Ingress ledger/ledger", "created"),
        ("HorizontalPodAutoscaler ledger/ledger-api", "changed"),
        ("StorageClass ledger-ssd", "deleted"),
        ("PriorityClass ledger-batch", "deleted"),
        ("CustomResourceDefinition journals.ledger.example", "deleted"),
    }
    by_key = {o.key: o for o in result.objects}
    scaled = by_key[ObjectKey("HorizontalPodAutoscaler", "ledger", "ledger-api")]
    assert scaled.fields == (FieldChange("spec.maxReplicas", "9", "12"),)
    added = by_key[ObjectKey("Ingress", "ledger", "ledger")]
    assert FieldChange("spec.ingressClassName", None, "edge") in added.fields
    removed = by_key[ObjectKey("StorageClass", "", "ledger-ssd")]
    assert FieldChange("provisioner", "csi.ledger.example", None) in removed.fields
    assert result.counts["objects_created"] == 1
    assert result.counts["objects_changed"] == 1
    assert result.counts["objects_deleted"] == 3
    assert result.actions == ()  # nothing runs from them
    assert result.exit_code == 2
    text = to_text(result)
    assert "Ingress ledger/ledger (ingress.yaml:1:1)" in text
    assert "~ spec.maxReplicas: 9 -> 12" in text
    assert "StorageClass ledger-ssd (cluster.yaml:1:1)" in text


def test_the_preview_carries_one_not_acted_on_warning_per_stored_object() -> None:
    result = run({}, {"access.yaml": LEDGER["access.yaml"], "namespace.yaml": LEDGER["namespace.yaml"]})
    assert result.errors == ()
    assert result.warnings == (
        "access.yaml:2:1: ServiceAccount ledger/ledger-api: stored; gitops does not act on ServiceAccount "
        "objects (warning)",
        "access.yaml:8:1: Role ledger/ledger-reader: stored; gitops does not act on Role objects (warning)",
        "access.yaml:17:1: RoleBinding ledger/ledger-reader: stored; gitops does not act on RoleBinding "
        "objects (warning)",
        "access.yaml:25:1: ClusterRole ledger:metrics-viewer: stored; gitops does not act on ClusterRole "
        "objects (warning)",
        "access.yaml:34:1: ClusterRoleBinding ledger-metrics: stored; gitops does not act on "
        "ClusterRoleBinding objects (warning)",
    )


def test_an_unchanged_branch_of_stored_objects_has_no_changes() -> None:
    result = run(LEDGER, LEDGER)
    assert result.objects == ()
    assert result.exit_code == 0
