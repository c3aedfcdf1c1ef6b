"""Kinds gitops stores without acting on them load like the others: each is checked against
its own schema, gets one warning saying gitops does not act on it (a PersistentVolumeClaim,
a HorizontalPodAutoscaler, a PriorityClass and a PodDisruptionBudget, which gitops acts on,
get none), and an old apiVersion or an unknown kind is an error saying what would do."""

from __future__ import annotations

import pytest

from gitops.model import CLUSTER_SCOPED, KINDS, ObjectKey
from gitops.schemas.kinds import INERT_KINDS, STORED_KINDS, not_acted_on

from .helpers import errors, validate, validate_one, warnings

# A small bookkeeping app ("ledger") that ships one object of every kind gitops only stores
# (`STORED_KINDS`, the HorizontalPodAutoscaler included), and no Deployment.
LEDGER: dict[str, str] = {
    "namespace.yaml": """
        apiVersion: v1
        kind: Namespace
        metadata: {name: ledger}
    """,
    "access.yaml": """
        apiVersion: v1
        kind: ServiceAccount
        metadata: {name: ledger-api, namespace: ledger}
        automountServiceAccountToken: false
        imagePullSecrets: [{name: registry-login}]
        ---
        apiVersion: rbac.authorization.k8s.io/v1
        kind: Role
        metadata: {name: ledger-reader, namespace: ledger}
        rules:
          - apiGroups: [""]
            resources: [configmaps]
            resourceNames: [ledger-settings]
            verbs: [get, watch]
        ---
        apiVersion: rbac.authorization.k8s.io/v1
        kind: RoleBinding
        metadata: {name: ledger-reader, namespace: ledger}
        subjects:
          - {kind: ServiceAccount, name: ledger-api, namespace: ledger}
          - {kind: Group, apiGroup: rbac.authorization.k8s.io, name: accountants}
        roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: ledger-reader}
        ---
        apiVersion: rbac.authorization.k8s.io/v1
        kind: ClusterRole
        metadata:
          name: "ledger:metrics-viewer"
          labels: {app: ledger}
        rules:
          - nonResourceURLs: [/metrics, /healthz]
            verbs: [get]
        ---
        apiVersion: rbac.authorization.k8s.io/v1
        kind: ClusterRoleBinding
        metadata: {name: ledger-metrics}
        subjects: [{kind: ServiceAccount, name: ledger-api, namespace: ledger}]
        roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "ledger:metrics-viewer"}
    """,
    "policies.yaml": """
        apiVersion: policy/v1
        kind: PodDisruptionBudget
        metadata: {name: ledger-api, namespace: ledger}
        spec:
          maxUnavailable: 25%
          selector: {matchLabels: {app: ledger}}
          unhealthyPodEvictionPolicy: AlwaysAllow
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: ledger-api-in, namespace: ledger}
        spec:
          podSelector: {matchLabels: {app: ledger}}
          policyTypes: [Ingress, Egress]
          ingress:
            - from:
                - namespaceSelector: {matchLabels: {team: finance}}
                - ipBlock: {cidr: 10.40.0.0/16, except: [10.40.9.0/24]}
              ports:
                - {protocol: TCP, port: 8443}
                - {port: metrics}
                - {protocol: SCTP, port: 9000, endPort: 9010}
          egress:
            - to: [{podSelector: {matchExpressions: [{key: role, operator: In, values: [db]}]}}]
        ---
        apiVersion: v1
        kind: LimitRange
        metadata: {name: ledger-defaults, namespace: ledger}
        spec:
          limits:
            - type: Container
              default: {cpu: 250m, memory: 256Mi}
              defaultRequest: {cpu: 50m, memory: 64Mi}
              maxLimitRequestRatio: {cpu: 4}
            - type: PersistentVolumeClaim
              max: {storage: 20Gi}
        ---
        apiVersion: v1
        kind: ResourceQuota
        metadata: {name: ledger-budget, namespace: ledger}
        spec:
          hard: {requests.cpu: "3", limits.memory: 6Gi, pods: 40, count/deployments.apps: 8}
          scopeSelector:
            matchExpressions: [{scopeName: PriorityClass, operator: In, values: [ledger-batch]}]
        ---
        apiVersion: autoscaling/v2
        kind: HorizontalPodAutoscaler
        metadata: {name: ledger-api, namespace: ledger}
        spec:
          scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: ledger-api}
          minReplicas: 2
          maxReplicas: 9
          metrics:
            - type: Resource
              resource: {name: cpu, target: {type: Utilization, averageUtilization: 70}}
            - type: Pods
              pods:
                metric: {name: ledger_queue_depth}
                target: {type: AverageValue, averageValue: 30}
          behavior:
            scaleDown:
              stabilizationWindowSeconds: 600
              selectPolicy: Min
              policies: [{type: Percent, value: 20, periodSeconds: 120}]
    """,
    "cluster.yaml": """
        apiVersion: storage.k8s.io/v1
        kind: StorageClass
        metadata: {name: ledger-ssd}
        provisioner: csi.ledger.example
        parameters: {tier: fast}
        reclaimPolicy: Retain
        volumeBindingMode: WaitForFirstConsumer
        allowVolumeExpansion: true
        allowedTopologies:
          - matchLabelExpressions: [{key: topology.kubernetes.io/zone, values: [zone-b]}]
        ---
        apiVersion: scheduling.k8s.io/v1
        kind: PriorityClass
        metadata: {name: ledger-batch}
        value: 1200
        preemptionPolicy: Never
        description: month-end batch runs
        ---
        apiVersion: apiextensions.k8s.io/v1
        kind: CustomResourceDefinition
        metadata: {name: journals.ledger.example}
        spec:
          group: ledger.example
          scope: Namespaced
          names: {plural: journals, singular: journal, kind: Journal, shortNames: [jr]}
          versions:
            - name: v1alpha2
              served: true
              storage: true
              schema:
                openAPIV3Schema:
                  type: object
                  properties: {spec: {type: object, x-kubernetes-preserve-unknown-fields: true}}
              subresources: {status: {}}
              additionalPrinterColumns: [{name: Period, type: string, jsonPath: .spec.period}]
    """,
    "ingress.yaml": """
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata: {name: ledger, namespace: ledger}
        spec:
          ingressClassName: edge
          tls: [{hosts: [ledger.example.org], secretName: ledger-tls}]
          rules:
            - host: ledger.example.org
              http:
                paths:
                  - path: /api
                    pathType: Prefix
                    backend: {service: {name: ledger-api, port: {number: 8443}}}
    """,
    "storage.yaml": """
        apiVersion: v1
        kind: PersistentVolumeClaim
        metadata: {name: ledger-journal, namespace: ledger}
        spec:
          accessModes: [ReadWriteOnce]
          storageClassName: ledger-ssd
          volumeMode: Filesystem
          resources: {requests: {storage: 5Gi}, limits: {storage: 8Gi}}
    """,
    "volume.yaml": """
        apiVersion: v1
        kind: PersistentVolume
        metadata: {name: ledger-disk}
        spec:
          capacity: {storage: 10Gi}
          accessModes: [ReadWriteOnce]
          persistentVolumeReclaimPolicy: Retain
          storageClassName: ledger-ssd
          hostPath: {path: /srv/ledger}
    """,
}


def kind_lines(text: str) -> list[int]:
    """The lines (1-based) of `text` as `source` writes it where a document says `kind:`."""
    lines = [line.strip() for line in text.strip("\n").splitlines()]
    return [n for n, line in enumerate(lines, 1) if line.startswith("kind:")]


AUTOSCALER_WARNINGS = [
    "policies.yaml:50:65: HorizontalPodAutoscaler ledger/ledger-api: spec.scaleTargetRef.name: Deployment "
    '"ledger-api" is not in the source in namespace "ledger": this autoscaler scales nothing (warning)',
    "policies.yaml:56:13: HorizontalPodAutoscaler ledger/ledger-api: spec.metrics[1].type: not computed "
    "by gitops: only Resource and ContainerResource cpu and memory metrics are; this Pods metric is "
    "ignored (warning)",
]


def test_one_object_of_each_stored_kind_loads_with_one_warning_each_and_no_errors() -> None:
    result = validate(*LEDGER.items())
    assert errors(result) == []
    kinds = sorted(m.key.kind for m in result.manifests)
    assert kinds == sorted(STORED_KINDS | {"Namespace"})
    inert = [m for m in result.manifests if m.key.kind in INERT_KINDS]
    assert len(inert) == 12
    not_acted = [d for d in result.warnings if not d.field]
    assert sorted(map(str, not_acted)) == sorted(
        f"{m.location.file}:{m.location.line + 1}:1: {m.key}: {not_acted_on(m.key.kind)} (warning)"
        for m in inert
    )
    assert not_acted_on("Ingress") == "stored; gitops does not act on Ingress objects"
    assert "reclaimPolicy" in not_acted_on("StorageClass")
    located = {(d.location.file, d.location.line) for d in not_acted if d.location}
    expected = {(f, line) for f, text in LEDGER.items() for line in kind_lines(text)}
    acted_on = {("policies.yaml", 2), ("policies.yaml", 47), ("cluster.yaml", 13)}
    assert located == expected - {("namespace.yaml", 2), ("storage.yaml", 2), *acted_on}
    # The autoscaler, the budget and the priority class are acted on: no "not acted on"
    # warning; the autoscaler has its own two.
    assert [str(d) for d in result.warnings if d.field] == AUTOSCALER_WARNINGS


def test_a_horizontal_pod_autoscaler_is_not_an_inert_kind() -> None:
    assert "HorizontalPodAutoscaler" not in INERT_KINDS
    assert "HorizontalPodAutoscaler" in STORED_KINDS


def test_priority_classes_and_disruption_budgets_are_not_inert_kinds() -> None:
    assert not {"PriorityClass", "PodDisruptionBudget"} & INERT_KINDS
    assert {"PriorityClass", "PodDisruptionBudget"} <= STORED_KINDS


def test_a_persistent_volume_claim_gets_no_warning() -> None:
    result = validate(("storage.yaml", LEDGER["storage.yaml"]), ("namespace.yaml", LEDGER["namespace.yaml"]))
    assert result.ok
    assert result.warnings == ()
    [claim] = [m for m in result.manifests if m.key.kind == "PersistentVolumeClaim"]
    assert claim.key == ObjectKey("PersistentVolumeClaim", "ledger", "ledger-journal")


def test_cluster_scoped_kinds_have_no_namespace_in_their_key_or_name() -> None:
    result = validate(*LEDGER.items())
    scoped = {m.key for m in result.manifests if m.key.kind in CLUSTER_SCOPED}
    assert scoped == {
        ObjectKey("Namespace", "", "ledger"),
        ObjectKey("ClusterRole", "", "ledger:metrics-viewer"),
        ObjectKey("ClusterRoleBinding", "", "ledger-metrics"),
        ObjectKey("StorageClass", "", "ledger-ssd"),
        ObjectKey("PriorityClass", "", "ledger-batch"),
        ObjectKey("CustomResourceDefinition", "", "journals.ledger.example"),
        ObjectKey("PersistentVolume", "", "ledger-disk"),
    }
    assert str(ObjectKey("StorageClass", "", "ledger-ssd")) == "StorageClass ledger-ssd"
    assert ObjectKey("ClusterRole", "", "ledger:metrics-viewer").ref == "ledger:metrics-viewer"
    assert str(ObjectKey("Role", "ledger", "ledger-reader")) == "Role ledger/ledger-reader"


def test_a_namespace_on_a_cluster_scoped_object_is_ignored_with_a_warning() -> None:
    result = validate_one(
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\n"
        "metadata: {name: nightly, namespace: ledger}\nvalue: 10\n"
    )
    assert result.ok
    assert [m.key for m in result.manifests] == [ObjectKey("PriorityClass", "", "nightly")]
    assert warnings(result) == [
        "apps/web.yaml:3:27: PriorityClass nightly: metadata.namespace: field is not acted on by gitops "
        "and is ignored (warning)",
    ]


def test_a_stored_object_in_an_undeclared_namespace_is_an_error_like_any_other() -> None:
    result = validate_one("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: bot, namespace: payroll}\n")
    assert errors(result) == [
        'apps/web.yaml:3:34: ServiceAccount payroll/bot: metadata.namespace: namespace "payroll" is not '
        'declared; add a Namespace manifest named "payroll" or use "default"'
    ]
    assert validate_one(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: bot, namespace: kube-system}\n"
    ).ok


def test_references_between_stored_objects_are_not_checked() -> None:
    result = validate_one(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: ghost}\n"
        "subjects: [{kind: ServiceAccount, name: nobody}]\n"
        "roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: no-such-role}\n"
    )
    assert result.ok
    assert len(result.warnings) == 1


def test_an_undeclared_field_of_a_stored_kind_is_a_warning_at_its_key() -> None:
    result = validate_one(
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: web}\n"
        "spec:\n  minAvailable: 1\n  minAvailible: 2\n"
    )
    assert result.ok
    assert warnings(result) == [
        "apps/web.yaml:6:3: PodDisruptionBudget default/web: spec.minAvailible: field is not acted on "
        "by gitops and is ignored (warning)",
    ]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: bot}\n"
            "automountServiceAccountToken: nope\n",
            "apps/web.yaml:4:31: ServiceAccount default/bot: automountServiceAccountToken: "
            'expected boolean (true or false), got "nope"',
        ),
        (
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: r}\n"
            "rules:\n  - verbs: get\n",
            'apps/web.yaml:5:12: Role default/r: rules[0].verbs: expected list, got "get"',
        ),
        (
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: b}\n"
            "roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: r}\n",
            'apps/web.yaml:4:54: ClusterRoleBinding b: roleRef.kind: expected "ClusterRole", got "Role"',
        ),
        (
            "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: p}\nspec:\n"
            "  minAvailable: half\n",
            "apps/web.yaml:5:17: PodDisruptionBudget default/p: spec.minAvailable: "
            'expected an integer >= 0 or a percentage like "25%", got "half"',
        ),
        (
            "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: urgent}\n"
            'value: "1000"\n',
            "apps/web.yaml:4:8: PriorityClass urgent: value: expected integer between -2147483648 and "
            '1000000000, got "1000"',
        ),
        (
            "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: h}\nspec:\n"
            "  scaleTargetRef: {kind: Deployment, name: web}\n  maxReplicas: [4]\n",
            "apps/web.yaml:6:16: HorizontalPodAutoscaler default/h: spec.maxReplicas: "
            "expected integer >= 1, got a list",
        ),
        (
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n}\nspec:\n"
            "  podSelector: {}\n  policyTypes: [Inbound]\n",
            'apps/web.yaml:6:17: NetworkPolicy default/n: spec.policyTypes[0]: expected one of "Ingress", '
            '"Egress", got "Inbound"',
        ),
        (
            "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: q}\nspec:\n  hard: {pods: lots}\n",
            "apps/web.yaml:5:16: ResourceQuota default/q: spec.hard.pods: "
            'expected a quantity like 10Gi, 500Mi, 100m or 2, got "lots"',
        ),
        (
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec:\n"
            "  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 10GB}}\n",
            "apps/web.yaml:6:35: PersistentVolumeClaim default/data: spec.resources.requests.storage: "
            'expected a quantity like 10Gi, 500Mi, 100m or 2, got "10GB"',
        ),
    ],
)
def test_a_wrong_field_in_a_stored_kind_is_an_error_naming_file_line_column_and_field(
    text: str, error: str
) -> None:
    assert errors(validate_one(text)) == [error]


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        (
            "  accessModes: [ReadWriteSometimes]\n  resources: {requests: {storage: 1Gi}}\n",
            "apps/web.yaml:5:17: PersistentVolumeClaim default/data: spec.accessModes[0]: expected one of "
            '"ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod", got "ReadWriteSometimes"',
        ),
        (
            "  accessModes: [ReadWriteOnce]\n  resources: {requests: {}}\n",
            "apps/web.yaml:6:25: PersistentVolumeClaim default/data: spec.resources.requests.storage: "
            "required field is missing",
        ),
        (
            "  accessModes: []\n  resources: {requests: {storage: 1Gi}}\n",
            "apps/web.yaml:5:16: PersistentVolumeClaim default/data: spec.accessModes: "
            "expected at least 1 item(s), got 0",
        ),
        (
            "  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n  volumeMode: Raw\n",
            "apps/web.yaml:7:15: PersistentVolumeClaim default/data: spec.volumeMode: expected one of "
            '"Filesystem", "Block", got "Raw"',
        ),
        (
            "  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n"
            "  dataSource: {kind: VolumeSnapshot}\n",
            "apps/web.yaml:7:15: PersistentVolumeClaim default/data: spec.dataSource.name: "
            "required field is missing",
        ),
        (
            "  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n"
            "  storageClassName: 7\n",
            "apps/web.yaml:7:21: PersistentVolumeClaim default/data: spec.storageClassName: "
            'expected a StorageClass name, or "" for no class, got 7',
        ),
    ],
)
def test_a_persistent_volume_claim_is_checked_against_its_full_schema(spec: str, error: str) -> None:
    text = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec:\n" + spec
    assert errors(validate_one(text)) == [error]


def test_a_claim_with_selector_volume_name_and_data_source_ref_is_valid() -> None:
    text = (
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec:\n"
        "  accessModes: [ReadOnlyMany, ReadWriteOncePod]\n  resources: {requests: {storage: 512Mi}}\n"
        '  storageClassName: ""\n  volumeName: pv-0042\n  selector: {matchLabels: {disk: ssd}}\n'
        "  dataSourceRef: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: nightly}\n"
    )
    result = validate_one(text)
    assert result.ok
    assert result.warnings == ()


@pytest.mark.parametrize(
    ("kind", "old", "current"),
    [
        ("PodDisruptionBudget", "policy/v1beta1", "policy/v1"),
        ("HorizontalPodAutoscaler", "autoscaling/v2beta2", "autoscaling/v2"),
        ("HorizontalPodAutoscaler", "autoscaling/v1", "autoscaling/v2"),
        ("Ingress", "extensions/v1beta1", "networking.k8s.io/v1"),
        ("Ingress", "networking.k8s.io/v1beta1", "networking.k8s.io/v1"),
        ("NetworkPolicy", "extensions/v1beta1", "networking.k8s.io/v1"),
        ("RoleBinding", "rbac.authorization.k8s.io/v1beta1", "rbac.authorization.k8s.io/v1"),
        ("ClusterRole", "rbac.authorization.k8s.io/v1alpha1", "rbac.authorization.k8s.io/v1"),
        ("CustomResourceDefinition", "apiextensions.k8s.io/v1beta1", "apiextensions.k8s.io/v1"),
        ("PriorityClass", "scheduling.k8s.io/v1beta1", "scheduling.k8s.io/v1"),
        ("StorageClass", "storage.k8s.io/v1beta1", "storage.k8s.io/v1"),
    ],
)
def test_an_old_api_version_is_an_error_naming_the_one_to_use(kind: str, old: str, current: str) -> None:
    result = validate_one(f"apiVersion: {old}\nkind: {kind}\nmetadata: {{name: old}}\n")
    [error] = errors(result)
    assert error.startswith("apps/web.yaml:1:13: ")
    assert error.endswith(f'apiVersion: expected "{current}" for {kind}, got "{old}"')
    assert result.manifests == ()
    assert result.warnings == ()


def test_an_unknown_kind_is_an_error_listing_every_known_kind() -> None:
    result = validate_one("apiVersion: v1\nkind: PodTemplate\nmetadata: {name: web}\n")
    [error] = errors(result)
    assert error.startswith(
        'apps/web.yaml:2:7: kind: unknown kind "PodTemplate"; expected one of ClusterRole, '
    )
    listed = error.split("expected one of ", 1)[1].split(", ")
    assert listed == sorted(KINDS)
    assert {"ServiceAccount", "ClusterRoleBinding", "PersistentVolumeClaim", "Ingress"} <= set(listed)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: p}\n"
            "spec: {minAvailable: 1, maxUnavailable: 1}\n",
            "apps/web.yaml:4:41: PodDisruptionBudget default/p: spec.maxUnavailable: "
            "expected minAvailable or maxUnavailable, not both",
        ),
        (
            "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: journal}\n"
            "spec:\n  group: ledger.example\n  scope: Cluster\n  names: {plural: journals, kind: Journal}\n"
            "  versions: [{name: v1, served: true, storage: true}]\n",
            "apps/web.yaml:3:18: CustomResourceDefinition journal: metadata.name: "
            'expected "journals.ledger.example" (spec.names.plural and spec.group), got "journal"',
        ),
        (
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: i}\n"
            "spec: {ingressClassName: edge}\n",
            "apps/web.yaml:4:7: Ingress default/i: spec: expected rules or a defaultBackend",
        ),
        (
            "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: h}\nspec:\n"
            "  scaleTargetRef: {kind: Deployment, name: web}\n  minReplicas: 5\n  maxReplicas: 3\n",
            "apps/web.yaml:7:16: HorizontalPodAutoscaler default/h: spec.maxReplicas: "
            "expected at least minReplicas (5), got 3",
        ),
        (
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: Ledger_API}\n",
            "apps/web.yaml:3:18: ServiceAccount default/Ledger_API: metadata.name: expected a DNS-1123 "
            "subdomain (at most 253 lowercase letters, digits, '-' or '.', starting and ending with a "
            'letter or digit), got "Ledger_API"',
        ),
        (
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: a/b}\n",
            "apps/web.yaml:3:18: ClusterRole a/b: metadata.name: expected a name without '/' or '%' "
            'that is not "." or "..", got "a/b"',
        ),
    ],
)
def test_rules_a_schema_cannot_say_are_checked_for_stored_kinds(text: str, error: str) -> None:
    assert errors(validate_one(text)) == [error]
