"""A pod's scheduling fields (affinity, topology spread, priority) validate as Kubernetes
validates them: what is valid loads without a warning, and each rule the API server
enforces is an error naming the file, line, column and field, and saying what would do."""

from __future__ import annotations

import textwrap

import pytest

from .helpers import DEPLOYMENT, errors, validate, validate_one, warnings


def with_pod(snippet: str) -> str:
    """DEPLOYMENT with `snippet` added to its pod spec: its first line is line 13, column 7."""
    lines = textwrap.dedent(snippet).strip("\n").splitlines()
    return DEPLOYMENT.replace("    spec:\n", "    spec:\n" + "".join(f"      {line}\n" for line in lines))


AT = "apps/web.yaml"
POD = "Deployment default/web: spec.template.spec"

EVERYTHING = """
priorityClassName: shop-critical
preemptionPolicy: Never
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms:
        - matchExpressions:
            - {key: kubernetes.io/os, operator: In, values: [linux]}
            - {key: cores, operator: Gt, values: ["8"]}
            - {key: spot, operator: DoesNotExist}
        - matchFields:
            - {key: metadata.name, operator: In, values: [n1]}
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 30
        preference:
          matchExpressions: [{key: disk, operator: NotIn, values: [hdd]}]
  podAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      - labelSelector: {matchLabels: {app: cache}}
        namespaces: [default]
        topologyKey: topology.kubernetes.io/zone
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          labelSelector:
            matchExpressions: [{key: app, operator: Exists}]
          namespaceSelector: {matchLabels: {team: shop}}
          topologyKey: kubernetes.io/hostname
          matchLabelKeys: [version]
          mismatchLabelKeys: [tier]
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: DoNotSchedule
    labelSelector: {matchLabels: {app: web}}
    minDomains: 3
    nodeAffinityPolicy: Ignore
    nodeTaintsPolicy: Honor
    matchLabelKeys: [version]
  - maxSkew: 2
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
"""

CLASS = """
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: shop-critical}
value: 100000
"""


def test_every_scheduling_field_validates_without_errors_or_warnings() -> None:
    result = validate((AT, with_pod(EVERYTHING)), ("classes.yaml", CLASS))
    assert errors(result) == []
    assert warnings(result) == []


@pytest.mark.parametrize(
    ("snippet", "error"),
    [
        # Node selector requirements: values as the operator needs them.
        (
            """
            affinity:
              nodeAffinity:
                requiredDuringSchedulingIgnoredDuringExecution:
                  nodeSelectorTerms:
                    - matchExpressions: [{key: zone, operator: In}]
            """,
            f"{AT}:17:36: {POD}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
            '.nodeSelectorTerms[0].matchExpressions[0]: expected a non-empty "values" list for operator In',
        ),
        (
            """
            affinity:
              nodeAffinity:
                requiredDuringSchedulingIgnoredDuringExecution:
                  nodeSelectorTerms:
                    - matchExpressions: [{key: zone, operator: NotIn, values: []}]
            """,
            f"{AT}:17:73: {POD}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
            '.nodeSelectorTerms[0].matchExpressions[0].values: expected a non-empty "values" list for '
            "operator NotIn",
        ),
        (
            """
            affinity:
              nodeAffinity:
                requiredDuringSchedulingIgnoredDuringExecution:
                  nodeSelectorTerms:
                    - matchExpressions: [{key: zone, operator: Exists, values: [a]}]
            """,
            f"{AT}:17:74: {POD}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
            ".nodeSelectorTerms[0].matchExpressions[0].values: expected no values for operator Exists, "
            "got a list",
        ),
        (
            """
            affinity:
              nodeAffinity:
                requiredDuringSchedulingIgnoredDuringExecution:
                  nodeSelectorTerms:
                    - matchExpressions: [{key: cores, operator: Gt, values: ["4", "8"]}]
            """,
            f"{AT}:17:71: {POD}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
            ".nodeSelectorTerms[0].matchExpressions[0].values: expected exactly one integer value for "
            "operator Gt (the label is compared as a number), got 2 values",
        ),
        (
            """
            affinity:
              nodeAffinity:
                requiredDuringSchedulingIgnoredDuringExecution:
                  nodeSelectorTerms:
                    - matchExpressions: [{key: cores, operator: Lt, values: [many]}]
            """,
            f"{AT}:17:71: {POD}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
            ".nodeSelectorTerms[0].matchExpressions[0].values: expected exactly one integer value for "
            'operator Lt (the label is compared as a number), got "many"',
        ),
        (
            """
            affinity:
              nodeAffinity:
                requiredDuringSchedulingIgnoredDuringExecution:
                  nodeSelectorTerms:
                    - matchExpressions: [{key: "-zone", operator: Exists}]
            """,
            f"{AT}:17:42: {POD}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
            ".nodeSelectorTerms[0].matchExpressions[0].key: expected a label key (an optional DNS-1123 "
            "subdomain prefix and '/', then at most 63 letters, digits, '-', '_' or '.', starting and "
            'ending with a letter or digit), got "-zone"',
        ),
        # matchFields: metadata.name only, In or NotIn, one node name.
        (
            """
            affinity:
              nodeAffinity:
                requiredDuringSchedulingIgnoredDuringExecution:
                  nodeSelectorTerms:
                    - matchFields: [{key: metadata.labels, operator: In, values: [n1]}]
            """,
            f"{AT}:17:37: {POD}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
            '.nodeSelectorTerms[0].matchFields[0].key: expected "metadata.name" (the only node field a '
            'term may match), got "metadata.labels"',
        ),
        (
            """
            affinity:
              nodeAffinity:
                requiredDuringSchedulingIgnoredDuringExecution:
                  nodeSelectorTerms:
                    - matchFields: [{key: metadata.name, operator: Exists}]
            """,
            f"{AT}:17:62: {POD}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
            '.nodeSelectorTerms[0].matchFields[0].operator: expected one of "In", "NotIn", got "Exists"',
        ),
        (
            """
            affinity:
              nodeAffinity:
                requiredDuringSchedulingIgnoredDuringExecution:
                  nodeSelectorTerms:
                    - matchFields: [{key: metadata.name, operator: In, values: [n1, n2]}]
            """,
            f"{AT}:17:74: {POD}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
            ".nodeSelectorTerms[0].matchFields[0].values: expected exactly one value (a node name) for In "
            "on metadata.name, got 2",
        ),
        # A required node affinity needs at least one term.
        (
            """
            affinity:
              nodeAffinity:
                requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: []}
            """,
            f"{AT}:15:79: {POD}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
            ".nodeSelectorTerms: expected at least 1 item(s), got 0",
        ),
        # Weights are 1..100.
        (
            """
            affinity:
              nodeAffinity:
                preferredDuringSchedulingIgnoredDuringExecution:
                  - {weight: 0, preference: {matchExpressions: [{key: a, operator: Exists}]}}
            """,
            f"{AT}:16:24: {POD}.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0]"
            ".weight: expected integer between 1 and 100, got 0",
        ),
        (
            """
            affinity:
              podAffinity:
                preferredDuringSchedulingIgnoredDuringExecution:
                  - weight: 101
                    podAffinityTerm: {topologyKey: kubernetes.io/hostname}
            """,
            f"{AT}:16:23: {POD}.affinity.podAffinity.preferredDuringSchedulingIgnoredDuringExecution[0]"
            ".weight: expected integer between 1 and 100, got 101",
        ),
        # A pod affinity term's topologyKey is required and a label key.
        (
            """
            affinity:
              podAntiAffinity:
                requiredDuringSchedulingIgnoredDuringExecution:
                  - labelSelector: {matchLabels: {app: web}}
            """,
            f"{AT}:16:15: {POD}.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]"
            ".topologyKey: required field is missing",
        ),
        (
            """
            affinity:
              podAntiAffinity:
                requiredDuringSchedulingIgnoredDuringExecution:
                  - {labelSelector: {matchLabels: {app: web}}, topologyKey: ""}
            """,
            f"{AT}:16:71: {POD}.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]"
            ".topologyKey: expected a node label key such as kubernetes.io/hostname or "
            'topology.kubernetes.io/zone, got ""',
        ),
        (
            """
            affinity:
              podAntiAffinity:
                requiredDuringSchedulingIgnoredDuringExecution:
                  - {labelSelector: {matchLabels: {app: web}}, topologyKey: "zone/"}
            """,
            f"{AT}:16:71: {POD}.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]"
            ".topologyKey: expected a label key (an optional DNS-1123 subdomain prefix and '/', then at "
            "most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit), "
            'got "zone/"',
        ),
        # Its selectors are label selectors.
        (
            """
            affinity:
              podAffinity:
                requiredDuringSchedulingIgnoredDuringExecution:
                  - labelSelector: {matchExpressions: [{key: app, operator: In}]}
                    topologyKey: kubernetes.io/hostname
            """,
            f"{AT}:16:50: {POD}.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]"
            '.labelSelector.matchExpressions[0]: expected a non-empty "values" list for operator In',
        ),
        (
            """
            affinity:
              podAffinity:
                requiredDuringSchedulingIgnoredDuringExecution:
                  - labelSelector: {matchExpressions: [{key: cores, operator: Gt, values: ["1"]}]}
                    topologyKey: kubernetes.io/hostname
            """,
            f"{AT}:16:73: {POD}.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]"
            '.labelSelector.matchExpressions[0].operator: expected one of "In", "NotIn", "Exists", '
            '"DoesNotExist", got "Gt"',
        ),
        # matchLabelKeys: beside a labelSelector, keys it does not use, not also mismatched.
        (
            """
            affinity:
              podAffinity:
                requiredDuringSchedulingIgnoredDuringExecution:
                  - labelSelector: {matchLabels: {app: web}}
                    topologyKey: kubernetes.io/hostname
                    matchLabelKeys: [app]
            """,
            f"{AT}:18:32: {POD}.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]"
            '.matchLabelKeys[0]: key "app" is also in spec.template.spec.affinity.podAffinity'
            ".requiredDuringSchedulingIgnoredDuringExecution[0].labelSelector: expected a key the "
            "labelSelector does not use (the pod's value of it is added to the selector)",
        ),
        (
            """
            affinity:
              podAffinity:
                requiredDuringSchedulingIgnoredDuringExecution:
                  - topologyKey: kubernetes.io/hostname
                    mismatchLabelKeys: [tier]
            """,
            f"{AT}:17:34: {POD}.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]"
            ".mismatchLabelKeys: may be set only with a labelSelector (its keys are added to it)",
        ),
        (
            """
            affinity:
              podAntiAffinity:
                requiredDuringSchedulingIgnoredDuringExecution:
                  - labelSelector: {matchLabels: {app: web}}
                    topologyKey: kubernetes.io/hostname
                    matchLabelKeys: [tier]
                    mismatchLabelKeys: [tier]
            """,
            f"{AT}:19:35: {POD}.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]"
            '.mismatchLabelKeys[0]: key "tier" is also in matchLabelKeys: expected it in one of them',
        ),
        (
            """
            affinity:
              podAffinity:
                requiredDuringSchedulingIgnoredDuringExecution:
                  - labelSelector: {matchLabels: {app: web}}
                    topologyKey: kubernetes.io/hostname
                    namespaces: [Shop]
            """,
            f"{AT}:18:28: {POD}.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]"
            ".namespaces[0]: expected a DNS-1035 label (at most 63 lowercase letters, digits or '-', "
            'starting with a letter and ending with a letter or digit), got "Shop"',
        ),
        # Topology spread constraints.
        (
            """
            topologySpreadConstraints:
              - {maxSkew: 0, topologyKey: zone, whenUnsatisfiable: DoNotSchedule}
            """,
            f"{AT}:14:21: {POD}.topologySpreadConstraints[0].maxSkew: expected integer >= 1, got 0",
        ),
        (
            """
            topologySpreadConstraints:
              - {maxSkew: 1, topologyKey: zone}
            """,
            f"{AT}:14:11: {POD}.topologySpreadConstraints[0].whenUnsatisfiable: required field is missing",
        ),
        (
            """
            topologySpreadConstraints:
              - {maxSkew: 1, topologyKey: zone, whenUnsatisfiable: DoNotSchedule, minDomains: 0}
            """,
            f"{AT}:14:89: {POD}.topologySpreadConstraints[0].minDomains: expected integer >= 1, got 0",
        ),
        (
            """
            topologySpreadConstraints:
              - {maxSkew: 1, topologyKey: zone, whenUnsatisfiable: ScheduleAnyway, minDomains: 2}
            """,
            f"{AT}:14:90: {POD}.topologySpreadConstraints[0].minDomains: may be set only when "
            'whenUnsatisfiable is "DoNotSchedule", got "ScheduleAnyway"',
        ),
        (
            """
            topologySpreadConstraints:
              - maxSkew: 1
                topologyKey: zone
                whenUnsatisfiable: DoNotSchedule
                labelSelector: {matchLabels: {app: web}}
                matchLabelKeys: [app]
            """,
            f'{AT}:18:28: {POD}.topologySpreadConstraints[0].matchLabelKeys[0]: key "app" is also in '
            "spec.template.spec.topologySpreadConstraints[0].labelSelector: expected a key the "
            "labelSelector does not use (the pod's value of it is added to the selector)",
        ),
        (
            """
            topologySpreadConstraints:
              - {maxSkew: 1, topologyKey: zone, whenUnsatisfiable: DoNotSchedule, matchLabelKeys: [app]}
            """,
            f"{AT}:14:93: {POD}.topologySpreadConstraints[0].matchLabelKeys: may be set only with a "
            "labelSelector (its keys are added to it)",
        ),
        (
            """
            topologySpreadConstraints:
              - {maxSkew: 1, topologyKey: zone, whenUnsatisfiable: DoNotSchedule}
              - {maxSkew: 2, topologyKey: zone, whenUnsatisfiable: DoNotSchedule}
            """,
            f'{AT}:15:11: {POD}.topologySpreadConstraints[1]: duplicate constraint: topologyKey "zone" '
            'with whenUnsatisfiable "DoNotSchedule" is also spec.template.spec.topologySpreadConstraints[0]',
        ),
        (
            """
            topologySpreadConstraints:
              - {maxSkew: 1, topologyKey: zone, whenUnsatisfiable: Sometimes}
            """,
            f"{AT}:14:62: {POD}.topologySpreadConstraints[0].whenUnsatisfiable: expected one of "
            '"DoNotSchedule", "ScheduleAnyway", got "Sometimes"',
        ),
        # Priority fields.
        (
            "preemptionPolicy: Sometimes",
            f'{AT}:13:25: {POD}.preemptionPolicy: expected one of "PreemptLowerPriority", "Never", '
            'got "Sometimes"',
        ),
        (
            "priorityClassName: Critical",
            f"{AT}:13:26: {POD}.priorityClassName: expected a DNS-1123 subdomain (lowercase letters, digits, "
            "'-' and '.'), got \"Critical\"",
        ),
    ],
)
def test_a_rule_of_the_scheduling_fields_is_an_error_at_its_field(snippet: str, error: str) -> None:
    assert errors(validate_one(with_pod(snippet))) == [error]


# --- priority classes -------------------------------------------------------------------


def priority_class(name: str, value: int, *extra: str) -> str:
    lines = [
        "apiVersion: scheduling.k8s.io/v1",
        "kind: PriorityClass",
        f"metadata: {{name: {name}}}",
        f"value: {value}",
        *extra,
    ]
    return "\n".join(lines) + "\n"


def test_a_pod_naming_a_class_that_is_not_in_git_is_an_error_at_its_priority_class_name() -> None:
    result = validate_one(with_pod("priorityClassName: batch"))
    assert errors(result) == [
        f'{AT}:13:26: {POD}.priorityClassName: PriorityClass "batch" does not exist (declare it, or use '
        "system-cluster-critical or system-node-critical)"
    ]


def test_a_cron_job_naming_a_missing_class_is_an_error_in_its_job_template() -> None:
    cron = """
        apiVersion: batch/v1
        kind: CronJob
        metadata: {name: nightly}
        spec:
          schedule: "0 3 * * *"
          jobTemplate:
            spec:
              template:
                spec:
                  priorityClassName: batch
                  restartPolicy: Never
                  containers: [{name: run, image: busybox:1}]
    """
    assert errors(validate_one(cron)) == [
        f"{AT}:10:30: CronJob default/nightly: spec.jobTemplate.spec.template.spec.priorityClassName: "
        'PriorityClass "batch" does not exist (declare it, or use system-cluster-critical or '
        "system-node-critical)"
    ]


@pytest.mark.parametrize("name", ["system-cluster-critical", "system-node-critical"])
def test_the_built_in_classes_exist_without_manifests(name: str) -> None:
    result = validate_one(with_pod(f"priorityClassName: {name}"))
    assert result.ok
    assert warnings(result) == []


def test_a_class_in_git_is_found_whatever_the_file() -> None:
    result = validate(
        (AT, with_pod("priorityClassName: batch")), ("classes.yaml", priority_class("batch", 5))
    )
    assert result.ok


def test_a_written_priority_must_be_the_value_of_the_class() -> None:
    pod = with_pod("priorityClassName: batch\npriority: 7")
    assert errors(validate((AT, pod), ("classes.yaml", priority_class("batch", 5)))) == [
        f'{AT}:14:17: {POD}.priority: expected 5 (the value of its PriorityClass "batch") or no priority: '
        "Kubernetes sets a pod's priority from its PriorityClass and refuses one that disagrees, got 7"
    ]
    assert validate(
        (AT, with_pod("priorityClassName: batch\npriority: 5")), ("c.yaml", priority_class("batch", 5))
    ).ok


def test_a_written_priority_without_a_class_must_be_the_global_defaults_or_0() -> None:
    assert errors(validate_one(with_pod("priority: 10"))) == [
        f"{AT}:13:17: {POD}.priority: expected 0 (no priorityClassName and no global default "
        "PriorityClass) or no priority: Kubernetes sets a pod's priority from its PriorityClass and "
        "refuses one that disagrees, got 10"
    ]
    default = priority_class("everyone", 20, "globalDefault: true")
    assert errors(validate((AT, with_pod("priority: 10")), ("classes.yaml", default))) == [
        f'{AT}:13:17: {POD}.priority: expected 20 (the value of PriorityClass "everyone", the global '
        "default) or no priority: Kubernetes sets a pod's priority from its PriorityClass and refuses "
        "one that disagrees, got 10"
    ]
    assert validate((AT, with_pod("priority: 20")), ("classes.yaml", default)).ok
    assert validate_one(with_pod("priority: 0")).ok


def test_at_most_one_class_is_the_global_default() -> None:
    result = validate(
        ("a.yaml", priority_class("low", 1, "globalDefault: true")),
        ("b.yaml", priority_class("high", 2, "globalDefault: true")),
        ("c.yaml", priority_class("other", 3, "globalDefault: false")),
    )
    assert errors(result) == [
        "b.yaml:5:16: PriorityClass high: globalDefault: PriorityClass low (a.yaml:5:16) is already the "
        "global default: at most one PriorityClass may have globalDefault: true"
    ]


def test_a_value_above_one_billion_is_only_for_system_classes() -> None:
    assert errors(validate_one(priority_class("urgent", 1_000_000_001))) == [
        f"{AT}:4:8: PriorityClass urgent: value: expected at most 1000000000 for a user-defined class "
        "(higher values are reserved for classes named system-...), got 1000000001"
    ]
    assert validate_one(priority_class("urgent", 1_000_000_000)).ok
    assert validate_one(priority_class("system-custom", 2_000_000_000)).ok
    assert errors(validate_one(priority_class("urgent", 2_147_483_648))) == [
        f"{AT}:4:8: PriorityClass urgent: value: expected integer between -2147483648 and 1000000000, "
        "got 2147483648"
    ]


def test_priority_classes_and_budgets_get_no_not_acted_on_warning() -> None:
    budget = (
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: web}\n"
        "spec: {minAvailable: 1, selector: {matchLabels: {app: web}}}\n"
    )
    result = validate(("budget.yaml", budget), ("classes.yaml", priority_class("batch", 5)))
    assert result.ok
    assert warnings(result) == []


def test_a_budget_with_neither_min_available_nor_max_unavailable_is_a_warning() -> None:
    budget = (
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: web}\nspec:\n  selector: {}\n"
    )
    result = validate_one(budget)
    assert result.ok
    assert warnings(result) == [
        f"{AT}:4:1: PodDisruptionBudget default/web: spec: neither minAvailable nor maxUnavailable: as in "
        "Kubernetes, this budget allows no disruption of the pods it selects (warning)"
    ]
