"""Real Kubernetes manifests, as `kubectl get -o yaml` prints them, load unchanged."""

from __future__ import annotations

from pathlib import Path

from gitops.schemas import SourceFile, validate_files

from .helpers import warnings

REALISTIC = Path(__file__).with_name("realistic.yaml").read_bytes()
IGNORED = "field is not acted on by gitops and is ignored (warning)"


def test_a_full_deployment_service_and_configmap_load_with_warnings_and_no_errors() -> None:
    result = validate_files([SourceFile("apps/web.yaml", REALISTIC)])
    assert result.errors == ()
    assert [str(m.key) for m in result.manifests] == [
        "ConfigMap default/web-config",
        "Deployment default/web",
        "Service default/web",
    ]
    assert warnings(result) == [
        f"apps/web.yaml:7:3: ConfigMap default/web-config: metadata.uid: {IGNORED}",
        f"apps/web.yaml:8:3: ConfigMap default/web-config: metadata.resourceVersion: {IGNORED}",
        f"apps/web.yaml:9:3: ConfigMap default/web-config: metadata.creationTimestamp: {IGNORED}",
        f"apps/web.yaml:26:3: Deployment default/web: metadata.generation: {IGNORED}",
        f"apps/web.yaml:107:1: Deployment default/web: status: {IGNORED}",
        f"apps/web.yaml:128:1: Service default/web: status: {IGNORED}",
    ]


def test_the_body_is_kept_as_written_including_ignored_fields() -> None:
    result = validate_files([SourceFile("apps/web.yaml", REALISTIC)])
    deployment = next(m for m in result.manifests if m.key.kind == "Deployment")
    assert deployment.body["status"] == {"availableReplicas": 3, "readyReplicas": 3}
    assert deployment.spec["template"]["spec"]["containers"][0]["resources"]["limits"] == {
        "cpu": "1",
        "memory": "256Mi",
    }
    assert deployment.labels == {"app.kubernetes.io/name": "web", "app.kubernetes.io/part-of": "shop"}


def test_validation_is_deterministic_whatever_the_file_order() -> None:
    files = [
        SourceFile("b.yaml", REALISTIC),
        SourceFile("a.yaml", b"apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n"),
    ]
    assert validate_files(files) == validate_files(list(reversed(files)))
