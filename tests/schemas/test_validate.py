"""Documents are identified by kind and apiVersion and checked against their kind's schema."""

from __future__ import annotations

import gitops.model
from gitops.model import Manifest, ObjectKey, SourceLocation, content_hash
from gitops.schemas import validate_files

from .helpers import DEPLOYMENT, errors, source, validate, validate_one, warnings

KINDS = ", ".join(sorted(gitops.model.KINDS))


def test_a_valid_deployment_becomes_a_manifest_with_default_namespace_and_hash() -> None:
    result = validate_one(DEPLOYMENT)
    assert result.ok
    assert result.warnings == ()
    [manifest] = result.manifests
    assert manifest == Manifest(
        key=ObjectKey("Deployment", "default", "web"),
        api_version="apps/v1",
        body=manifest.body,
        location=SourceLocation("apps/web.yaml", 1, 1),
        hash=content_hash(manifest.body),
    )
    assert "namespace" not in manifest.body["metadata"]


def test_namespace_objects_have_an_empty_namespace_in_their_key() -> None:
    result = validate_one("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n")
    assert [m.key for m in result.manifests] == [ObjectKey("Namespace", "", "shop")]


def test_manifests_are_sorted_by_key_across_files() -> None:
    result = validate(
        ("b.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n"),
        ("a.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: z}\n---\n" + DEPLOYMENT.lstrip()),
    )
    assert [str(m.key) for m in result.manifests] == [
        "ConfigMap default/b",
        "ConfigMap default/z",
        "Deployment default/web",
    ]


def test_a_replicas_string_points_at_the_value_and_says_what_is_valid() -> None:
    result = validate_one(DEPLOYMENT.replace("replicas: 2", "replicas: three"))
    assert errors(result) == [
        'apps/web.yaml:6:13: Deployment default/web: spec.replicas: expected integer >= 0, got "three"'
    ]
    assert result.errors[0].field == "spec.replicas"
    assert result.errors[0].object == ObjectKey("Deployment", "default", "web")


def test_objects_with_errors_are_still_returned() -> None:
    result = validate_one(DEPLOYMENT.replace("replicas: 2", "replicas: -1"))
    assert not result.ok
    assert [str(m.key) for m in result.manifests] == ["Deployment default/web"]


def test_a_document_that_is_not_a_mapping_is_an_error() -> None:
    result = validate_one("- a\n- b\n")
    assert errors(result) == [
        "apps/web.yaml:1:1: expected a mapping with apiVersion, kind, metadata and spec, got a list"
    ]


def test_a_missing_kind_lists_the_valid_kinds() -> None:
    result = validate_one("apiVersion: v1\nmetadata: {name: x}\n")
    assert errors(result) == [f"apps/web.yaml:1:1: kind: required field is missing; expected one of {KINDS}"]


def test_an_unknown_kind_lists_the_valid_kinds() -> None:
    result = validate_one("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n")
    assert errors(result) == [f'apps/web.yaml:2:7: kind: unknown kind "Pod"; expected one of {KINDS}']


def test_a_wrong_api_version_names_the_right_one() -> None:
    result = validate_one(DEPLOYMENT.replace("apps/v1", "extensions/v1beta1"))
    assert errors(result) == [
        'apps/web.yaml:1:13: Deployment default/web: apiVersion: expected "apps/v1" for Deployment, '
        'got "extensions/v1beta1"'
    ]
    assert result.manifests == ()


def test_a_missing_api_version_points_at_the_document() -> None:
    result = validate_one("kind: Service\nmetadata: {name: x}\n")
    assert errors(result) == [
        'apps/web.yaml:1:1: Service default/x: apiVersion: required field is missing; expected "v1" '
        "for Service"
    ]


def test_a_missing_required_field_points_at_the_parent_mapping() -> None:
    result = validate_one(DEPLOYMENT.replace("          image: nginx:1.25\n", ""))
    assert errors(result) == [
        "apps/web.yaml:14:11: Deployment default/web: spec.template.spec.containers[0].image: "
        "required field is missing"
    ]


def test_a_missing_name_is_an_error_and_the_object_is_not_returned() -> None:
    result = validate_one("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  labels: {a: b}\n")
    assert errors(result) == ["apps/web.yaml:4:3: metadata.name: required field is missing"]
    assert result.manifests == ()


def test_unknown_fields_are_warnings_at_their_key() -> None:
    text = (
        DEPLOYMENT.replace("    spec:\n", "    spec:\n      shareProcessNamespace: true\n")
        + "status:\n  replicas: 2\n"
    )
    result = validate_one(text)
    assert result.ok
    assert warnings(result) == [
        "apps/web.yaml:13:7: Deployment default/web: spec.template.spec.shareProcessNamespace: "
        "field is not acted on by gitops and is ignored (warning)",
        "apps/web.yaml:17:1: Deployment default/web: status: field is not acted on by gitops and is "
        "ignored (warning)",
    ]


def test_the_host_network_is_refused_at_its_line() -> None:
    text = DEPLOYMENT.replace("    spec:\n", "    spec:\n      hostNetwork: true\n")
    assert errors(validate_one(text)) == [
        "apps/web.yaml:13:20: Deployment default/web: spec.template.spec.hostNetwork: "
        "host namespaces are refused: pods run in their own network, got true"
    ]


def test_an_enum_error_lists_the_valid_values() -> None:
    text = DEPLOYMENT.replace(
        "          image: nginx:1.25\n", "          image: nginx\n          imagePullPolicy: Sometimes\n"
    )
    result = validate_one(text)
    assert errors(result) == [
        "apps/web.yaml:16:28: Deployment default/web: spec.template.spec.containers[0].imagePullPolicy: "
        'expected one of "Always", "IfNotPresent", "Never", got "Sometimes"'
    ]


def test_a_container_port_out_of_range_is_an_error() -> None:
    text = DEPLOYMENT.replace(
        "image: nginx:1.25\n", "image: nginx:1.25\n          ports: [{containerPort: 70000}]\n"
    )
    result = validate_one(text)
    assert errors(result) == [
        "apps/web.yaml:16:35: Deployment default/web: "
        "spec.template.spec.containers[0].ports[0].containerPort: "
        "expected integer between 1 and 65535, got 70000"
    ]


def test_max_surge_accepts_integers_and_percentages_only() -> None:
    text = DEPLOYMENT.replace(
        "  replicas: 2\n",
        "  replicas: 2\n  strategy:\n    rollingUpdate: {maxSurge: lots, maxUnavailable: 25%}\n",
    )
    result = validate_one(text)
    assert errors(result) == [
        "apps/web.yaml:8:31: Deployment default/web: spec.strategy.rollingUpdate.maxSurge: "
        'expected an integer >= 0 or a percentage like "25%", got "lots"'
    ]


def test_an_env_value_must_be_a_string() -> None:
    text = DEPLOYMENT.replace(
        "image: nginx:1.25\n", "image: nginx:1.25\n          env: [{name: PORT, value: 8080}]\n"
    )
    result = validate_one(text)
    assert errors(result) == [
        "apps/web.yaml:16:37: Deployment default/web: spec.template.spec.containers[0].env[0].value: "
        "expected string, got 8080"
    ]


def test_a_label_value_that_is_a_number_is_an_error() -> None:
    result = validate_one("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  labels: {version: 2}\n")
    assert errors(result) == [
        "apps/web.yaml:5:21: ConfigMap default/c: metadata.labels.version: expected string, got 2"
    ]


def test_a_service_type_outside_kubernetes_four_is_an_error() -> None:
    text = (
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n"
        "spec:\n  type: NodePorts\n  ports: [{port: 80}]\n"
    )
    result = validate_one(text)
    assert errors(result) == [
        'apps/web.yaml:5:9: Service default/web: spec.type: expected one of "ClusterIP", "NodePort", '
        '"LoadBalancer", "ExternalName", got "NodePorts"'
    ]


def test_a_service_target_port_may_be_a_number_or_a_name() -> None:
    text = (
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports:\n"
        "    - {name: a, port: 80, targetPort: http}\n    - {name: b, port: 81, targetPort: 8081}\n"
        "    - {name: c, port: 82, targetPort: Not_A_Name}\n"
    )
    result = validate_one(text)
    assert errors(result) == [
        "apps/web.yaml:9:39: Service default/web: spec.ports[2].targetPort: expected a port number "
        "1-65535 or "
        "a port name (at most 15 lowercase letters, digits or '-'), got \"Not_A_Name\""
    ]


def test_configmap_keys_must_be_valid() -> None:
    result = validate_one("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata:\n  bad key: x\n")
    assert errors(result) == [
        'apps/web.yaml:5:3: ConfigMap default/c: data["bad key"]: invalid key: expected a key of at most 253 '
        "letters, digits, '-', '_' or '.', got \"bad key\""
    ]


def test_errors_and_warnings_are_sorted_by_file_line_and_column() -> None:
    result = validate_files(
        [
            source("b.yaml", "apiVersion: v1\nkind: Pod\n"),
            source("a.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, uid: u}\ndata: {k: 1}\n"),
        ]
    )
    assert [(d.location.file, d.location.line) for d in result.errors if d.location] == [
        ("a.yaml", 4),
        ("b.yaml", 2),
    ]
    assert [str(d) for d in result.warnings] == [
        "a.yaml:3:21: ConfigMap default/c: metadata.uid: field is not acted on by gitops and is "
        "ignored (warning)"
    ]


def test_probes_accept_their_handlers_and_timing_fields() -> None:
    text = DEPLOYMENT.replace(
        "          image: nginx:1.25\n",
        "          image: nginx:1.25\n"
        "          startupProbe: {exec: {command: [true]}, periodSeconds: 1, failureThreshold: 30}\n"
        "          readinessProbe: {httpGet: {path: /, port: 80, scheme: HTTP}, timeoutSeconds: 2}\n"
        "          livenessProbe: {tcpSocket: {port: http}, periodSeconds: 0}\n",
    )
    result = validate_one(text)
    assert errors(result) == [
        "apps/web.yaml:16:43: Deployment default/web: "
        "spec.template.spec.containers[0].startupProbe.exec.command[0]: "
        "expected string, got true",
        "apps/web.yaml:18:67: Deployment default/web: "
        "spec.template.spec.containers[0].livenessProbe.periodSeconds: "
        "expected integer >= 1, got 0",
    ]
    assert warnings(result) == []


def test_a_cluster_ip_must_be_an_address_or_none() -> None:
    text = (
        "apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec:\n"
        "  clusterIP: 10.0.0.300\n  ports: [{port: 5432}]\n"
    )
    result = validate_one(text)
    assert errors(result) == [
        'apps/web.yaml:5:14: Service default/db: spec.clusterIP: expected an IPv4 address, "None" or "", '
        'got "10.0.0.300"'
    ]
    assert validate_one(text.replace("10.0.0.300", "None")).ok


def test_an_unsupported_port_protocol_lists_the_supported_ones() -> None:
    text = (
        "apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec:\n  ports: [{port: 53, protocol: SCTP}]\n"
    )
    result = validate_one(text)
    assert errors(result) == [
        'apps/web.yaml:5:32: Service default/db: spec.ports[0].protocol: expected one of "TCP", '
        '"UDP", got "SCTP"'
    ]
