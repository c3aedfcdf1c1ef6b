"""ReplicaSets (apps/v1) and ReplicationControllers (v1) validate as Kubernetes validates
them: a ReplicaSet's LabelSelector and a ReplicationController's plain-labels selector (by
default the template's labels) select the pod template's labels, their pods always restart,
the server's policy holds in their pod templates and their pods' references are checked
across objects; an autoscaler may scale either."""

from __future__ import annotations

import pytest

from gitops.model import ObjectKey
from gitops.schemas.validate import DEFAULT_POLICY, Policy, ValidationResult, validate_files

from .helpers import errors, source, validate, warnings

# Argo CD's example app `sync-waves` (argoproj/argocd-example-apps, sync-waves/manifests.yaml),
# as written: hook Jobs with generateName, two ReplicaSets and their Services.
SYNC_WAVES = """
---
apiVersion: batch/v1
kind: Job
metadata:
  generateName: upgrade-sql-schema-
  annotations:
    argocd.argoproj.io/hook: PostSync
spec:
  template:
    spec:
      containers:
        - name: upgrade-sql-schema
          image: alpine:latest
          command: ["sleep", "10"]
      restartPolicy: Never
---
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: backend
spec:
  replicas: 2
  selector:
    matchLabels:
      tier: backend
  template:
    metadata:
      labels:
        tier: backend
    spec:
      containers:
        - name: main
          image: nginx:latest
---
apiVersion: v1
kind: Service
metadata:
  name: backend-svc
spec:
  selector:
    tier: backend
  ports:
    - protocol: TCP
      port: 8080
      targetPort: 8080
---
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: frontend
spec:
  replicas: 2
  selector:
    matchLabels:
      tier: frontend
  template:
    metadata:
      labels:
        tier: frontend
    spec:
      containers:
        - name: main
          image: node:latest
---
apiVersion: v1
kind: Service
metadata:
  name: frontend
  annotations:
    argocd.argoproj.io/sync-wave: "1"
spec:
  selector:
    tier: frontend
  ports:
    - protocol: TCP
      port: 80
      targetPort: 80
"""
SW = "sync-waves/manifests.yaml"

# Its frontend ReplicaSet alone (line numbers below are this text's).
FRONTEND = """
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: frontend
spec:
  replicas: 2
  selector:
    matchLabels:
      tier: frontend
  template:
    metadata:
      labels:
        tier: frontend
    spec:
      containers:
        - name: main
          image: node:latest
"""
RS = "apps/frontend.yaml"
RS_KEY = f"{RS}:{{}}: ReplicaSet default/frontend"

# Kubernetes' guestbook-go redis master (kubernetes/examples, guestbook-go/redis-master-controller.json).
REDIS_JSON = """
{
   "kind":"ReplicationController",
   "apiVersion":"v1",
   "metadata":{
      "name":"redis-master",
      "labels":{
         "app":"redis",
         "role":"master"
      }
   },
   "spec":{
      "replicas":1,
      "selector":{
         "app":"redis",
         "role":"master"
      },
      "template":{
         "metadata":{
            "labels":{
               "app":"redis",
               "role":"master"
            }
         },
         "spec":{
            "containers":[
               {
                  "name":"redis-master",
                  "image":"k8s.gcr.io/redis:e2e",
                  "ports":[
                     {
                        "name":"redis-server",
                        "containerPort":6379
                     }
                  ]
               }
            ]
         }
      }
   }
}
"""
# The same in YAML (guestbook-go/redis-master-controller.yaml).
REDIS = """
kind: ReplicationController
apiVersion: v1
metadata:
  name: redis-master
  labels:
    app: redis
    role: master
spec:
  replicas: 1
  selector:
    app: redis
    role: master
  template:
    metadata:
      labels:
        app: redis
        role: master
    spec:
      containers:
      - name: redis-master
        image: k8s.gcr.io/redis:e2e
        ports:
        - name: redis-server
          containerPort: 6379
"""
RC = "guestbook-go/redis-master-controller.yaml"
RC_KEY = f"{RC}:{{}}: ReplicationController default/redis-master"
POD = "spec.template.spec"


def check(path: str, text: str, policy: Policy = DEFAULT_POLICY) -> ValidationResult:
    return validate_files([source(path, text)], policy=policy)


# --- the real shapes -------------------------------------------------------------------------


def test_argo_cds_sync_waves_app_with_its_replica_sets_is_valid() -> None:
    result = check(SW, SYNC_WAVES)
    assert errors(result) == []
    assert warnings(result) == []
    assert [str(m.key) for m in result.manifests if m.key.kind != "Job"] == [
        "ReplicaSet default/backend",
        "ReplicaSet default/frontend",
        "Service default/backend-svc",
        "Service default/frontend",
    ]


@pytest.mark.parametrize(
    ("path", "text"),
    [("guestbook-go/redis-master-controller.json", REDIS_JSON), (RC, REDIS)],
)
def test_guestbook_gos_redis_replication_controller_is_valid(path: str, text: str) -> None:
    result = check(path, text)
    assert errors(result) == []
    assert warnings(result) == []
    [manifest] = result.manifests
    assert manifest.key == ObjectKey("ReplicationController", "default", "redis-master")
    assert manifest.api_version == "v1"


@pytest.mark.parametrize(
    ("kind", "old", "current"),
    [
        ("ReplicaSet", "extensions/v1beta1", "apps/v1"),
        ("ReplicaSet", "v1", "apps/v1"),
        ("ReplicationController", "apps/v1", "v1"),
    ],
)
def test_a_wrong_api_version_names_the_one_to_use(kind: str, old: str, current: str) -> None:
    [error] = errors(check(RS, f"apiVersion: {old}\nkind: {kind}\nmetadata: {{name: web}}\n"))
    assert error.endswith(f'apiVersion: expected "{current}" for {kind}, got "{old}"')


# --- ReplicaSet ------------------------------------------------------------------------------


def test_a_replica_sets_selector_must_select_its_template() -> None:
    text = FRONTEND.replace("      tier: frontend\n  template", "      tier: backend\n  template")
    assert errors(check(RS, text)) == [
        f"{RS_KEY.format('8:5')}: spec.selector: selector does not match the pod template's labels "
        "(spec.template.metadata.labels: tier=frontend)"
    ]


def test_a_replica_sets_selector_may_use_expressions() -> None:
    text = FRONTEND.replace(
        "    matchLabels:\n      tier: frontend\n",
        "    matchExpressions:\n      - {key: tier, operator: In, values: [frontend, web]}\n",
    )
    assert check(RS, text).ok


def test_a_replica_set_needs_a_selector() -> None:
    text = FRONTEND.replace("  selector:\n    matchLabels:\n      tier: frontend\n", "")
    assert errors(check(RS, text)) == [f"{RS_KEY.format('6:3')}: spec.selector: required field is missing"]


@pytest.mark.parametrize("policy", ["Never", "OnFailure"])
def test_a_replica_sets_pods_always_restart(policy: str) -> None:
    text = FRONTEND + f"      restartPolicy: {policy}\n"
    assert errors(check(RS, text)) == [
        f'{RS_KEY.format("18:22")}: {POD}.restartPolicy: expected "Always" (a ReplicaSet always '
        f'restarts its pods), got "{policy}"'
    ]
    assert check(RS, FRONTEND + "      restartPolicy: Always\n").ok


def test_a_replica_sets_fields_that_kubernetes_does_not_have_are_ignored_with_a_warning() -> None:
    text = FRONTEND.replace("  replicas: 2\n", "  replicas: 2\n  minReadySeconds: 5\n  strategy: {}\n")
    result = check(RS, text)
    assert result.ok
    assert warnings(result) == [
        f"{RS_KEY.format('8:3')}: spec.strategy: field is not acted on by gitops and is ignored (warning)"
    ]


def test_a_replica_sets_replicas_are_a_count() -> None:
    assert errors(check(RS, FRONTEND.replace("replicas: 2", "replicas: -1"))) == [
        f"{RS_KEY.format('6:13')}: spec.replicas: expected integer >= 0, got -1"
    ]


# --- ReplicationController -------------------------------------------------------------------


def test_a_replication_controllers_selector_must_select_its_template() -> None:
    text = REDIS.replace("    role: master\n  template", "    role: replica\n  template")
    assert errors(check(RC, text)) == [
        f"{RC_KEY.format('11:5')}: spec.selector: selector does not match the pod template's labels "
        "(spec.template.metadata.labels: app=redis, role=master)"
    ]


def test_a_replication_controllers_selector_defaults_to_its_templates_labels() -> None:
    text = REDIS.replace("  selector:\n    app: redis\n    role: master\n", "")
    result = check(RC, text)
    assert errors(result) == []
    assert "selector" not in result.manifests[0].spec  # the body stays as written


def test_a_replication_controller_without_a_selector_needs_template_labels() -> None:
    text = REDIS.replace("  selector:\n    app: redis\n    role: master\n", "").replace(
        "      labels:\n        app: redis\n        role: master\n", "      annotations: {owner: team}\n"
    )
    assert errors(check(RC, text)) == [
        f"{RC_KEY.format('9:3')}: spec.selector: required field is missing when "
        "spec.template.metadata.labels is empty (the selector defaults to the template's labels)"
    ]
    empty = REDIS.replace("  selector:\n    app: redis\n    role: master\n", "  selector: {}\n").replace(
        "      labels:\n        app: redis\n        role: master\n", "      annotations: {owner: team}\n"
    )
    assert errors(check(RC, empty)) == [
        f"{RC_KEY.format('10:13')}: spec.selector: expected a non-empty selector when "
        "spec.template.metadata.labels is empty (the selector defaults to the template's labels)"
    ]


def test_a_replication_controllers_selector_is_a_map_of_labels() -> None:
    text = REDIS.replace("    app: redis\n    role: master\n  template", "    'app/': redis\n  template")
    assert errors(check(RC, text)) == [
        f'{RC_KEY.format("11:5")}: spec.selector["app/"]: invalid key: expected a label key (an optional '
        "DNS-1123 subdomain prefix and '/', then at most 63 letters, digits, '-', '_' or '.', starting "
        'and ending with a letter or digit), got "app/"'
    ]
    listed = REDIS.replace(
        "    app: redis\n    role: master\n  template", "    matchLabels: {app: redis}\n  template"
    )
    assert errors(check(RC, listed)) == [
        f"{RC_KEY.format('11:18')}: spec.selector.matchLabels: expected string, got a mapping"
    ]


@pytest.mark.parametrize("policy", ["Never", "OnFailure"])
def test_a_replication_controllers_pods_always_restart(policy: str) -> None:
    text = REDIS + f"      restartPolicy: {policy}\n"
    assert errors(check(RC, text)) == [
        f'{RC_KEY.format("25:22")}: {POD}.restartPolicy: expected "Always" (a ReplicationController '
        f'always restarts its pods), got "{policy}"'
    ]


# --- the server's policy and references across objects ----------------------------------------


HOST_LOGS = "      volumes:\n      - name: logs\n        hostPath: {path: /var/log}\n"


def test_a_replica_sets_host_path_and_privileged_containers_are_held_to_the_servers_policy() -> None:
    text = (
        FRONTEND.replace(
            "          image: node:latest\n",
            "          image: node:latest\n          securityContext: {privileged: true}\n",
        )
        + HOST_LOGS
    )
    assert errors(check(RS, text)) == [
        f"{RS_KEY.format('18:41')}: {POD}.containers[0].securityContext.privileged: privileged containers "
        "are refused unless the server allows them (gitops serve --allow-privileged), got true",
        f"{RS_KEY.format('21:26')}: {POD}.volumes[0].hostPath.path: hostPath /var/log is not under a "
        "prefix this server allows (gitops serve --allow-host-path; allowed: none)",
    ]
    assert check(RS, text, Policy(host_paths=("/var/log",), privileged=True)).ok


def test_a_replication_controllers_host_path_is_held_to_the_servers_policy() -> None:
    text = REDIS + HOST_LOGS
    assert errors(check(RC, text)) == [
        f"{RC_KEY.format('27:26')}: {POD}.volumes[0].hostPath.path: hostPath /var/log is not under a "
        "prefix this server allows (gitops serve --allow-host-path; allowed: none)"
    ]
    assert check(RC, text, Policy(host_paths=("/var",))).ok


def test_the_references_of_their_pods_are_checked_across_objects() -> None:
    env = (
        "        envFrom:\n        - secretRef: {name: redis-auth}\n"
        "      imagePullSecrets: [{name: registry}]\n"
    )
    result = check(RC, REDIS + env)
    assert errors(result) == [
        f'{RC_KEY.format("26:29")}: {POD}.containers[0].envFrom[0].secretRef.name: Secret "redis-auth" '
        'does not exist in namespace "default" (declare it, or set "optional: true")'
    ]
    assert warnings(result) == [
        f'{RC_KEY.format("27:33")}: {POD}.imagePullSecrets[0].name: Secret "registry" is not in the '
        "source: images are pulled without its credentials (warning)"
    ]
    text = FRONTEND.replace(
        "          image: node:latest\n",
        "          image: node:latest\n          env:\n            - name: API\n"
        "              valueFrom: {configMapKeyRef: {name: frontend, key: api}}\n",
    )
    config = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: frontend}\ndata: {url: http://api}\n"
    assert errors(validate((RS, text), ("apps/config.yaml", config))) == [
        f'{RS_KEY.format("20:66")}: {POD}.containers[0].env[0].valueFrom.configMapKeyRef.key: key "api" '
        "is not in ConfigMap default/frontend (it has: url)"
    ]


# --- autoscalers -----------------------------------------------------------------------------


def autoscaler(kind: str, name: str, api_version: str) -> str:
    return f"""
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {{name: {name}}}
spec:
  scaleTargetRef: {{apiVersion: {api_version}, kind: {kind}, name: {name}}}
  minReplicas: 1
  maxReplicas: 5
"""


HPA = "apps/hpa.yaml"


def test_an_autoscaler_may_scale_a_replica_set_or_a_replication_controller() -> None:
    result = validate(
        (RS, FRONTEND),
        (RC, REDIS),
        (
            HPA,
            autoscaler("ReplicaSet", "frontend", "apps/v1")
            + "---"
            + autoscaler("ReplicationController", "redis-master", "v1"),
        ),
    )
    assert errors(result) == []
    assert warnings(result) == []


def test_an_autoscaler_names_a_replication_controller_with_its_api_version() -> None:
    result = validate((RC, REDIS), (HPA, autoscaler("ReplicationController", "redis-master", "apps/v1")))
    assert errors(result) == [
        f"{HPA}:5:32: HorizontalPodAutoscaler default/redis-master: spec.scaleTargetRef.apiVersion: "
        'expected "v1" for ReplicationController, got "apps/v1"'
    ]


def test_an_autoscaler_of_a_replica_set_not_in_the_source_scales_nothing() -> None:
    result = validate((HPA, autoscaler("ReplicaSet", "frontend", "apps/v1")))
    assert warnings(result) == [
        f"{HPA}:5:65: HorizontalPodAutoscaler default/frontend: spec.scaleTargetRef.name: ReplicaSet "
        '"frontend" is not in the source in namespace "default": this autoscaler scales nothing (warning)'
    ]
