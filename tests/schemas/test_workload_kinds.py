"""StatefulSets, DaemonSets, Jobs and CronJobs validate as Kubernetes validates them: each
kind against its schema (the pod template is the Deployment's), the rules of its kind
(restartPolicy, selector against template, update strategies, Job completion modes and
failure policies, cron schedules and time zones), the server's policy on every pod template,
and the references of its pods across objects. A HorizontalPodAutoscaler is acted on: it
must name a Deployment, StatefulSet, ReplicaSet or ReplicationController and scale on cpu or
memory."""

from __future__ import annotations

import pytest

from gitops.model import ObjectKey
from gitops.schemas.cron import DESCRIPTORS, schedule_problem
from gitops.schemas.validate import DEFAULT_POLICY, Policy, ValidationResult, generated_name, validate_files

from .helpers import errors, source, validate, warnings

# The shape of the MySQL example of Kubernetes' "Run a Replicated Stateful Application"
# tutorial: a headless Service for the pods' DNS names, a claim per pod from a template.
MYSQL = """
apiVersion: v1
kind: Service
metadata:
  name: mysql
  labels: {app: mysql}
spec:
  clusterIP: None
  selector: {app: mysql}
  ports:
    - {name: mysql, port: 3306}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: mysql}
data:
  primary.cnf: |
    [mysqld]
    log-bin
---
apiVersion: v1
kind: Secret
metadata: {name: mysql-root}
stringData: {password: change-me}
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: mysql
spec:
  selector:
    matchLabels: {app: mysql}
  serviceName: mysql
  replicas: 3
  podManagementPolicy: OrderedReady
  updateStrategy:
    type: RollingUpdate
    rollingUpdate: {partition: 0, maxUnavailable: 1}
  persistentVolumeClaimRetentionPolicy: {whenDeleted: Retain, whenScaled: Delete}
  minReadySeconds: 10
  revisionHistoryLimit: 5
  ordinals: {start: 0}
  template:
    metadata:
      labels: {app: mysql}
    spec:
      terminationGracePeriodSeconds: 30
      containers:
        - name: mysql
          image: mysql:8.0
          env:
            - name: MYSQL_ROOT_PASSWORD
              valueFrom:
                secretKeyRef: {name: mysql-root, key: password}
          ports:
            - {name: mysql, containerPort: 3306}
          resources:
            requests: {cpu: 500m, memory: 1Gi}
          volumeMounts:
            - {name: data, mountPath: /var/lib/mysql, subPath: mysql}
            - {name: conf, mountPath: /etc/mysql/conf.d}
          livenessProbe:
            exec: {command: [mysqladmin, ping]}
            initialDelaySeconds: 30
            periodSeconds: 10
          readinessProbe:
            exec: {command: [mysql, -h, 127.0.0.1, -e, SELECT 1]}
            initialDelaySeconds: 5
            periodSeconds: 2
      volumes:
        - name: conf
          configMap: {name: mysql}
  volumeClaimTemplates:
    - metadata:
        name: data
      spec:
        accessModes: [ReadWriteOnce]
        resources:
          requests: {storage: 10Gi}
"""
STS = "apps/mysql.yaml"
STS_KEY = f"{STS}:{{}}: StatefulSet default/mysql"

# The fluentd-elasticsearch DaemonSet of Kubernetes' DaemonSet page: on every node,
# control-plane ones included, reading the node's logs.
FLUENTD = """
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: fluentd-elasticsearch
  namespace: kube-system
  labels: {k8s-app: fluentd-logging}
spec:
  selector:
    matchLabels: {name: fluentd-elasticsearch}
  updateStrategy:
    type: RollingUpdate
    rollingUpdate: {maxUnavailable: 1, maxSurge: 0}
  minReadySeconds: 5
  revisionHistoryLimit: 10
  template:
    metadata:
      labels: {name: fluentd-elasticsearch}
    spec:
      tolerations:
        - key: node-role.kubernetes.io/control-plane
          operator: Exists
          effect: NoSchedule
      containers:
        - name: fluentd-elasticsearch
          image: quay.io/fluentd_elasticsearch/fluentd:v2.5.2
          resources:
            limits: {memory: 200Mi}
            requests: {cpu: 100m, memory: 200Mi}
          volumeMounts:
            - {name: varlog, mountPath: /var/log}
      terminationGracePeriodSeconds: 30
      volumes:
        - name: varlog
          hostPath: {path: /var/log}
"""
DS = "apps/fluentd.yaml"
DS_KEY = f"{DS}:{{}}: DaemonSet kube-system/fluentd-elasticsearch"
LOGS = Policy(host_paths=("/var/log",))

# An Argo CD PreSync hook: a Job with a generated name, run before each sync that changes it.
HOOK = """
apiVersion: batch/v1
kind: Job
metadata:
  generateName: schema-migrate-
  annotations:
    argocd.argoproj.io/hook: PreSync
    argocd.argoproj.io/hook-delete-policy: HookSucceeded
spec:
  backoffLimit: 2
  activeDeadlineSeconds: 600
  ttlSecondsAfterFinished: 3600
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: migrate
          image: ghcr.io/example/shop-migrations:2.4.1
          command: [/app/migrate, up]
          envFrom:
            - secretRef: {name: shop-db}
---
apiVersion: v1
kind: Secret
metadata: {name: shop-db}
stringData: {DATABASE_URL: "postgres://shop@db/shop"}
"""
JOB = "hooks/migrate.yaml"

# A named Job to break in the tests of the Job rules.
BATCH = """
apiVersion: batch/v1
kind: Job
metadata:
  name: reindex
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: reindex
          image: ghcr.io/example/search:3.1
"""
BATCH_KEY = "jobs/reindex.yaml:{}: Job default/reindex"

CRON = """
apiVersion: batch/v1
kind: CronJob
metadata:
  name: nightly-backup
spec:
  schedule: "30 2 * * *"
  timeZone: Europe/Paris
  concurrencyPolicy: Forbid
  startingDeadlineSeconds: 300
  successfulJobsHistoryLimit: 3
  failedJobsHistoryLimit: 1
  jobTemplate:
    metadata:
      labels: {app: backup}
    spec:
      backoffLimit: 1
      template:
        metadata:
          labels: {app: backup}
        spec:
          restartPolicy: OnFailure
          containers:
            - name: dump
              image: postgres:16
              command: [sh, -c, 'pg_dump "$DATABASE_URL" > /backup/shop.sql']
              envFrom:
                - secretRef: {name: shop-db}
              volumeMounts:
                - {name: backup, mountPath: /backup}
          volumes:
            - name: backup
              persistentVolumeClaim: {claimName: backups}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: backups}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 20Gi}}
---
apiVersion: v1
kind: Secret
metadata: {name: shop-db}
stringData: {DATABASE_URL: "postgres://shop@db/shop"}
"""
CRON_FILE = "jobs/backup.yaml"
CRON_KEY = f"{CRON_FILE}:{{}}: CronJob default/nightly-backup"
POD = "spec.jobTemplate.spec.template.spec"

AUTOSCALER = """
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: mysql}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: StatefulSet, name: mysql}
  minReplicas: 3
  maxReplicas: 5
  metrics:
    - type: Resource
      resource: {name: cpu, target: {type: Utilization, averageUtilization: 70}}
    - type: ContainerResource
      containerResource:
        name: memory
        container: mysql
        target: {type: AverageValue, averageValue: 800Mi}
"""
HPA = "apps/hpa.yaml"
HPA_KEY = f"{HPA}:{{}}: HorizontalPodAutoscaler default/mysql"


def check(path: str, text: str, policy: Policy = DEFAULT_POLICY) -> ValidationResult:
    return validate_files([source(path, text)], policy=policy)


# --- the valid shapes -----------------------------------------------------------------------


def test_a_mysql_stateful_set_with_claim_templates_and_a_headless_service_is_valid() -> None:
    result = check(STS, MYSQL)
    assert errors(result) == []
    assert warnings(result) == []
    assert [str(m.key) for m in result.manifests] == [
        "ConfigMap default/mysql",
        "Secret default/mysql-root",
        "Service default/mysql",
        "StatefulSet default/mysql",
    ]


def test_a_fluentd_daemon_set_reading_the_nodes_logs_is_valid_where_the_server_allows_them() -> None:
    result = check(DS, FLUENTD, LOGS)
    assert errors(result) == []
    assert warnings(result) == []
    assert [m.key for m in result.manifests] == [
        ObjectKey("DaemonSet", "kube-system", "fluentd-elasticsearch")
    ]


def test_an_argo_cd_hook_job_with_generate_name_is_valid_and_named_from_its_content() -> None:
    result = check(JOB, HOOK)
    assert errors(result) == []
    assert warnings(result) == []
    job = next(m for m in result.manifests if m.key.kind == "Job")
    assert job.key.name == generated_name("schema-migrate-", job.body)
    assert job.key.name.startswith("schema-migrate-")
    assert len(job.key.name) == len("schema-migrate-") + 5
    assert "name" not in job.body["metadata"]  # the body stays as written


def test_a_generated_job_name_is_the_same_on_every_sync_and_changes_with_the_job() -> None:
    first = next(m.key for m in check(JOB, HOOK).manifests if m.key.kind == "Job")
    again = next(m.key for m in check("elsewhere.yaml", HOOK).manifests if m.key.kind == "Job")
    changed = next(m.key for m in check(JOB, HOOK.replace("2.4.1", "2.4.2")).manifests if m.key.kind == "Job")
    assert first == again
    assert changed.name.startswith("schema-migrate-")
    assert changed != first


def test_a_long_generate_name_is_cut_so_the_name_has_at_most_63_characters() -> None:
    name = generated_name("x" * 80, {"kind": "Job"})
    assert len(name) == 63
    assert name.startswith("x" * 58)


def test_a_nightly_backup_cron_job_is_valid() -> None:
    result = check(CRON_FILE, CRON)
    assert errors(result) == []
    assert warnings(result) == []
    assert ObjectKey("CronJob", "default", "nightly-backup") in {m.key for m in result.manifests}


def test_an_autoscaler_of_a_stateful_set_on_cpu_and_memory_is_valid_and_acted_on() -> None:
    result = validate((STS, MYSQL), (HPA, AUTOSCALER))
    assert errors(result) == []
    assert warnings(result) == []  # no "not acted on" warning


# --- restartPolicy ---------------------------------------------------------------------------


def test_a_stateful_set_always_restarts_its_pods() -> None:
    result = check(STS, MYSQL.replace("terminationGracePeriodSeconds: 30", "restartPolicy: Never"))
    assert errors(result) == [
        f"{STS_KEY.format('46:22')}: spec.template.spec.restartPolicy: "
        'expected "Always" (a StatefulSet always restarts its pods), got "Never"'
    ]


def test_a_daemon_set_always_restarts_its_pods() -> None:
    result = check(DS, FLUENTD.replace("terminationGracePeriodSeconds: 30", "restartPolicy: OnFailure"), LOGS)
    assert errors(result) == [
        f"{DS_KEY.format('31:22')}: spec.template.spec.restartPolicy: "
        'expected "Always" (a DaemonSet always restarts its pods), got "OnFailure"'
    ]


def test_a_job_must_say_never_or_on_failure_since_the_default_always_is_invalid() -> None:
    result = validate(("jobs/reindex.yaml", BATCH.replace("      restartPolicy: Never\n", "")))
    assert errors(result) == [
        f"{BATCH_KEY.format('8:7')}: spec.template.spec.restartPolicy: required field is missing: "
        'expected "Never" or "OnFailure" (a Job\'s pods run to completion; the default, "Always", '
        "is not valid for a Job)"
    ]


def test_a_job_may_not_restart_always() -> None:
    result = validate(("jobs/reindex.yaml", BATCH.replace("restartPolicy: Never", "restartPolicy: Always")))
    assert errors(result) == [
        f"{BATCH_KEY.format('8:22')}: spec.template.spec.restartPolicy: "
        'expected "Never" or "OnFailure" (a Job\'s pods run to completion), got "Always"'
    ]


def test_a_cron_jobs_job_template_may_not_restart_always() -> None:
    result = check(CRON_FILE, CRON.replace("restartPolicy: OnFailure", "restartPolicy: Always"))
    assert errors(result) == [
        f"{CRON_KEY.format('21:26')}: {POD}.restartPolicy: "
        'expected "Never" or "OnFailure" (a Job\'s pods run to completion), got "Always"'
    ]


# --- selectors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "text", "policy", "where", "labels"),
    [
        (STS, MYSQL, Policy(), STS_KEY.format("31:5"), "app=mysql"),
        (DS, FLUENTD, LOGS, DS_KEY.format("9:5"), "name=fluentd-elasticsearch"),
    ],
)
def test_a_selector_must_match_the_pod_template_of_every_workload(
    path: str, text: str, policy: Policy, where: str, labels: str
) -> None:
    broken = text.replace("    matchLabels: {", "    matchLabels: {tier: db, ", 1)
    assert errors(check(path, broken, policy)) == [
        f"{where}: spec.selector: selector does not match the pod template's labels "
        f"(spec.template.metadata.labels: {labels})"
    ]


def test_a_jobs_selector_needs_manual_selector_since_kubernetes_generates_it() -> None:
    text = BATCH.replace(
        "spec:\n  template:", "spec:\n  selector: {matchLabels: {app: reindex}}\n  template:"
    )
    assert errors(validate(("jobs/reindex.yaml", text))) == [
        f"{BATCH_KEY.format('6:13')}: spec.selector: expected manualSelector: true with a selector "
        "(Kubernetes generates a Job's selector and refuses one written without it), or no selector"
    ]


def test_a_manual_job_selector_must_match_the_pod_template() -> None:
    text = BATCH.replace(
        "spec:\n  template:\n    spec:",
        "spec:\n  manualSelector: true\n  selector: {matchLabels: {app: reindex}}\n  template:\n"
        "    metadata: {labels: {app: search}}\n    spec:",
    )
    assert errors(validate(("jobs/reindex.yaml", text))) == [
        f"{BATCH_KEY.format('7:13')}: spec.selector: selector does not match the pod template's labels "
        "(spec.template.metadata.labels: app=search)"
    ]


# --- StatefulSet -----------------------------------------------------------------------------


def test_a_volume_mount_may_name_a_claim_template_and_an_unknown_one_lists_both() -> None:
    result = check(STS, MYSQL.replace("{name: conf, mountPath", "{name: logs, mountPath"))
    assert errors(result) == [
        f"{STS_KEY.format('60:22')}: spec.template.spec.containers[0].volumeMounts[1].name: "
        'volume "logs" is not declared in spec.template.spec.volumes or spec.volumeClaimTemplates '
        "(declared: conf, data)"
    ]


def test_a_claim_template_may_not_share_its_name_with_a_pod_volume() -> None:
    text = MYSQL.replace(
        "        - name: conf\n", "        - name: data\n          emptyDir: {}\n        - name: conf\n"
    )
    assert errors(check(STS, text)) == [
        f'{STS_KEY.format("70:17")}: spec.template.spec.volumes[0].name: volume "data" has the name of '
        "the claim template spec.volumeClaimTemplates[0], which would replace it in every pod; "
        "expected names distinct from the volumeClaimTemplates"
    ]


def test_rolling_update_settings_need_type_rolling_update() -> None:
    result = check(STS, MYSQL.replace("type: RollingUpdate", "type: OnDelete"))
    assert errors(result) == [
        f"{STS_KEY.format('37:20')}: spec.updateStrategy.rollingUpdate: "
        'expected no rollingUpdate when type is "OnDelete" (only allowed for type "RollingUpdate")'
    ]


def test_a_partition_is_at_least_zero() -> None:
    result = check(STS, MYSQL.replace("partition: 0", "partition: -1"))
    assert errors(result) == [
        f"{STS_KEY.format('37:32')}: spec.updateStrategy.rollingUpdate.partition: "
        "expected integer >= 0, got -1"
    ]


@pytest.mark.parametrize(("value", "shown"), [("0", "0"), ('"0%"', '"0%"')])
def test_a_stateful_sets_max_unavailable_is_at_least_one(value: str, shown: str) -> None:
    result = check(STS, MYSQL.replace("maxUnavailable: 1", f"maxUnavailable: {value}"))
    assert errors(result) == [
        f"{STS_KEY.format('37:51')}: spec.updateStrategy.rollingUpdate.maxUnavailable: "
        "expected an integer >= 1 or a percentage >= 1% (a rolling update takes at least one pod down "
        f"at a time), got {shown}"
    ]


def test_a_stateful_set_name_has_no_dots_since_it_starts_each_pods_hostname() -> None:
    result = check(
        STS, MYSQL.replace("  name: mysql\nspec:\n  selector", "  name: mysql.db\nspec:\n  selector")
    )
    assert errors(result) == [
        "apps/mysql.yaml:28:9: StatefulSet default/mysql.db: metadata.name: expected a name without '.' "
        '(each pod\'s hostname is <name>-<ordinal>, a DNS-1123 label), got "mysql.db"'
    ]


def test_a_service_name_without_its_service_in_the_source_is_a_warning() -> None:
    result = check(STS, MYSQL.replace("serviceName: mysql", "serviceName: mysql-headless"))
    assert errors(result) == []
    assert warnings(result) == [
        f'{STS_KEY.format("32:16")}: spec.serviceName: Service "mysql-headless" is not in the source '
        'in namespace "default": expected a headless Service (clusterIP: None), which gives the pods '
        "their DNS names (warning)"
    ]


def test_a_service_name_naming_a_service_that_is_not_headless_is_a_warning() -> None:
    result = check(STS, MYSQL.replace("  clusterIP: None\n", ""))
    assert errors(result) == []
    assert warnings(result) == [
        f"{STS_KEY.format('31:16')}: spec.serviceName: Service default/mysql is not headless: expected a "
        "headless Service (clusterIP: None), which gives the pods their DNS names (warning)"
    ]


def test_claim_templates_are_not_claims_in_the_source_but_a_pod_volumes_claim_must_be() -> None:
    text = MYSQL.replace(
        "          configMap: {name: mysql}\n",
        "          configMap: {name: mysql}\n        - name: dumps\n"
        "          persistentVolumeClaim: {claimName: mysql-dumps}\n",
    )
    assert errors(check(STS, text)) == [
        f"{STS_KEY.format('73:46')}: spec.template.spec.volumes[1].persistentVolumeClaim.claimName: "
        'PersistentVolumeClaim "mysql-dumps" does not exist in namespace "default" (declare it)'
    ]


# --- DaemonSet -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rolling", "col"),
    [
        ("{maxUnavailable: 0, maxSurge: 0}", 37),
        ('{maxUnavailable: "0%"}', 37),  # maxSurge is 0 by default
        ("{maxSurge: 0%, maxUnavailable: 0}", 51),
    ],
)
def test_a_daemon_sets_max_surge_and_max_unavailable_are_not_both_zero(rolling: str, col: int) -> None:
    text = FLUENTD.replace("{maxUnavailable: 1, maxSurge: 0}", rolling)
    assert errors(check(DS, text, LOGS)) == [
        f"{DS_KEY.format(f'12:{col}')}: spec.updateStrategy.rollingUpdate.maxUnavailable: may not be 0 "
        "when `maxSurge` is 0 (expected maxUnavailable > 0, or maxSurge > 0: the rollout could never "
        "replace a pod)"
    ]


def test_a_daemon_set_may_surge_instead_of_taking_pods_down() -> None:
    text = FLUENTD.replace("{maxUnavailable: 1, maxSurge: 0}", "{maxUnavailable: 0, maxSurge: 1}")
    assert check(DS, text, LOGS).ok


def test_rolling_update_settings_of_an_on_delete_daemon_set_are_ignored_with_a_warning() -> None:
    result = check(DS, FLUENTD.replace("type: RollingUpdate", "type: OnDelete"), LOGS)
    assert errors(result) == []
    assert warnings(result) == [
        f"{DS_KEY.format('12:5')}: spec.updateStrategy.rollingUpdate: field is not acted on by gitops "
        "and is ignored for type OnDelete (warning)"
    ]


def test_a_daemon_sets_host_path_is_held_to_the_servers_policy() -> None:
    assert errors(check(DS, FLUENTD)) == [
        f"{DS_KEY.format('34:28')}: spec.template.spec.volumes[0].hostPath.path: hostPath /var/log is not "
        "under a prefix this server allows (gitops serve --allow-host-path; allowed: none)"
    ]


def test_a_daemon_sets_privileged_container_is_held_to_the_servers_policy() -> None:
    text = FLUENTD.replace(
        "          volumeMounts:\n",
        "          securityContext: {privileged: true}\n          volumeMounts:\n",
    )
    assert errors(check(DS, text, LOGS)) == [
        f"{DS_KEY.format('29:41')}: spec.template.spec.containers[0].securityContext.privileged: "
        "privileged containers are refused unless the server allows them (gitops serve "
        "--allow-privileged), got true"
    ]
    assert check(DS, text, Policy(host_paths=("/var/log",), privileged=True)).ok


# --- Job -------------------------------------------------------------------------------------


def batch(spec: str) -> list[str]:
    """The errors of the reindex Job with `spec` lines added at the top of its spec."""
    return errors(
        validate(("jobs/reindex.yaml", BATCH.replace("spec:\n  template:", f"spec:\n{spec}  template:")))
    )


def test_an_indexed_job_needs_completions() -> None:
    assert batch("  completionMode: Indexed\n") == [
        f"{BATCH_KEY.format('6:3')}: spec.completions: required field is missing when completionMode is "
        '"Indexed" (expected the number of indexes)'
    ]


def test_a_backoff_limit_per_index_needs_an_indexed_job() -> None:
    assert batch("  backoffLimitPerIndex: 1\n") == [
        f'{BATCH_KEY.format("6:25")}: spec.backoffLimitPerIndex: requires completionMode "Indexed" '
        '(this Job\'s is "NonIndexed", the default)'
    ]
    assert batch("  completionMode: NonIndexed\n  backoffLimitPerIndex: 1\n") == [
        f'{BATCH_KEY.format("7:25")}: spec.backoffLimitPerIndex: requires completionMode "Indexed" '
        '(this Job\'s is "NonIndexed")'
    ]
    assert batch("  completionMode: Indexed\n  completions: 4\n  backoffLimitPerIndex: 1\n") == []


@pytest.mark.parametrize(("field", "col"), [("parallelism", "16"), ("completions", "16")])
def test_parallelism_and_completions_are_at_least_zero(field: str, col: str) -> None:
    assert batch(f"  {field}: -1\n") == [
        f"{BATCH_KEY.format('6:' + col)}: spec.{field}: expected integer >= 0, got -1"
    ]


def test_an_active_deadline_is_positive() -> None:
    assert batch("  activeDeadlineSeconds: 0\n") == [
        f"{BATCH_KEY.format('6:26')}: spec.activeDeadlineSeconds: expected integer >= 1, got 0"
    ]


FAILURE_POLICY = """  podFailurePolicy:
    rules:
      - action: FailJob
        onExitCodes: {containerName: reindex, operator: In, values: [VALUES]}
      - action: Ignore
        onPodConditions: [{type: DisruptionTarget, status: "True"}]
"""


def test_a_pod_failure_policy_is_valid_with_restart_policy_never() -> None:
    assert batch(FAILURE_POLICY.replace("VALUES", "42")) == []


def test_a_pod_failure_policy_requires_restart_policy_never() -> None:
    text = BATCH.replace(
        "spec:\n  template:", "spec:\n" + FAILURE_POLICY.replace("VALUES", "42") + "  template:"
    )
    text = text.replace("restartPolicy: Never", "restartPolicy: OnFailure")
    assert errors(validate(("jobs/reindex.yaml", text))) == [
        f"{BATCH_KEY.format('14:22')}: spec.template.spec.restartPolicy: "
        'expected "Never" (the only restartPolicy podFailurePolicy supports), got "OnFailure"'
    ]


def test_exit_codes_are_not_empty() -> None:
    assert batch(FAILURE_POLICY.replace("[VALUES]", "[]")) == [
        f"{BATCH_KEY.format('9:69')}: spec.podFailurePolicy.rules[0].onExitCodes.values: "
        "expected at least 1 item(s), got 0"
    ]


def test_exit_code_zero_is_not_a_failure_for_operator_in() -> None:
    assert batch(FAILURE_POLICY.replace("VALUES", "0, 3")) == [
        f"{BATCH_KEY.format('9:70')}: spec.podFailurePolicy.rules[0].onExitCodes.values[0]: "
        "must not be 0 for the In operator (exit code 0 is success, never a failure); "
        "expected a non-zero exit code"
    ]
    assert batch(FAILURE_POLICY.replace("operator: In", "operator: NotIn").replace("VALUES", "0")) == []


def test_a_rule_says_exit_codes_or_pod_conditions_and_fail_index_needs_a_backoff_per_index() -> None:
    spec = "  podFailurePolicy:\n    rules:\n      - action: FailIndex\n"
    assert batch(spec) == [
        f"{BATCH_KEY.format('8:9')}: spec.podFailurePolicy.rules[0]: "
        "expected one of onExitCodes or onPodConditions",
        f"{BATCH_KEY.format('8:17')}: spec.podFailurePolicy.rules[0].action: "
        '"FailIndex" requires spec.backoffLimitPerIndex to be set',
    ]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "  completionMode: Indexed\n  completions: 4\n  maxFailedIndexes: 1\n",
            "6:3: Job default/reindex: spec.backoffLimitPerIndex: required field is missing when "
            "maxFailedIndexes is set",
        ),
        (
            "  completionMode: Indexed\n  completions: 4\n  backoffLimitPerIndex: 1\n  maxFailedIndexes: 5\n",
            "9:21: Job default/reindex: spec.maxFailedIndexes: expected at most completions (4), got 5",
        ),
        (
            "  successPolicy: {rules: [{succeededCount: 1}]}\n",
            '6:18: Job default/reindex: spec.successPolicy: requires completionMode "Indexed" '
            '(this Job\'s is "NonIndexed", the default)',
        ),
        (
            "  completionMode: Indexed\n  completions: 4\n  successPolicy: {rules: [{}]}\n",
            "8:27: Job default/reindex: spec.successPolicy.rules[0]: expected at least one of "
            "succeededIndexes or succeededCount",
        ),
        (
            FAILURE_POLICY.replace("containerName: reindex", "containerName: main"),
            "9:38: Job default/reindex: spec.podFailurePolicy.rules[0].onExitCodes.containerName: expected "
            'the name of a container or init container of the pod template (reindex), got "main"',
        ),
        (
            FAILURE_POLICY.replace("VALUES", "3, 1"),
            "9:69: Job default/reindex: spec.podFailurePolicy.rules[0].onExitCodes.values: must be ordered: "
            "expected the exit codes in increasing order",
        ),
        (
            FAILURE_POLICY.replace("VALUES", "3, 3"),
            "9:73: Job default/reindex: spec.podFailurePolicy.rules[0].onExitCodes.values[1]: "
            "duplicate exit code 3",
        ),
        (
            FAILURE_POLICY + "  podReplacementPolicy: TerminatingOrFailed\n",
            '12:25: Job default/reindex: spec.podReplacementPolicy: expected "Failed" when podFailurePolicy '
            'is set, got "TerminatingOrFailed"',
        ),
        (
            "  podFailurePolicy:\n    rules:\n      - action: Ignore\n"
            "        onExitCodes: {operator: NotIn, values: [0]}\n"
            '        onPodConditions: [{type: DisruptionTarget, status: "True"}]\n',
            "8:9: Job default/reindex: spec.podFailurePolicy.rules[0]: expected onExitCodes or "
            "onPodConditions, not both",
        ),
        (
            "  manualSelector: true\n",
            "6:3: Job default/reindex: spec.selector: required field is missing when manualSelector is true",
        ),
    ],
)
def test_the_other_job_rules_kubernetes_enforces(spec: str, expected: str) -> None:
    assert batch(spec.replace("VALUES", "42")) == [f"jobs/reindex.yaml:{expected}"]


def test_a_job_without_name_or_generate_name_is_an_error() -> None:
    result = validate(("jobs/reindex.yaml", BATCH.replace("  name: reindex\n", "  labels: {app: reindex}\n")))
    assert errors(result) == [
        "jobs/reindex.yaml:4:3: metadata.name: required field is missing (or set generateName: a name prefix)"
    ]
    assert result.manifests == ()


def test_a_job_name_is_at_most_63_characters_as_its_pods_job_name_label() -> None:
    name = "reindex-" + "x" * 56
    result = validate(("jobs/reindex.yaml", BATCH.replace("  name: reindex\nspec", f"  name: {name}\nspec")))
    assert errors(result) == [
        f"jobs/reindex.yaml:4:9: Job default/{name}: metadata.name: expected at most 63 characters "
        "(the value of its pods' job-name label), got 64"
    ]


def test_a_hook_jobs_secret_must_be_in_the_source() -> None:
    result = check(JOB, HOOK.split("---", maxsplit=1)[0])
    job = next(m.key for m in result.manifests)
    assert errors(result) == [
        f"{JOB}:20:33: {job}: spec.template.spec.containers[0].envFrom[0].secretRef.name: "
        'Secret "shop-db" does not exist in namespace "default" (declare it, or set "optional: true")'
    ]


# --- CronJob ---------------------------------------------------------------------------------

SCHEDULE_HELP = (
    "expected a cron schedule of five fields (minute hour day-of-month month day-of-week, "
    'like "*/15 * * * *") or one of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly'
)


@pytest.mark.parametrize(
    ("schedule", "problem"),
    [
        ("61 2 * * *", "minute: 61 is outside 0-59"),
        ("30 2 * *", "expected exactly 5 fields, got 4"),
        ("0 30 2 * * *", "expected exactly 5 fields, got 6"),
        ("30 2 * * 7", "day of week: 7 is outside 0-6 (Sunday is 0)"),
        ("30 2 L * *", 'day of month: "L" is not a number'),
        ("*/0 2 * * *", 'minute: step "0" is not a positive number'),
        ("30 5-1 * * *", "hour: range 5-1 starts after it ends"),
        ("0 0 31 2 *", "it never fires: no chosen month has any of the chosen days"),
        ("@every 1h", "@every is not supported"),
        ("@nightly", 'unknown descriptor "@nightly"'),
        ("TZ=Europe/Paris 30 2 * * *", "cannot use TZ or CRON_TZ in schedule, use timeZone field instead"),
        ("CRON_TZ=UTC 30 2 * * *", "cannot use TZ or CRON_TZ in schedule, use timeZone field instead"),
    ],
)
def test_a_schedule_is_read_as_kubernetes_reads_it(schedule: str, problem: str) -> None:
    result = check(CRON_FILE, CRON.replace('"30 2 * * *"', f'"{schedule}"'))
    assert errors(result) == [
        f'{CRON_KEY.format("6:13")}: spec.schedule: {problem}; {SCHEDULE_HELP}, got "{schedule}"'
    ]


@pytest.mark.parametrize(
    "schedule",
    [
        *DESCRIPTORS,
        "*/15 * * * *",
        "0 9-17/2 * * MON-FRI",
        "0 0 1,15 jan,jul ?",
        "5/20 * * * *",
        "? * * * *",
        "0 0 29 2 *",
    ],
)
def test_kubernetes_schedules_are_accepted(schedule: str) -> None:
    assert schedule_problem(schedule) is None
    assert check(CRON_FILE, CRON.replace('"30 2 * * *"', f'"{schedule}"')).ok


@pytest.mark.parametrize(
    ("zone", "problem"),
    [
        ("Europe/Pariss", "unknown time zone"),
        ("Local", "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones"),
        ("../etc/passwd", "unknown time zone"),
    ],
)
def test_a_time_zone_is_an_iana_name(zone: str, problem: str) -> None:
    result = check(CRON_FILE, CRON.replace("timeZone: Europe/Paris", f"timeZone: {zone}"))
    assert errors(result) == [
        f"{CRON_KEY.format('7:13')}: spec.timeZone: {problem}; expected an IANA time zone name like "
        f'"Europe/Paris" or "Etc/UTC", got "{zone}"'
    ]


def test_a_cron_job_name_is_at_most_52_characters() -> None:
    name = "nightly-backup-" + "x" * 38
    result = check(CRON_FILE, CRON.replace("name: nightly-backup", f"name: {name}"))
    assert errors(result) == [
        f"{CRON_FILE}:4:9: CronJob default/{name}: metadata.name: expected at most 52 characters (its Jobs "
        "are named after it with an 11-character suffix, and a Job name has at most 63), got 53"
    ]


def test_a_cron_job_needs_a_schedule() -> None:
    result = check(CRON_FILE, CRON.replace('  schedule: "30 2 * * *"\n', ""))
    assert errors(result) == [f"{CRON_KEY.format('6:3')}: spec.schedule: required field is missing"]


def test_a_cron_jobs_host_path_is_held_to_the_servers_policy() -> None:
    text = CRON.replace("persistentVolumeClaim: {claimName: backups}", "hostPath: {path: /srv/backups}")
    assert errors(check(CRON_FILE, text)) == [
        f"{CRON_KEY.format('32:32')}: {POD}.volumes[0].hostPath.path: hostPath /srv/backups is not under a "
        "prefix this server allows (gitops serve --allow-host-path; allowed: none)"
    ]
    assert check(CRON_FILE, text, Policy(host_paths=("/srv",))).ok


def test_a_cron_jobs_references_are_checked_in_its_job_template() -> None:
    text = CRON.split("---", maxsplit=1)[0].replace(
        "          restartPolicy: OnFailure\n",
        "          restartPolicy: OnFailure\n          imagePullSecrets: [{name: registry}]\n",
    )
    result = check(CRON_FILE, text)
    assert errors(result) == [
        f"{CRON_KEY.format('28:37')}: {POD}.containers[0].envFrom[0].secretRef.name: "
        'Secret "shop-db" does not exist in namespace "default" (declare it, or set "optional: true")',
        f"{CRON_KEY.format('33:50')}: {POD}.volumes[0].persistentVolumeClaim.claimName: "
        'PersistentVolumeClaim "backups" does not exist in namespace "default" (declare it)',
    ]
    assert warnings(result) == [
        f'{CRON_KEY.format("22:37")}: {POD}.imagePullSecrets[0].name: Secret "registry" is not in the '
        "source: images are pulled without its credentials (warning)"
    ]


# --- HorizontalPodAutoscaler -----------------------------------------------------------------


def test_an_autoscaler_scales_only_the_kinds_gitops_scales() -> None:
    result = validate((STS, MYSQL), (HPA, AUTOSCALER.replace("kind: StatefulSet", "kind: DaemonSet")))
    assert errors(result) == [
        f'{HPA_KEY.format("5:47")}: spec.scaleTargetRef.kind: expected "Deployment", "StatefulSet", '
        '"ReplicaSet" or "ReplicationController" (the kinds gitops scales), got "DaemonSet"'
    ]


def test_an_autoscaler_does_not_scale_to_zero() -> None:
    result = validate((STS, MYSQL), (HPA, AUTOSCALER.replace("minReplicas: 3", "minReplicas: 0")))
    assert errors(result) == [
        f"{HPA_KEY.format('6:16')}: spec.minReplicas: "
        "expected an integer >= 1 (scaling to zero is not supported), got 0"
    ]


@pytest.mark.parametrize(
    ("metric", "kind"),
    [
        (
            "type: Pods\n      pods:\n        metric: {name: queue_depth}\n"
            "        target: {type: AverageValue, averageValue: 30}",
            "Pods",
        ),
        (
            "type: Object\n      object:\n        describedObject: {kind: Service, name: mysql}\n"
            "        metric: {name: requests}\n        target: {type: Value, value: 100}",
            "Object",
        ),
        (
            "type: External\n      external: {metric: {name: sqs_depth}, target: {type: Value, value: 30}}",
            "External",
        ),
    ],
)
def test_pods_object_and_external_metrics_are_warnings_since_gitops_does_not_compute_them(
    metric: str, kind: str
) -> None:
    text = AUTOSCALER + f"    - {metric}\n"
    result = validate((STS, MYSQL), (HPA, text))
    assert errors(result) == []
    assert warnings(result) == [
        f"{HPA_KEY.format('16:13')}: spec.metrics[2].type: not computed by gitops: only Resource and "
        f"ContainerResource cpu and memory metrics are; this {kind} metric is ignored (warning)"
    ]


def test_an_autoscaler_whose_target_is_not_in_the_source_is_a_warning() -> None:
    result = validate((HPA, AUTOSCALER))
    assert errors(result) == []
    assert warnings(result) == [
        f'{HPA_KEY.format("5:66")}: spec.scaleTargetRef.name: StatefulSet "mysql" is not in the source '
        'in namespace "default": this autoscaler scales nothing (warning)'
    ]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "apiVersion: apps/v1, kind: StatefulSet",
            "apiVersion: apps/v1beta1, kind: StatefulSet",
            '5:32: HorizontalPodAutoscaler default/mysql: spec.scaleTargetRef.apiVersion: expected "apps/v1" '
            'for StatefulSet, got "apps/v1beta1"',
        ),
        (
            "type: Utilization, averageUtilization: 70",
            "type: Value, value: 70",
            "10:44: HorizontalPodAutoscaler default/mysql: spec.metrics[0].resource.target.type: expected "
            '"Utilization" or "AverageValue" (a resource metric is averaged over the pods), got "Value"',
        ),
        (
            "type: Utilization, averageUtilization: 70",
            "type: Utilization",
            "10:37: HorizontalPodAutoscaler default/mysql: "
            "spec.metrics[0].resource.target.averageUtilization: required field is missing "
            'for type "Utilization"',
        ),
        (
            "      resource: {name: cpu,",
            "      containerResource: {name: cpu, container: mysql,",
            "9:7: HorizontalPodAutoscaler default/mysql: spec.metrics[0].resource: required field is missing "
            "for type Resource\n"
            "apps/hpa.yaml:10:7: HorizontalPodAutoscaler default/mysql: spec.metrics[0].containerResource: a "
            'field of another metric type: expected only "resource" for type Resource',
        ),
    ],
)
def test_an_autoscalers_target_and_metrics_are_as_kubernetes_requires(
    old: str, new: str, expected: str
) -> None:
    result = validate((STS, MYSQL), (HPA, AUTOSCALER.replace(old, new)))
    assert "\n".join(errors(result)) == f"{HPA}:{expected}"


def test_a_resource_metric_is_cpu_or_memory() -> None:
    result = validate((STS, MYSQL), (HPA, AUTOSCALER.replace("{name: cpu,", "{name: ephemeral-storage,")))
    assert errors(result) == [
        f'{HPA_KEY.format("10:24")}: spec.metrics[0].resource.name: expected "cpu" or "memory" '
        '(the resources gitops measures), got "ephemeral-storage"'
    ]


def test_job_fields_gitops_does_not_act_on_are_warnings_naming_the_field() -> None:
    job = """
apiVersion: batch/v1
kind: Job
metadata:
  name: shards
spec:
  completionMode: Indexed
  completions: 4
  backoffLimitPerIndex: 1
  podFailurePolicy:
    rules:
      - action: Ignore
        onPodConditions: [{type: DisruptionTarget, status: "True"}]
  template:
    spec:
      restartPolicy: Never
      containers: [{name: work, image: busybox}]
"""
    result = check("jobs/shards.yaml", job)
    assert errors(result) == []
    assert [w.split(": ", 3)[2:] for w in warnings(result)] == [
        [
            "spec.backoffLimitPerIndex",
            "not acted on: gitops counts failures against backoffLimit for the whole Job and completes "
            "it when every index succeeded (warning)",
        ],
        [
            "spec.podFailurePolicy.rules[0].onPodConditions",
            "matches nothing: gitops sets no pod conditions (an evicted or deleted pod is not counted as "
            "a failure at all) (warning)",
        ],
    ]
