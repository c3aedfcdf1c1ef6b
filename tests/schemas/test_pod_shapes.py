"""Pods as real apps write them validate: several containers, init containers and
sidecars, shared volumes, the downward API, security settings; what gitops refuses says
where and why."""

from __future__ import annotations

from gitops.schemas.validate import Policy, validate_files

from .helpers import errors, source, validate, validate_one, warnings

APP = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
spec:
  selector:
    matchLabels: {app: shop}
  template:
    metadata:
      labels: {app: shop}
      annotations: {team: payments}
    spec:
      serviceAccountName: shop
      securityContext:
        runAsUser: 1000
        runAsGroup: 3000
        fsGroup: 2000
        runAsNonRoot: true
        seccompProfile: {type: RuntimeDefault}
        sysctls:
          - {name: net.ipv4.ip_unprivileged_port_start, value: "0"}
      initContainers:
        - name: fetch
          image: busybox:1
          command: [sh, -c, "echo hi > /work/index.html"]
          volumeMounts: [{name: work, mountPath: /work}]
        - name: log-shipper
          image: busybox:1
          restartPolicy: Always
          volumeMounts: [{name: work, mountPath: /logs, readOnly: true}]
      containers:
        - name: web
          image: nginx:1.25
          env:
            - name: POD_IP
              valueFrom: {fieldRef: {fieldPath: status.podIP}}
            - name: TEAM
              valueFrom: {fieldRef: {fieldPath: "metadata.annotations['team']"}}
            - name: MEMORY
              valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}
          resources:
            limits: {memory: 64Mi, cpu: 500m}
          securityContext:
            readOnlyRootFilesystem: true
            allowPrivilegeEscalation: false
            capabilities: {drop: [all], add: [NET_BIND_SERVICE]}  # any case, as sock-shop writes it
          volumeMounts:
            - {name: work, mountPath: /usr/share/nginx/html, subPath: site}
            - {name: cache, mountPath: /var/cache/nginx}
            - {name: info, mountPath: /etc/podinfo}
        - name: metrics
          image: busybox:1
      volumes:
        - name: work
          emptyDir: {}
        - name: cache
          emptyDir: {medium: Memory, sizeLimit: 16Mi}
        - name: info
          downwardAPI:
            items:
              - {path: labels, fieldRef: {fieldPath: metadata.labels}}
              - {path: mem, resourceFieldRef: {containerName: web, resource: limits.memory}}
"""


def test_a_pod_of_several_containers_with_volumes_downward_api_and_security_validates_cleanly() -> None:
    result = validate_one(APP)
    assert errors(result) == []
    assert warnings(result) == []


def test_duplicate_container_names_across_init_and_app_containers_are_an_error() -> None:
    text = APP.replace("- name: metrics", "- name: fetch")
    assert any(
        'spec.template.spec.containers[1].name: duplicate container name "fetch"' in e
        and "spec.template.spec.initContainers[0]" in e
        for e in errors(validate_one(text))
    )


def test_only_init_containers_may_set_a_restart_policy() -> None:
    text = APP.replace(
        "        - name: metrics\n          image: busybox:1\n",
        "        - name: metrics\n          image: busybox:1\n          restartPolicy: Always\n",
    )
    (error,) = errors(validate_one(text))
    assert "apps/web.yaml:" in error
    assert (
        "spec.template.spec.containers[1].restartPolicy: only init containers may set restartPolicy" in error
    )


def test_privileged_containers_and_host_namespaces_are_refused_unless_the_server_allows_them() -> None:
    text = APP.replace(
        "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: true\n            privileged: true"
    )
    text = text.replace("serviceAccountName: shop", "serviceAccountName: shop\n      hostPID: true")
    found = errors(validate_one(text))
    assert len(found) == 2
    assert any(
        "spec.template.spec.hostPID: the host's namespaces are refused unless the server allows them "
        "(gitops serve --allow-privileged), got true" in e
        for e in found
    )
    assert any(
        "spec.template.spec.containers[0].securityContext.privileged: privileged containers are refused "
        "unless the server allows them (gitops serve --allow-privileged), got true" in e
        for e in found
    )
    allowed = validate_files([source("apps/web.yaml", text)], policy=Policy(privileged=True))
    assert allowed.errors == ()
    # The host's network never is: a pod's address is on the pod network.
    hosted = text.replace("hostPID: true", "hostNetwork: true")
    (error,) = validate_files([source("apps/web.yaml", hosted)], policy=Policy(privileged=True)).errors
    assert "spec.template.spec.hostNetwork: host namespaces are refused" in str(error)


def test_an_unknown_downward_api_field_is_an_error_listing_the_known_ones() -> None:
    text = APP.replace("fieldPath: status.podIP", "fieldPath: status.phase")
    (error,) = errors(validate_one(text))
    assert "containers[0].env[0].valueFrom.fieldRef.fieldPath: expected one of metadata.name" in error
    assert 'got "status.phase"' in error


def test_a_bad_emptydir_size_limit_is_an_error_at_its_line() -> None:
    text = APP.replace("sizeLimit: 16Mi", "sizeLimit: lots")
    found = errors(validate_one(text))
    assert found and all("volumes[1].emptyDir.sizeLimit" in e for e in found)
    assert found[0].startswith("apps/web.yaml:")


def test_a_volume_with_two_sources_is_an_error() -> None:
    text = APP.replace(
        "          emptyDir: {}\n", "          emptyDir: {}\n          configMap: {name: x}\n", 1
    )
    assert any(
        'volumes[0]: expected exactly one volume source, got "configMap", "emptyDir"' in e
        for e in errors(validate_one(text))
    )


CLAIMED = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: db
spec:
  selector:
    matchLabels: {app: db}
  template:
    metadata:
      labels: {app: db}
    spec:
      containers:
        - name: db
          image: postgres:16
          volumeMounts: [{name: data, mountPath: /var/lib/postgresql/data}]
      volumes:
        - name: data
          persistentVolumeClaim: {claimName: db-data}
"""
CLAIM = """
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: db-data
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
"""


def test_a_volume_of_a_claim_needs_the_claim_in_the_source() -> None:
    assert errors(validate_one(CLAIMED)) == [
        "apps/web.yaml:18:46: Deployment default/db: "
        "spec.template.spec.volumes[0].persistentVolumeClaim.claimName: "
        'PersistentVolumeClaim "db-data" does not exist in namespace "default" (declare it)'
    ]
    result = validate(("apps/db.yaml", CLAIMED), ("apps/claim.yaml", CLAIM))
    assert errors(result) == [] and warnings(result) == []


def test_lifecycle_hooks_validate_and_a_hook_needs_exactly_one_handler() -> None:
    hooks = (
        "          lifecycle:\n"
        "            postStart: {exec: {command: [sh, -c, warm]}}\n"
        "            preStop: {sleep: {seconds: 5}}\n"
    )
    text = APP.replace(
        "        - name: metrics\n          image: busybox:1\n",
        "        - name: metrics\n          image: busybox:1\n" + hooks,
    )
    result = validate_one(text)
    assert errors(result) == [] and warnings(result) == []
    both = text.replace(
        "preStop: {sleep: {seconds: 5}}", "preStop: {sleep: {seconds: 5}, exec: {command: [x]}}"
    )
    (error,) = errors(validate_one(both))
    assert "containers[1].lifecycle.preStop: expected exactly one of exec, httpGet or sleep" in error
    legacy = text.replace("preStop: {sleep: {seconds: 5}}", "preStop: {tcpSocket: {port: 80}}")
    assert [w.split(": ", 2)[2] for w in warnings(validate_one(legacy))] == [
        "spec.template.spec.containers[1].lifecycle.preStop.tcpSocket: "
        "field is not acted on by gitops and is ignored (warning)"
    ]


def test_a_pull_secret_not_in_the_source_is_a_warning() -> None:
    text = APP.replace(
        "      serviceAccountName: shop\n",
        "      serviceAccountName: shop\n      imagePullSecrets: [{name: regcred}]\n",
    )
    result = validate_one(text)
    assert errors(result) == []
    (warning,) = warnings(result)
    assert warning.endswith(
        'spec.template.spec.imagePullSecrets[0].name: Secret "regcred" is not in the source: '
        "images are pulled without its credentials (warning)"
    )
