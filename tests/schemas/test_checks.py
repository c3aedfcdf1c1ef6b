"""Rules beyond the schema: names, labels, selectors, containers, quantities, ports, base64."""

from __future__ import annotations

import pytest

from gitops.schemas.checks import label_selector_matches

from .helpers import DEPLOYMENT, errors, validate_one

CONTAINER = "          image: nginx:1.25\n"


def with_container_fields(text: str) -> str:
    return DEPLOYMENT.replace(CONTAINER, CONTAINER + text)


def test_a_deployment_name_must_be_a_dns_subdomain() -> None:
    result = validate_one(DEPLOYMENT.replace("name: web\nspec", "name: Web_App\nspec"))
    assert errors(result)[0] == (
        "apps/web.yaml:4:9: Deployment default/Web_App: metadata.name: expected a DNS-1123 subdomain "
        "(at most 253 lowercase letters, digits, '-' or '.', starting and ending with a letter or digit), "
        'got "Web_App"'
    )


def test_dots_are_allowed_in_configmap_names_but_not_in_service_names() -> None:
    assert validate_one("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web.config}\n").ok
    result = validate_one(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web.svc}\nspec:\n  ports: [{port: 80}]\n"
    )
    assert errors(result) == [
        "apps/web.yaml:3:18: Service default/web.svc: metadata.name: expected a DNS-1035 label (at most 63 "
        "lowercase letters, digits or '-', starting with a letter and ending with a letter or digit), "
        'got "web.svc"'
    ]


def test_a_namespace_name_must_start_with_a_letter() -> None:
    result = validate_one("apiVersion: v1\nkind: Namespace\nmetadata: {name: 1shop}\n")
    assert [d.field for d in result.errors] == ["metadata.name"]
    assert str(result.errors[0]).startswith(
        "apps/web.yaml:3:18: Namespace 1shop: metadata.name: expected a DNS-1035"
    )


def test_names_longer_than_the_limit_are_errors() -> None:
    name = "a" * 64
    result = validate_one(f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n")
    assert [d.field for d in result.errors] == ["metadata.name"]


def test_label_keys_and_values_follow_kubernetes_rules() -> None:
    text = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  labels:\n"
        "    example.com/tier: web\n    Bad_Prefix/x: y\n    ok: -starts-with-dash\n"
    )
    result = validate_one(text)
    assert errors(result) == [
        'apps/web.yaml:7:5: ConfigMap default/c: metadata.labels["Bad_Prefix/x"]: invalid key: '
        "expected a label "
        "key (an optional DNS-1123 subdomain prefix and '/', then at most 63 letters, digits, '-', "
        "'_' or '.', "
        'starting and ending with a letter or digit), got "Bad_Prefix/x"',
        "apps/web.yaml:8:9: ConfigMap default/c: metadata.labels.ok: expected a label value (empty, "
        "or at most "
        "63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit), "
        'got "-starts-with-dash"',
    ]


def test_a_selector_that_does_not_match_the_template_is_an_error_at_the_selector() -> None:
    result = validate_one(DEPLOYMENT.replace("matchLabels: {app: web}", "matchLabels: {app: api}"))
    assert errors(result) == [
        "apps/web.yaml:8:5: Deployment default/web: spec.selector: selector does not match the pod "
        "template's "
        "labels (spec.template.metadata.labels: app=web)"
    ]


def test_an_empty_selector_is_an_error() -> None:
    result = validate_one(DEPLOYMENT.replace("    matchLabels: {app: web}\n", "    {}\n"))
    assert errors(result) == [
        "apps/web.yaml:8:5: Deployment default/web: spec.selector: "
        "expected a non-empty selector (matchLabels or matchExpressions)"
    ]


def test_match_expressions_need_values_for_in_and_none_for_exists() -> None:
    text = DEPLOYMENT.replace(
        "    matchLabels: {app: web}\n",
        "    matchLabels: {app: web}\n    matchExpressions:\n"
        "      - {key: app, operator: In}\n      - {key: app, operator: Exists, values: [web]}\n",
    )
    result = validate_one(text)
    assert errors(result) == [
        "apps/web.yaml:10:9: Deployment default/web: spec.selector.matchExpressions[0]: "
        'expected a non-empty "values" list for operator In',
        "apps/web.yaml:11:46: Deployment default/web: spec.selector.matchExpressions[1].values: "
        "expected no values for operator Exists, got a list",
    ]


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ({"matchLabels": {"app": "web"}}, True),
        ({"matchLabels": {"app": "api"}}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "front"]}]}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]}, False),
        ({"matchExpressions": [{"key": "gone", "operator": "NotIn", "values": ["x"]}]}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, False),
        ({"matchExpressions": [{"key": "gone", "operator": "DoesNotExist"}]}, True),
    ],
)
def test_label_selectors_match_like_kubernetes(selector: dict[str, object], matches: bool) -> None:
    assert label_selector_matches(selector, {"app": "web", "tier": "front"}) is matches


def test_a_second_container_is_accepted_but_not_under_the_same_name() -> None:
    assert validate_one(DEPLOYMENT + "        - name: proxy\n          image: envoy:1.30\n").ok
    result = validate_one(DEPLOYMENT + "        - name: web\n          image: envoy:1.30\n")
    assert errors(result) == [
        "apps/web.yaml:16:17: Deployment default/web: spec.template.spec.containers[1].name: "
        'duplicate container name "web" (also spec.template.spec.containers[0])'
    ]


def test_deployments_only_allow_restart_policy_always() -> None:
    text = DEPLOYMENT.replace("    spec:\n", "    spec:\n      restartPolicy: Never\n")
    result = validate_one(text)
    assert errors(result) == [
        "apps/web.yaml:13:22: Deployment default/web: spec.template.spec.restartPolicy: "
        'expected "Always" (a Deployment always restarts its pods), got "Never"'
    ]


def test_an_unparseable_cpu_quantity_points_at_the_value() -> None:
    result = validate_one(with_container_fields("          resources:\n            requests: {cpu: 100x}\n"))
    assert errors(result) == [
        "apps/web.yaml:17:29: Deployment default/web: "
        "spec.template.spec.containers[0].resources.requests.cpu: "
        'invalid CPU quantity "100x": expected cores like 2, 0.5 or 1.5, or millicores like 100m'
    ]


def test_a_request_greater_than_its_limit_is_an_error() -> None:
    text = with_container_fields(
        "          resources:\n            requests: {cpu: 2, memory: 1Gi}\n            limits: "
        "{cpu: 500m, memory: 2Gi}\n"
    )
    result = validate_one(text)
    assert errors(result) == [
        "apps/web.yaml:17:29: Deployment default/web: "
        "spec.template.spec.containers[0].resources.requests.cpu: "
        'request 2 (2000m) is greater than the limit "500m" (500m)'
    ]


def test_a_deployment_without_resource_requests_is_fine() -> None:
    result = validate_one(DEPLOYMENT)
    assert result.ok
    assert result.warnings == ()


def test_a_volume_mount_must_name_a_declared_volume() -> None:
    text = with_container_fields("          volumeMounts: [{name: config, mountPath: /etc/app}]\n")
    result = validate_one(text)
    assert errors(result) == [
        "apps/web.yaml:16:33: Deployment default/web: spec.template.spec.containers[0].volumeMounts[0].name: "
        'volume "config" is not declared in spec.template.spec.volumes (declared: none)'
    ]


def test_a_mount_path_must_be_absolute() -> None:
    text = with_container_fields("          volumeMounts: [{name: c, mountPath: etc}]\n")
    text += "      volumes: [{name: c, configMap: {name: c, optional: true}}]\n"
    result = validate_one(text)
    assert errors(result) == [
        "apps/web.yaml:16:47: Deployment default/web: "
        "spec.template.spec.containers[0].volumeMounts[0].mountPath: "
        'expected an absolute path, got "etc"'
    ]


def test_env_may_not_have_both_a_value_and_value_from() -> None:
    text = with_container_fields(
        "          env:\n            - name: A\n              value: x\n"
        "              valueFrom: {configMapKeyRef: {name: c, key: a, optional: true}}\n"
    )
    result = validate_one(text)
    assert errors(result) == [
        "apps/web.yaml:19:26: Deployment default/web: spec.template.spec.containers[0].env[0].valueFrom: "
        'expected either "value" or "valueFrom", not both'
    ]


def test_a_recreate_strategy_may_not_have_rolling_update_settings() -> None:
    text = DEPLOYMENT.replace(
        "  replicas: 2\n",
        "  replicas: 2\n  strategy:\n    type: Recreate\n    rollingUpdate: {maxSurge: 1}\n",
    )
    result = validate_one(text)
    assert errors(result) == [
        "apps/web.yaml:9:20: Deployment default/web: spec.strategy.rollingUpdate: "
        'expected no rollingUpdate when type is "Recreate"'
    ]


def test_a_rollout_that_can_neither_surge_nor_drop_a_pod_is_an_error() -> None:
    text = DEPLOYMENT.replace(
        "  replicas: 2\n",
        "  replicas: 2\n  strategy:\n    rollingUpdate: {maxSurge: 0, maxUnavailable: 0%}\n",
    )
    result = validate_one(text)
    assert errors(result) == [
        "apps/web.yaml:8:50: Deployment default/web: spec.strategy.rollingUpdate.maxUnavailable: "
        "expected maxUnavailable > 0 when maxSurge is 0 (the rollout could never progress)"
    ]


SERVICE = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports:\n"


def test_service_ports_need_names_when_there_are_several() -> None:
    result = validate_one(SERVICE + "    - {name: http, port: 80}\n    - {port: 443}\n")
    assert errors(result) == [
        "apps/web.yaml:8:7: Service default/web: spec.ports[1]: "
        "expected a port name: names are required when a Service has more than one port"
    ]


def test_service_port_names_must_be_unique() -> None:
    result = validate_one(SERVICE + "    - {name: http, port: 80}\n    - {name: http, port: 8080}\n")
    assert errors(result) == [
        'apps/web.yaml:8:14: Service default/web: spec.ports[1].name: duplicate port name "http" '
        "(also spec.ports[0])"
    ]


def test_a_single_service_port_needs_no_name() -> None:
    assert validate_one(SERVICE + "    - {port: 80, targetPort: 8080}\n").ok


def test_invalid_base64_in_secret_data_is_an_error_that_does_not_repeat_the_value() -> None:
    text = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata:\n  good: aGVsbG8=\n  bad: hello!\n"
    result = validate_one(text)
    assert errors(result) == [
        "apps/web.yaml:6:8: Secret default/s: data.bad: invalid base64: expected standard base64 "
        "(A-Z, a-z, 0-9, "
        "'+', '/', padded with '=' to a multiple of 4 characters), got a string of 6 characters "
        "(not shown: Secret data)"
    ]


def test_no_error_about_secret_data_repeats_a_value() -> None:
    text = (
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {pin: 4711}\nstringData: {pw: [hunter2]}\n"
    )
    shown = [str(e) for e in validate_one(text).errors]
    assert len(shown) == 2 and not any("4711" in e or "hunter2" in e for e in shown), shown


def test_secret_string_data_and_type_are_accepted() -> None:
    text = (
        "apiVersion: v1\nkind: Secret\nmetadata: {name: tls}\ntype: kubernetes.io/tls\n"
        "data:\n  tls.crt: |\n    aGVsbG8g\n    d29ybGQ=\nstringData:\n  password: hunter2\n"
    )
    result = validate_one(text)
    assert result.ok
    assert result.warnings == ()


def test_configmap_binary_data_must_be_base64_and_keys_unique_across_data() -> None:
    text = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: x}\n"
        "binaryData:\n  a: AAAA\n  b: '*'\n"
    )
    result = validate_one(text)
    assert errors(result) == [
        'apps/web.yaml:6:3: ConfigMap default/c: binaryData.a: key "a" is also in data; keys must be unique',
        "apps/web.yaml:7:6: ConfigMap default/c: binaryData.b: invalid base64: expected standard base64 "
        "(A-Z, a-z, 0-9, '+', '/', padded with '=' to a multiple of 4 characters), got \"*\"",
    ]


def test_duplicate_volume_names_are_an_error() -> None:
    text = DEPLOYMENT + (
        "      volumes:\n"
        "        - {name: v, configMap: {name: a, optional: true}}\n"
        "        - {name: v, secret: {secretName: b, optional: true}}\n"
    )
    result = validate_one(text)
    assert errors(result) == [
        "apps/web.yaml:18:18: Deployment default/web: spec.template.spec.volumes[1].name: duplicate "
        'volume name "v" '
        "(also spec.template.spec.volumes[0])"
    ]


def test_a_host_port_is_honoured_not_ignored_and_taken_once_per_protocol() -> None:
    ports = (
        "          ports:\n"
        "            - {containerPort: 8080, hostPort: 80}\n"
        "            - {containerPort: 8081, hostPort: 80, protocol: UDP}\n"
    )
    result = validate_one(with_container_fields(ports))
    assert result.ok and not result.warnings
    duplicate = ports + "            - {containerPort: 9090, hostPort: 80}\n"
    assert [(d.field, d.message) for d in validate_one(with_container_fields(duplicate)).errors] == [
        (
            "spec.template.spec.containers[0].ports[2].hostPort",
            "duplicate hostPort 80/TCP (also spec.template.spec.containers[0].ports[0])",
        )
    ]
    out_of_range = "          ports:\n            - {containerPort: 8080, hostPort: 70000}\n"
    assert [d.field for d in validate_one(with_container_fields(out_of_range)).errors] == [
        "spec.template.spec.containers[0].ports[0].hostPort"
    ]
