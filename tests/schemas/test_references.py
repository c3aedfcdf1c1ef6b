"""Objects are checked against each other: duplicates, namespaces, ConfigMap and Secret references."""

from __future__ import annotations

from .helpers import DEPLOYMENT, errors, validate, validate_one

CONTAINER = "          image: nginx:1.25\n"
CONFIGMAP = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app}\ndata: {LEVEL: info}\n"
SECRET = "apiVersion: v1\nkind: Secret\nmetadata: {name: creds}\nstringData: {token: t}\n"


def deployment_with(text: str, pod: str = "") -> str:
    return DEPLOYMENT.replace(CONTAINER, CONTAINER + text) + pod


def test_a_duplicate_object_is_an_error_at_the_second_naming_the_first() -> None:
    result = validate(("a.yaml", DEPLOYMENT), ("b/web.yaml", "# copy\n" + DEPLOYMENT.lstrip()))
    assert errors(result) == [
        "b/web.yaml:2:1: Deployment default/web: duplicate object: Deployment default/web is already defined "
        "at a.yaml:1:1"
    ]
    assert len(result.manifests) == 1
    assert result.manifests[0].location.file == "a.yaml"


def test_the_same_name_in_different_kinds_or_namespaces_is_not_a_duplicate() -> None:
    namespace = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"
    other = DEPLOYMENT.replace("  name: web\n", "  name: web\n  namespace: shop\n", 1)
    result = validate(
        ("a.yaml", DEPLOYMENT),
        ("b.yaml", other),
        ("c.yaml", CONFIGMAP.replace("app", "web")),
        ("n.yaml", namespace),
    )
    assert result.ok
    assert len(result.manifests) == 4


def test_an_undeclared_namespace_is_an_error_at_metadata_namespace() -> None:
    text = DEPLOYMENT.replace("  name: web\n", "  name: web\n  namespace: shop\n", 1)
    result = validate_one(text)
    assert errors(result) == [
        'apps/web.yaml:5:14: Deployment shop/web: metadata.namespace: namespace "shop" is not declared; '
        'add a Namespace manifest named "shop" or use "default"'
    ]


def test_the_namespaces_every_cluster_has_need_no_declaration() -> None:
    for namespace in ("kube-system", "kube-public", "kube-node-lease", "default"):
        text = DEPLOYMENT.replace("  name: web\n", f"  name: web\n  namespace: {namespace}\n", 1)
        assert validate_one(text).ok, namespace
    text = DEPLOYMENT.replace("  name: web\n", "  name: web\n  namespace: kube-other\n", 1)
    assert "is not declared" in errors(validate_one(text))[0]


def test_a_namespace_declared_in_another_file_is_enough() -> None:
    text = DEPLOYMENT.replace("  name: web\n", "  name: web\n  namespace: shop\n", 1)
    result = validate(
        ("apps/web.yaml", text), ("ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n")
    )
    assert result.ok


def test_a_missing_configmap_in_env_value_from_is_an_error_at_its_name() -> None:
    text = deployment_with(
        "          env:\n            - name: LEVEL\n"
        "              valueFrom: {configMapKeyRef: {name: app, key: LEVEL}}\n"
    )
    result = validate_one(text)
    assert errors(result) == [
        "apps/web.yaml:18:51: Deployment default/web: "
        "spec.template.spec.containers[0].env[0].valueFrom.configMapKeyRef.name: "
        'ConfigMap "app" does not exist in namespace "default" (declare it, or set "optional: true")'
    ]


def test_a_missing_key_in_an_existing_configmap_is_an_error_at_the_key() -> None:
    text = deployment_with(
        "          env:\n            - name: LEVEL\n"
        "              valueFrom: {configMapKeyRef: {name: app, key: LOG_LEVEL}}\n"
    )
    result = validate(("apps/web.yaml", text), ("apps/config.yaml", CONFIGMAP))
    assert errors(result) == [
        "apps/web.yaml:18:61: Deployment default/web: "
        "spec.template.spec.containers[0].env[0].valueFrom.configMapKeyRef.key: "
        'key "LOG_LEVEL" is not in ConfigMap default/app (it has: LEVEL)'
    ]


def test_optional_references_may_be_missing() -> None:
    text = deployment_with(
        "          env:\n            - name: T\n"
        "              valueFrom: {secretKeyRef: {name: creds, key: token, optional: true}}\n"
        "          envFrom: [{secretRef: {name: other, optional: true}}]\n",
        "      volumes: [{name: v, configMap: {name: none, optional: true}}]\n",
    )
    assert validate_one(text).ok


def test_secret_keys_come_from_data_and_string_data() -> None:
    text = deployment_with(
        "          env:\n            - name: T\n              valueFrom: "
        "{secretKeyRef: {name: creds, key: token}}\n"
    )
    assert validate(("apps/web.yaml", text), ("apps/creds.yaml", SECRET)).ok


def test_a_missing_secret_in_env_from_is_an_error() -> None:
    result = validate_one(deployment_with("          envFrom: [{secretRef: {name: creds}}]\n"))
    assert errors(result) == [
        "apps/web.yaml:16:40: Deployment default/web: "
        "spec.template.spec.containers[0].envFrom[0].secretRef.name: "
        'Secret "creds" does not exist in namespace "default" (declare it, or set "optional: true")'
    ]


def test_references_resolve_only_in_the_same_namespace() -> None:
    namespace = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"
    configmap = CONFIGMAP.replace("{name: app}", "{name: app, namespace: shop}")
    result = validate(
        ("apps/web.yaml", deployment_with("          envFrom: [{configMapRef: {name: app}}]\n")),
        ("shop/app.yaml", configmap),
        ("ns.yaml", namespace),
    )
    assert [d.field for d in result.errors] == [
        "spec.template.spec.containers[0].envFrom[0].configMapRef.name"
    ]


def test_volume_references_and_their_items_are_checked() -> None:
    pod = (
        "      volumes:\n"
        "        - name: config\n          configMap:\n            name: app\n"
        "            items: [{key: LEVEL, path: level}, {key: MISSING, path: m}]\n"
        "        - name: creds\n          secret: {secretName: nope}\n"
    )
    text = deployment_with("          volumeMounts: [{name: config, mountPath: /etc/app}]\n", pod)
    result = validate(("apps/web.yaml", text), ("apps/config.yaml", CONFIGMAP))
    assert errors(result) == [
        "apps/web.yaml:21:54: Deployment default/web: spec.template.spec.volumes[0].configMap.items[1].key: "
        'key "MISSING" is not in ConfigMap default/app (it has: LEVEL)',
        "apps/web.yaml:23:32: Deployment default/web: spec.template.spec.volumes[1].secret.secretName: "
        'Secret "nope" does not exist in namespace "default" (declare it, or set "optional: true")',
    ]
