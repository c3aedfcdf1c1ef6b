"""From a Deployment's pod template to the fully resolved `PodSpec` a node runs.

References are resolved here, once, so an agent never needs the manifests: env values from
ConfigMaps and Secrets, `envFrom`, and configMap/secret volumes turned into files. The
template hash is the hash of that resolved spec and the pod labels, so a change of a
ConfigMap value a pod uses changes its hash and replaces the pod, with the reason saying
which ConfigMap changed. The scheduling fields (affinity, topology spread, priority) are
resolved by `affinity`; a pod's priority comes from the PriorityClasses among the configs
(`configs_of` puts them there), and is set when the pod is made: the value and preemption
policy a class gives are not hashed (as in Kubernetes, a class that changes replaces no
pod), the class's name and a policy the template writes are.

Input is assumed valid (the schemas room has checked it); a reference that is still
missing here is one marked `optional: true`, and is skipped as Kubernetes does. A
PriorityClass that is missing is an error: Kubernetes would refuse the pod.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gitops.codec import encode
from gitops.keyed import digest, secret_data
from gitops.model import (
    Affinity,
    Container,
    ContainerPort,
    Hook,
    Manifest,
    MountedFile,
    ObjectKey,
    PodSpec,
    Probe,
    RegistryAuth,
    SecurityContext,
    Toleration,
    Volume,
    VolumeMount,
    content_hash,
    image_registry,
)
from gitops.planner.affinity import affinity_of, priority_of, topology_spread_of
from gitops.schemas.checks import normal_host_path
from gitops.schemas.kinds import default_priority_class
from gitops.schemas.quantity import parse_cpu, parse_memory

Configs = Mapping[ObjectKey, Manifest]


@dataclass(frozen=True)
class Template:
    """A Deployment's resolved pod template."""

    spec: PodSpec
    labels: tuple[tuple[str, str], ...]
    hash: str
    uses: tuple[ObjectKey, ...]  # ConfigMaps and Secrets the spec was resolved from


def config_values(obj: Manifest) -> dict[str, bytes]:
    """The key/value pairs of a ConfigMap or Secret, decoded to bytes."""
    if obj.key.kind == "Secret":
        return secret_data(obj.body)
    values: dict[str, bytes] = {}
    body = obj.body
    for key, value in (body.get("data") or {}).items():
        values[key] = str(value).encode()
    for key, value in (body.get("binaryData") or {}).items():
        values[key] = base64.b64decode(str(value))
    return values


def value_digest(obj: Manifest, key: str, value: bytes) -> str:
    """What a template hash takes for a value from `obj`: a Secret's keyed digest, else the value.

    A Secret the store or a preview has not sealed (a unit test's) still never puts its value
    into a hash: it is digested under a fixed, public key, and marked so.
    """
    sealed = obj.digests.get(key)
    return sealed if sealed is not None else "unsealed:" + digest(b"", value)


def _lookup(configs: Configs, kind: str, namespace: str, name: str) -> Manifest | None:
    return configs.get(ObjectKey(kind, namespace, name))


def _env(
    container: Mapping[str, Any],
    namespace: str,
    configs: Configs,
    uses: set[ObjectKey],
    hidden: dict[str, str],
) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    """The container's environment, and its downward API variables (name, field path) that
    the node fills in; `hidden` receives, per variable taken from a Secret, the digest the
    template hash uses instead of its value."""
    env: dict[str, str] = {}
    fields: dict[str, str] = {}

    def put(name: str, obj: Manifest, key: str, value: bytes) -> None:
        env[name] = value.decode(errors="replace")
        fields.pop(name, None)
        if obj.key.kind == "Secret":
            hidden[name] = value_digest(obj, key, value)
        else:
            hidden.pop(name, None)

    for source in container.get("envFrom") or []:
        prefix = str(source.get("prefix") or "")
        for kind, field in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            ref = source.get(field)
            if not ref:
                continue
            obj = _lookup(configs, kind, namespace, ref["name"])
            if obj is None:
                continue
            uses.add(obj.key)
            for key, value in config_values(obj).items():
                put(prefix + key, obj, key, value)
    for var in container.get("env") or []:
        name = str(var["name"])
        if "value" in var or "valueFrom" not in var:
            env[name] = "" if var.get("value") is None else str(var["value"])
            fields.pop(name, None)
            hidden.pop(name, None)
            continue
        value_from = var.get("valueFrom") or {}
        if "fieldRef" in value_from:
            env.pop(name, None)
            hidden.pop(name, None)
            fields[name] = str(value_from["fieldRef"]["fieldPath"])
            continue
        if "resourceFieldRef" in value_from:
            env[name] = resource_value(value_from["resourceFieldRef"], container)
            fields.pop(name, None)
            hidden.pop(name, None)
            continue
        for kind, field in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
            ref = value_from.get(field)
            if not ref:
                continue
            obj = _lookup(configs, kind, namespace, ref["name"])
            if obj is None:
                continue
            uses.add(obj.key)
            data = config_values(obj)
            if ref["key"] in data:
                put(name, obj, ref["key"], data[ref["key"]])
    return tuple(env.items()), tuple(fields.items())


def resource_value(ref: Mapping[str, Any], container: Mapping[str, Any]) -> str:
    """A `resourceFieldRef` value as kubelet gives it: the container's request or limit
    divided by `divisor`, rounded up. A limit that is not set is the request (kubelet gives
    the node's allocatable, which a template cannot know; the request is what the scheduler
    counted), and 0 without either."""
    resource = str(ref["resource"])
    section, _, name = resource.partition(".")
    resources = container.get("resources") or {}
    raw = _quantity(resources, section, name)
    if raw is None and section == "limits":
        raw = _quantity(resources, "requests", name)
    cpu = name == "cpu"
    parse = parse_cpu if cpu else parse_memory
    amount = parse(raw) if raw is not None else 0
    divisor = parse(ref["divisor"]) if ref.get("divisor") not in (None, "", 0, "0") else (1000 if cpu else 1)
    return str(-(-amount // max(divisor, 1)))


def _downward_files(
    volume: Mapping[str, Any], base: str, sub_path: str, containers: Mapping[str, Mapping[str, Any]]
) -> list[MountedFile]:
    """The files of a downwardAPI volume: values of the pod's own (filled in by the node,
    which knows its name and uid) or of a container's resources (known here)."""
    source = volume["downwardAPI"]
    mode = int(source.get("defaultMode", 0o644))
    files = []
    for item in source.get("items") or ():
        rel = str(item["path"])
        if sub_path and rel != sub_path:
            continue
        path = base if sub_path else posixpath.join(base, rel)
        file_mode = int(item.get("mode", mode))
        if "fieldRef" in item:
            files.append(MountedFile(path, b"", file_mode, field=str(item["fieldRef"]["fieldPath"])))
        elif "resourceFieldRef" in item:
            ref = item["resourceFieldRef"]
            container = containers.get(str(ref.get("containerName", ""))) or {}
            files.append(MountedFile(path, resource_value(ref, container).encode(), file_mode))
    return files


def _files(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    namespace: str,
    configs: Configs,
    *,
    uses: set[ObjectKey],
    hidden: dict[str, str],
) -> tuple[MountedFile, ...]:
    """Files of configMap, secret and downwardAPI volumes; `hidden` receives, per file from
    a Secret, the digest the template hash uses instead of its content."""
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    by_name = {
        str(c.get("name")): c for c in (*(pod.get("initContainers") or ()), *pod.get("containers", ()))
    }
    files: list[MountedFile] = []
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"])
        if volume is None:
            continue
        base = str(mount["mountPath"])
        sub_path = str(mount.get("subPath") or "")
        if "downwardAPI" in volume:
            files += _downward_files(volume, base, sub_path, by_name)
            continue
        if "configMap" in volume:
            source, kind, name = volume["configMap"], "ConfigMap", volume["configMap"].get("name")
        elif "secret" in volume:
            source, kind, name = volume["secret"], "Secret", volume["secret"].get("secretName")
        else:
            continue
        obj = _lookup(configs, kind, namespace, str(name))
        if obj is None:
            continue
        uses.add(obj.key)
        data = config_values(obj)
        secret = kind == "Secret"
        mode = int(source.get("defaultMode", 0o644))
        items = source.get("items")
        pairs = (
            [(str(i["key"]), str(i["path"]), int(i.get("mode", mode))) for i in items]
            if items
            else [(key, key, mode) for key in sorted(data)]
        )
        for key, rel, file_mode in pairs:
            if key not in data:
                continue
            if sub_path and rel != sub_path:
                continue
            path = base if sub_path else posixpath.join(base, rel)
            files.append(MountedFile(path, data[key], file_mode, secret=secret))
            if secret:
                hidden[path] = value_digest(obj, key, data[key])
    return tuple(sorted(files, key=lambda f: f.path))


def _mounts(pod: Mapping[str, Any], container: Mapping[str, Any]) -> tuple[VolumeMount, ...]:
    """The container's mounts of the pod's shared volumes (emptyDir, claims and host
    paths; a claim the pod mounts read-only is read-only in every mount)."""
    shared = {
        v["name"]: v
        for v in pod.get("volumes") or []
        if "emptyDir" in v or "persistentVolumeClaim" in v or "hostPath" in v
    }
    return tuple(
        VolumeMount(
            volume=str(m["name"]),
            path=str(m["mountPath"]),
            read_only=bool(m.get("readOnly", False))
            or bool((shared[m["name"]].get("persistentVolumeClaim") or {}).get("readOnly", False)),
            sub_path=str(m.get("subPath") or ""),
        )
        for m in container.get("volumeMounts") or []
        if m["name"] in shared
    )


def _volumes(pod: Mapping[str, Any], namespace: str) -> tuple[Volume, ...]:
    result = []
    for v in pod.get("volumes") or []:
        if "persistentVolumeClaim" in v:
            claim = str(v["persistentVolumeClaim"]["claimName"])
            result.append(Volume(name=str(v["name"]), claim=f"{namespace}/{claim}"))
            continue
        if "hostPath" in v:
            host = v["hostPath"]
            result.append(
                Volume(
                    name=str(v["name"]),
                    host_path=normal_host_path(str(host["path"])),
                    host_path_type=host.get("type") or "",
                )
            )
            continue
        if "emptyDir" not in v:
            continue
        empty = v["emptyDir"] or {}
        size = empty.get("sizeLimit")
        result.append(
            Volume(
                name=str(v["name"]),
                medium="Memory" if empty.get("medium") == "Memory" else "",
                size_limit_bytes=parse_memory(size) if size is not None else 0,
            )
        )
    return tuple(result)


def registry_auths(secret: Manifest) -> list[RegistryAuth]:
    """The registry credentials of a `kubernetes.io/dockerconfigjson` (or legacy
    `kubernetes.io/dockercfg`) Secret; entries it cannot read are left out."""
    data = config_values(secret)
    raw = data.get(".dockerconfigjson") or data.get(".dockercfg")
    try:
        parsed = json.loads(raw) if raw else {}
    except ValueError:
        return []
    entries = parsed.get("auths", parsed) if isinstance(parsed, dict) else {}
    result = []
    for server, entry in (entries if isinstance(entries, dict) else {}).items():
        if not isinstance(entry, dict):
            continue
        username, password = str(entry.get("username") or ""), str(entry.get("password") or "")
        if not username and entry.get("auth"):
            try:
                username, _, password = base64.b64decode(str(entry["auth"])).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                continue
        if username:
            host = str(server) if "://" in str(server) else str(server).rstrip("/") + "/image"
            result.append(RegistryAuth(image_registry(host), username, password))
    return result


def _pull_auths(pod: Mapping[str, Any], namespace: str, configs: Configs) -> tuple[RegistryAuth, ...]:
    auths: dict[str, RegistryAuth] = {}
    for ref in pod.get("imagePullSecrets") or ():
        secret = _lookup(configs, "Secret", namespace, str((ref or {}).get("name", "")))
        if secret is not None:
            for auth in registry_auths(secret):
                auths.setdefault(auth.registry, auth)  # the first secret naming a registry wins
    return tuple(auths.values())


def _security(pod: Mapping[str, Any], container: Mapping[str, Any]) -> SecurityContext:
    """The container's securityContext over the pod's (Kubernetes' precedence)."""
    pod_ctx = pod.get("securityContext") or {}
    own = container.get("securityContext") or {}

    def pick(name: str) -> Any:
        return own[name] if name in own else pod_ctx.get(name)

    groups = [int(g) for g in pod_ctx.get("supplementalGroups") or ()]
    if pod_ctx.get("fsGroup") is not None:
        groups.insert(0, int(pod_ctx["fsGroup"]))
    capabilities = own.get("capabilities") or {}
    seccomp = (pick("seccompProfile") or {}).get("type", "")
    user, group = pick("runAsUser"), pick("runAsGroup")
    return SecurityContext(
        run_as_user=int(user) if user is not None else None,
        run_as_group=int(group) if group is not None else None,
        run_as_non_root=bool(pick("runAsNonRoot")),
        supplemental_groups=tuple(dict.fromkeys(groups)),
        read_only_root_filesystem=bool(own.get("readOnlyRootFilesystem", False)),
        # Runtimes read capability names in any case (sock-shop drops "all").
        capabilities_add=tuple(str(c).upper() for c in capabilities.get("add") or ()),
        capabilities_drop=tuple(str(c).upper() for c in capabilities.get("drop") or ()),
        no_new_privileges=own.get("allowPrivilegeEscalation") is False,
        seccomp=seccomp if seccomp in ("RuntimeDefault", "Unconfined") else "",
        sysctls=tuple((str(s["name"]), str(s["value"])) for s in pod_ctx.get("sysctls") or ()),
        privileged=own.get("privileged") is True,
    )


def tolerations_of(pod: Mapping[str, Any]) -> tuple[Toleration, ...]:
    result = []
    for t in pod.get("tolerations") or []:
        result.append(
            Toleration(
                key=str(t.get("key") or ""),
                operator="Exists" if t.get("operator") == "Exists" else "Equal",
                value=str(t.get("value") or ""),
                effect=str(t.get("effect") or ""),
                toleration_seconds=int(t["tolerationSeconds"]) if "tolerationSeconds" in t else None,
            )
        )
    return tuple(result)


def _hook(raw: Mapping[str, Any] | None, ports: Sequence[ContainerPort]) -> Hook | None:
    """A lifecycle handler (exec, httpGet, sleep; Kubernetes' deprecated tcpSocket is
    refused by the schema)."""
    if not raw:
        return None
    if "exec" in raw:
        return Hook("exec", command=tuple(str(c) for c in raw["exec"]["command"]))
    if "sleep" in raw:
        return Hook("sleep", seconds=int(raw["sleep"]["seconds"]))
    if "httpGet" in raw:
        http = raw["httpGet"]
        port = http["port"]
        number = (
            int(port)
            if isinstance(port, int) or str(port).isdigit()
            else next((p.container_port for p in ports if p.name == port), 0)
        )
        return Hook(
            "httpGet",
            port=number,
            path=str(http.get("path", "/")),
            host=str(http.get("host", "")),
            scheme=str(http.get("scheme", "HTTP")),
            headers=tuple((str(h["name"]), str(h["value"])) for h in http.get("httpHeaders") or ()),
        )
    return None


def _probe(raw: Mapping[str, Any] | None, ports: Sequence[ContainerPort]) -> Probe | None:
    if not raw:
        return None

    def port_of(value: Any) -> int:
        if isinstance(value, int) or str(value).isdigit():
            return int(value)
        return next((p.container_port for p in ports if p.name == value), 0)

    base = Probe(
        "exec",
        initial_delay_seconds=int(raw.get("initialDelaySeconds", 0)),
        period_seconds=int(raw.get("periodSeconds", 10)),
        timeout_seconds=int(raw.get("timeoutSeconds", 1)),
        success_threshold=int(raw.get("successThreshold", 1)),
        failure_threshold=int(raw.get("failureThreshold", 3)),
    )
    if "exec" in raw:
        return dataclasses.replace(base, command=tuple(str(c) for c in raw["exec"]["command"]))
    if "httpGet" in raw:
        http = raw["httpGet"]
        return dataclasses.replace(
            base,
            handler="httpGet",
            port=port_of(http["port"]),
            path=str(http.get("path", "/")),
            host=str(http.get("host", "")),
            scheme=str(http.get("scheme", "HTTP")),
            headers=tuple((str(h["name"]), str(h["value"])) for h in http.get("httpHeaders") or ()),
        )
    if "tcpSocket" in raw:
        tcp = raw["tcpSocket"]
        return dataclasses.replace(
            base, handler="tcpSocket", port=port_of(tcp["port"]), host=str(tcp.get("host", ""))
        )
    if "grpc" in raw:
        grpc = raw["grpc"]
        return dataclasses.replace(
            base, handler="grpc", port=int(grpc["port"]), service=str(grpc.get("service") or "")
        )
    return None


def _quantity(resources: Mapping[str, Any], section: str, name: str) -> str | int | None:
    values = resources.get(section) or {}
    value: str | int | None = values.get(name)
    return value


PriorityClasses = tuple[Mapping[str, Mapping[str, Any]], str]
"""PriorityClass bodies by name, and the name of the global default class ("" for none)."""


def _priority_classes(configs: Configs) -> PriorityClasses:
    classes = {
        key.name: manifest.body for key, manifest in sorted(configs.items()) if key.kind == "PriorityClass"
    }
    return classes, default_priority_class(classes)


class ConfigIndex(dict[ObjectKey, Manifest]):
    """ConfigMaps, Secrets and PriorityClasses by key, with a fingerprint of their content
    hashes, so that a resolved template can be reused while neither the Deployment nor any
    config changed."""

    _fingerprint: str | None = None
    _classes: PriorityClasses | None = None

    @property
    def priority_classes(self) -> PriorityClasses:
        """The PriorityClasses among the configs, found once."""
        if self._classes is None:
            self._classes = _priority_classes(self)
        return self._classes

    @property
    def fingerprint(self) -> str:
        """Empty when some config has no content hash (then nothing is reused)."""
        if self._fingerprint is None:
            pairs = sorted((str(k), m.hash) for k, m in self.items())
            self._fingerprint = "" if any(not h for _, h in pairs) else content_hash(pairs)
        return self._fingerprint


_TEMPLATES: dict[tuple[ObjectKey, str, str], Template] = {}
_TEMPLATES_MAX = 50_000


def resolve_template(deployment: Manifest, configs: Configs) -> Template:
    """Resolve a Deployment's pod template against the ConfigMaps and Secrets it uses.

    Results are memoised by the Deployment's content hash and the configs' fingerprint (a
    pure function of both); a control pass and a preview resolve each template many times.
    """
    fingerprint = configs.fingerprint if isinstance(configs, ConfigIndex) else ""
    if not (deployment.hash and fingerprint):
        return _resolve(deployment, configs)
    key = (deployment.key, deployment.hash, fingerprint)
    template = _TEMPLATES.get(key)
    if template is None:
        if len(_TEMPLATES) >= _TEMPLATES_MAX:
            _TEMPLATES.clear()
        template = _TEMPLATES[key] = _resolve(deployment, configs)
    return template


def _container(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    namespace: str,
    configs: Configs,
    uses: set[ObjectKey],
    hidden_files: dict[str, str],
) -> tuple[Container, dict[str, str]]:
    """One container resolved, with the digests its Secret-valued variables hash as."""
    resources = container.get("resources") or {}
    limits = resources.get("limits") or {}
    requests = resources.get("requests") or {}
    cpu_limit = parse_cpu(limits["cpu"]) if "cpu" in limits else None
    memory_limit = parse_memory(limits["memory"]) if "memory" in limits else None
    # Kubernetes defaults a missing request to the limit.
    cpu_request = parse_cpu(requests["cpu"]) if "cpu" in requests else (cpu_limit or 0)
    memory_request = parse_memory(requests["memory"]) if "memory" in requests else (memory_limit or 0)
    image = str(container.get("image", ""))
    default_policy = (
        "Always"
        if image.endswith(":latest") or ":" not in image.rsplit("/", maxsplit=1)[-1]
        else "IfNotPresent"
    )
    ports = tuple(
        ContainerPort(
            container_port=int(p["containerPort"]),
            protocol=str(p.get("protocol", "TCP")),
            name=str(p.get("name", "")),
            host_port=int(p.get("hostPort", 0)),
        )
        for p in container.get("ports") or ()
    )
    hidden_env: dict[str, str] = {}
    env, field_env = _env(container, namespace, configs, uses, hidden_env)
    resolved = Container(
        name=str(container.get("name", "main")),
        image=image,
        command=tuple(str(c) for c in container.get("command") or ()),
        args=tuple(str(a) for a in container.get("args") or ()),
        env=env,
        ports=ports,
        files=_files(pod, container, namespace, configs, uses=uses, hidden=hidden_files),
        working_dir=str(container.get("workingDir", "")),
        image_pull_policy=container.get("imagePullPolicy", default_policy),
        cpu_request_milli=cpu_request,
        memory_request_bytes=memory_request,
        cpu_limit_milli=cpu_limit,
        memory_limit_bytes=memory_limit,
        readiness_probe=_probe(container.get("readinessProbe"), ports),
        liveness_probe=_probe(container.get("livenessProbe"), ports),
        startup_probe=_probe(container.get("startupProbe"), ports),
        secret_env=tuple(name for name, _ in env if name in hidden_env),
        mounts=_mounts(pod, container),
        field_env=field_env,
        security=_security(pod, container),
        restart_policy="Always" if container.get("restartPolicy") == "Always" else "",
        termination_message_path=str(container.get("terminationMessagePath") or "/dev/termination-log"),
        termination_message_policy=container.get("terminationMessagePolicy", "File"),
        post_start=_hook((container.get("lifecycle") or {}).get("postStart"), ports),
        pre_stop=_hook((container.get("lifecycle") or {}).get("preStop"), ports),
    )
    return resolved, hidden_env


def pod_template(workload: Manifest) -> Mapping[str, Any]:
    """A workload's pod template (`spec.template`). A StatefulSet's `volumeClaimTemplates`
    are volumes of it, each a claim named `<template>-<set>` here (each pod's own claim,
    `<template>-<set>-<ordinal>`, is set by the StatefulSet's planner)."""
    template = workload.spec.get("template") or {}
    if workload.key.kind != "StatefulSet":
        return template
    pod = dict(template.get("spec") or {})
    declared = {v.get("name") for v in pod.get("volumes") or []}
    claims = [
        {"name": name, "persistentVolumeClaim": {"claimName": f"{name}-{workload.key.name}"}}
        for t in workload.spec.get("volumeClaimTemplates") or []
        if (name := (t.get("metadata") or {}).get("name")) and name not in declared
    ]
    if not claims:
        return template
    return {**template, "spec": {**pod, "volumes": [*(pod.get("volumes") or []), *claims]}}


def _resolve(deployment: Manifest, configs: Configs) -> Template:
    namespace = deployment.key.namespace
    template = pod_template(deployment)
    pod = template.get("spec") or {}
    uses: set[ObjectKey] = set()
    hidden_env: dict[str, dict[str, str]] = {}
    hidden_files: dict[str, str] = {}

    def resolve(raw: Sequence[Mapping[str, Any]]) -> tuple[Container, ...]:
        result = []
        for item in raw:
            container, hidden = _container(
                pod, item, namespace=namespace, configs=configs, uses=uses, hidden_files=hidden_files
            )
            hidden_env[container.name] = hidden
            result.append(container)
        return tuple(result)

    containers = resolve(pod.get("containers") or [{}])
    init_containers = resolve(pod.get("initContainers") or ())
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    wants_annotations = any(
        path.startswith("metadata.annotations")
        for c in (*init_containers, *containers)
        for path in (*(p for _, p in c.field_env), *(f.field for f in c.files))
    )
    labels = tuple(
        sorted((str(k), str(v)) for k, v in ((template.get("metadata") or {}).get("labels") or {}).items())
    )
    label_map = dict(labels)
    classes, default_class = (
        configs.priority_classes if isinstance(configs, ConfigIndex) else _priority_classes(configs)
    )
    priority = priority_of(pod, classes, default_class)
    spec = PodSpec(
        containers=containers,
        init_containers=init_containers,
        volumes=_volumes(pod, namespace),
        restart_policy=pod.get("restartPolicy", "Always"),
        node_selector=tuple(sorted((str(k), str(v)) for k, v in (pod.get("nodeSelector") or {}).items())),
        tolerations=tolerations_of(pod),
        termination_grace_period_seconds=int(pod.get("terminationGracePeriodSeconds", 30)),
        hostname=str(pod.get("hostname", "")),
        subdomain=str(pod.get("subdomain", "")),
        dns_policy=pod.get("dnsPolicy", "ClusterFirst"),
        dns_nameservers=tuple(str(s) for s in (pod.get("dnsConfig") or {}).get("nameservers") or ()),
        dns_searches=tuple(str(s) for s in (pod.get("dnsConfig") or {}).get("searches") or ()),
        dns_options=tuple(
            (str(o.get("name", "")), str(o.get("value", "")))
            for o in (pod.get("dnsConfig") or {}).get("options") or ()
        ),
        enable_service_links=bool(pod.get("enableServiceLinks", True)),
        service_account_name=str(pod.get("serviceAccountName") or pod.get("serviceAccount") or ""),
        host_pid=pod.get("hostPID") is True,
        host_ipc=pod.get("hostIPC") is True,
        annotations=tuple(sorted((str(k), str(v)) for k, v in annotations.items()))
        if wants_annotations
        else (),
        pull_auths=_pull_auths(pod, namespace, configs),
        node_name=str(pod.get("nodeName") or ""),
        affinity=affinity_of(pod, namespace=namespace, labels=label_map),
        topology_spread=topology_spread_of(pod, labels=label_map),
        priority=priority.value,
        priority_class_name=str(pod.get("priorityClassName") or ""),
        preemption_policy=priority.preemption_policy,
    )
    # What the template writes is hashed, not what its class gives (see the module docstring).
    written = dataclasses.replace(
        spec, preemption_policy="Never" if pod.get("preemptionPolicy") == "Never" else "PreemptLowerPriority"
    )
    hashed = content_hash({"spec": hash_input(written, hidden_env, hidden_files), "labels": labels})[:10]
    return Template(spec=spec, labels=labels, hash=hashed, uses=tuple(sorted(uses)))


# Fields added after release 0.1 with their defaults: left out of the hash while unset.
UNHASHED_DEFAULTS: dict[str, Any] = {
    "hostname": "",
    "subdomain": "",
    "dns_policy": "ClusterFirst",
    "dns_nameservers": [],
    "dns_searches": [],
    "dns_options": [],
    "enable_service_links": True,
    "init_containers": [],
    "volumes": [],
    "service_account_name": "",
    "host_pid": False,
    "host_ipc": False,
    "annotations": [],
    "node_name": "",
    "affinity": encode(Affinity()),
    "topology_spread": [],
    "priority_class_name": "",
    "preemption_policy": "PreemptLowerPriority",
}
UNHASHED_CONTAINER_DEFAULTS: dict[str, Any] = {
    "termination_message_path": "/dev/termination-log",
    "termination_message_policy": "File",
    "post_start": None,
    "pre_stop": None,
    "mounts": [],
    "field_env": [],
    "security": encode(SecurityContext()),
    "restart_policy": "",
}
UNHASHED_PROBE_DEFAULTS: dict[str, Any] = {
    "service": "",
}
UNHASHED_VOLUME_DEFAULTS: dict[str, Any] = {
    "claim": "",
    "host_path": "",
    "host_path_type": "",
}
_PROBES = ("readiness_probe", "liveness_probe", "startup_probe")


def _hash_container(
    data: dict[str, Any], hidden_env: Mapping[str, str], hidden_files: Mapping[str, str]
) -> None:
    """A container's encoded form as its hash covers it (in place)."""
    if not data["secret_env"]:
        del data["secret_env"]
    for name, default in UNHASHED_CONTAINER_DEFAULTS.items():
        if data[name] == default:
            del data[name]
    for probe in (data[kind] for kind in _PROBES if data[kind] is not None):
        for name, default in UNHASHED_PROBE_DEFAULTS.items():
            if probe[name] == default:
                del probe[name]
    for port in data["ports"]:
        if not port["host_port"]:
            del port["host_port"]
    data["env"] = [[k, "secret:" + hidden_env[k]] if k in hidden_env else [k, v] for k, v in data["env"]]
    files = [{k: v for k, v in f.items() if k != "field" or v} for f in data["files"]]
    data["files"] = [
        {**f, "content": "secret:" + hidden_files[f["path"]]}
        if f["secret"]
        else {k: v for k, v in f.items() if k != "secret"}
        for f in files
    ]


def hash_input(
    spec: PodSpec, hidden_env: Mapping[str, Mapping[str, str]], hidden_files: Mapping[str, str]
) -> Any:
    """What a template hash covers: the encoded spec with every Secret value replaced by its
    digest (`hidden_env` per container name). Fields added after release 0.1 are left out
    while unset, and the first container's fields sit on the spec as they did when pods had
    one container, so that upgrading does not change the hash (and replace the pods) of a
    template that does not use what is new."""
    data = encode(spec)
    del data["pull_auths"]  # credentials: a rotated one replaces no pod
    # The number a PriorityClass stands for: the class's name is hashed, and a class whose
    # value changes replaces no pod (Kubernetes sets priority when a pod is created).
    del data["priority"]
    containers = data.pop("containers")
    for c, raw in zip(spec.all_containers, [*data["init_containers"], *containers], strict=True):
        _hash_container(raw, hidden_env.get(c.name, {}), hidden_files)
    first = containers[0]
    data.update({k: v for k, v in first.items() if k not in ("name",)})
    data["container_name"] = first["name"]
    if len(containers) > 1:
        data["more_containers"] = containers[1:]
    for volume in data["volumes"]:
        for name, default in UNHASHED_VOLUME_DEFAULTS.items():
            if volume[name] == default:
                del volume[name]
    for name, default in UNHASHED_DEFAULTS.items():
        if data[name] == default:
            del data[name]
    return data


def _container_changes(before: Container, after: Container) -> list[str]:
    changes: list[str] = []
    for f in dataclasses.fields(Container):
        old, new = getattr(before, f.name), getattr(after, f.name)
        if old == new:
            continue
        if f.name == "env":
            b, a = dict(old), dict(new)
            names = sorted(k for k in set(b) | set(a) if b.get(k) != a.get(k))
            changes.append("env " + ", ".join(names) + " changed")
        elif f.name == "files":
            b_files = {m.path: m for m in old}
            a_files = {m.path: m for m in new}
            paths = sorted(p for p in set(b_files) | set(a_files) if b_files.get(p) != a_files.get(p))
            changes.append("files " + ", ".join(paths) + " changed")
        elif f.name in ("image", "working_dir", "image_pull_policy"):
            changes.append(f"{f.name.replace('_', ' ')} changed: {old} -> {new}")
        elif f.name in ("command", "args"):
            changes.append(f"{f.name} changed: {list(old)} -> {list(new)}")
        elif f.name != "name":
            changes.append(f"{f.name.replace('_', ' ')} changed")
    return changes


def _containers_changes(
    before: Sequence[Container], after: Sequence[Container], what: str, *, prefix: bool
) -> list[str]:
    """Changes of one list of containers, by name; `prefix` names the container in each."""
    old = {c.name: c for c in before}
    new = {c.name: c for c in after}
    changes = [f"{what} {name} removed" for name in old if name not in new]
    for name, container in new.items():
        if name not in old:
            changes.append(f"{what} {name} added")
            continue
        found = _container_changes(old[name], container)
        changes += [f"{what} {name}: {c}" for c in found] if prefix else found
    if [c.name for c in before if c.name in new] != [c.name for c in after if c.name in old]:
        changes.append(f"{what}s reordered")
    return changes


def describe_change(
    old: PodSpec,
    new: PodSpec,
    new_uses: Sequence[ObjectKey] = (),
    *,
    labels_changed: bool = True,
) -> str:
    """A short human-readable cause for replacing a pod running `old` with `new`.

    Values from Secrets are never shown: env and files only name what changed. A pod of one
    container (the same on both sides) reads as it did before pods had several: `image
    changed: web:1 -> web:2`; otherwise each change names its container. When the specs read
    the same, the change is in the labels, or in a Secret value the caller could not see (a
    preview on a snapshot, which has no Secret values).
    """
    changes: list[str] = []
    for f in dataclasses.fields(PodSpec):
        before, after = getattr(old, f.name), getattr(new, f.name)
        if before == after or f.name in ("containers", "init_containers"):
            continue
        if f.name == "restart_policy":
            changes.append(f"restart policy changed: {before} -> {after}")
        else:
            changes.append(f"{f.name.replace('_', ' ')} changed")
    single = len(old.containers) == len(new.containers) == 1 and old.main.name == new.main.name
    changes += _containers_changes(old.init_containers, new.init_containers, "init container", prefix=True)
    changes += _containers_changes(old.containers, new.containers, "container", prefix=not single)
    if not changes:
        secrets = [str(k) for k in new_uses if k.kind == "Secret"]
        if labels_changed or not secrets:
            changes.append("pod labels changed")
        else:
            return "a Secret value changed (uses " + ", ".join(secrets) + ")"
    text = "; ".join(changes)
    if new_uses and any(c.startswith(("env", "files")) or ": env " in c or ": files " in c for c in changes):
        text += " (uses " + ", ".join(str(k) for k in new_uses) + ")"
    return text
