"""Source files in, validated desired objects and diagnostics out.

`validate_files` loads every document (`loader`), identifies its kind and apiVersion,
checks it against its kind's JSON Schema (`schema`) and the rules a schema cannot state
(`checks`; `kinds` for the kinds gitops only stores, each of whose objects also gets one
warning saying so), then checks the objects against each other: duplicates, undeclared
namespaces, more than one PriorityClass with globalDefault; in the pod template of every
workload (Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job,
CronJob), references to missing ConfigMaps, Secrets, keys, PersistentVolumeClaims and
PriorityClasses, a `priority` other than its class's, and imagePullSecrets not in the
source; a
StatefulSet's serviceName that is not a headless Service (a warning: its pods get no DNS
names); an autoscaler's target missing from the source (a warning); two Services taking one
port on the nodes (node ports, LoadBalancer ports). Every object that could be identified
comes out as a `Manifest`, errors or not; the caller decides what to do with a result that
is not `ok`.

A Job may be written with `metadata.generateName` and no name, as Argo CD's hook Jobs are.
Kubernetes would add 5 random characters; gitops adds 5 characters derived from the content
hash of the parsed document (from Kubernetes' alphabet for generated names, `generated_name`),
so the name stays the same from sync to sync while the Job is unchanged and is a new one when
it changes, which makes a new Job run. The name is in the object's key (`Manifest.key.name`);
the body stays as written.

A `Policy` says what the server's operator allows beyond Kubernetes' rules (the folders
hostPath volumes may use); every caller validating for a server passes that server's, so a
sync, a push hook and a preview judge a revision alike. The default allows nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gitops.model import (
    API_VERSIONS,
    CLUSTER_SCOPED,
    KINDS,
    NAMESPACED_KINDS,
    Diagnostic,
    Manifest,
    ObjectKey,
    SourceLocation,
    content_hash,
)

from .checks import (
    DEFAULT_POLICY,
    WORKLOAD_KINDS,
    NodePortClaim,
    Policy,
    check_document,
    is_subdomain,
    node_port_claims,
    pod_spec,
)
from .kinds import (
    BUILTIN_PRIORITY_CLASSES,
    INERT_KINDS,
    SCALABLE_KINDS,
    STORED_KINDS,
    check_stored,
    not_acted_on,
    pod_priority,
)
from .loader import Document, FieldPath, SourceFile, format_path, load_file
from .schema import describe_value, schema_findings

__all__ = ["DEFAULT_POLICY", "Policy", "ValidationResult", "generated_name", "validate_files"]

_KIND_LIST = ", ".join(sorted(KINDS))


@dataclass(frozen=True)
class ValidationResult:
    manifests: tuple[Manifest, ...]
    """Every object that could be identified, sorted by key, whether or not it has errors."""
    errors: tuple[Diagnostic, ...]
    warnings: tuple[Diagnostic, ...]

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class _Object:
    document: Document
    key: ObjectKey
    api_version: str
    body: Mapping[str, Any]


class _Report:
    def __init__(self) -> None:
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []

    def add(
        self,
        document: Document,
        path: FieldPath,
        message: str,
        key: ObjectKey | None,
        *,
        at_key: bool = False,
        warning: bool = False,
    ) -> None:
        diagnostic = Diagnostic(
            "warning" if warning else "error",
            message,
            document.location(path, key=at_key),
            key,
            format_path(path),
        )
        (self.warnings if warning else self.errors).append(diagnostic)


# The namespaces every Kubernetes cluster has: manifests use them without declaring them.
BUILTIN_NAMESPACES = frozenset({"default", "kube-system", "kube-public", "kube-node-lease"})


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _identify(document: Document, report: _Report) -> tuple[str, ObjectKey | None] | None:
    """The kind of a document and its key (None without a usable name), or None if unknown."""
    body = document.body
    if not isinstance(body, Mapping):
        report.add(
            document,
            (),
            f"expected a mapping with apiVersion, kind, metadata and spec, got {describe_value(body)}",
            None,
        )
        return None
    kind, api_version = body.get("kind"), body.get("apiVersion")
    if kind is None:
        report.add(document, ("kind",), f"required field is missing; expected one of {_KIND_LIST}", None)
        return None
    if not isinstance(kind, str) or kind not in KINDS:
        report.add(
            document, ("kind",), f"unknown kind {describe_value(kind)}; expected one of {_KIND_LIST}", None
        )
        return None
    expected = API_VERSIONS[kind]
    metadata = _map(body.get("metadata"))
    name, namespace = metadata.get("name"), metadata.get("namespace")
    prefix = metadata.get("generateName")
    if kind == "Job" and not name and isinstance(prefix, str) and prefix:
        name = generated_name(prefix, body)
    key = None
    if isinstance(name, str) and name:
        if kind in CLUSTER_SCOPED:
            namespace = ""
        elif not isinstance(namespace, str) or not namespace:
            namespace = "default"
        key = ObjectKey(kind, namespace, name)
    if api_version is None:
        report.add(
            document, ("apiVersion",), f'required field is missing; expected "{expected}" for {kind}', key
        )
        return None
    if api_version != expected:
        report.add(
            document,
            ("apiVersion",),
            f'expected "{expected}" for {kind}, got {describe_value(api_version)}',
            key,
        )
        return None
    return kind, key


# The characters Kubernetes draws a generated name's suffix from (no vowels: no words).
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_SUFFIX_LENGTH = 5
_MAX_NAME = 63


def generated_name(prefix: str, body: Mapping[str, Any]) -> str:
    """The name of an object written with `generateName: prefix` and no name: the prefix
    (cut as Kubernetes cuts it) and 5 characters derived from the body's content hash."""
    number = int(content_hash(body), 16)
    suffix = ""
    for _ in range(_SUFFIX_LENGTH):
        number, index = divmod(number, len(_SUFFIX_ALPHABET))
        suffix += _SUFFIX_ALPHABET[index]
    return prefix[: _MAX_NAME - _SUFFIX_LENGTH] + suffix


def _hide_secret_value(kind: str, body: Mapping[str, Any], path: FieldPath, message: str) -> str:
    """A message about a Secret's data that does not repeat the value: a rejected revision is
    stored, shown and logged, and a Secret value must never be."""
    if kind != "Secret" or len(path) < 2 or path[0] not in ("data", "stringData"):
        return message
    value = _map(body.get(str(path[0]))).get(str(path[1]))
    shown = describe_value(value)
    if shown in message:
        kind_of = f"a string of {len(value)} characters" if isinstance(value, str) else "a value"
        message = message.replace(shown, f"{kind_of} (not shown: Secret data)")
    return message


def _references(workload: _Object) -> Iterator[tuple[str, FieldPath, str, FieldPath, str | None, bool]]:
    """(kind, path of the name, name, path of the key, key or None, optional) per reference
    in the pod template of a workload. A StatefulSet's volumeClaimTemplates are not
    references: its pods' claims are made from them."""
    spec_path, pod = pod_spec(workload.key.kind, workload.body)
    containers = [("initContainers", i, c) for i, c in enumerate(_list(pod.get("initContainers")))]
    containers += [("containers", i, c) for i, c in enumerate(_list(pod.get("containers")))]
    for field_name, c_index, written in containers:
        container = _map(written)
        base: FieldPath = (*spec_path, field_name, c_index)
        for e_index, env in enumerate(_list(container.get("env"))):
            value_from = _map(_map(env).get("valueFrom"))
            for field, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                ref = _map(value_from.get(field))
                if isinstance(ref.get("name"), str) and isinstance(ref.get("key"), str):
                    path: FieldPath = (*base, "env", e_index, "valueFrom", field)
                    yield (
                        kind,
                        (*path, "name"),
                        ref["name"],
                        (*path, "key"),
                        ref["key"],
                        ref.get("optional") is True,
                    )
        for e_index, source in enumerate(_list(container.get("envFrom"))):
            for field, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                ref = _map(_map(source).get(field))
                if isinstance(ref.get("name"), str):
                    path = (*base, "envFrom", e_index, field)
                    yield kind, (*path, "name"), ref["name"], (), None, ref.get("optional") is True
    for v_index, volume in enumerate(_list(pod.get("volumes"))):
        claim = _map(_map(volume).get("persistentVolumeClaim")).get("claimName")
        if isinstance(claim, str):
            path = (*spec_path, "volumes", v_index, "persistentVolumeClaim", "claimName")
            yield "PersistentVolumeClaim", path, claim, (), None, False
        for field, kind, name_field in (
            ("configMap", "ConfigMap", "name"),
            ("secret", "Secret", "secretName"),
        ):
            ref = _map(_map(volume).get(field))
            if not isinstance(ref.get(name_field), str):
                continue
            path = (*spec_path, "volumes", v_index, field)
            optional = ref.get("optional") is True
            yield kind, (*path, name_field), ref[name_field], (), None, optional
            for i_index, item in enumerate(_list(ref.get("items"))):
                item_key = _map(item).get("key")
                if isinstance(item_key, str):
                    yield (
                        kind,
                        (*path, name_field),
                        ref[name_field],
                        (*path, "items", i_index, "key"),
                        item_key,
                        optional,
                    )


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _data_keys(target: _Object) -> set[str]:
    if target.key.kind == "ConfigMap":
        return set(_map(target.body.get("data"))) | set(_map(target.body.get("binaryData")))
    return set(_map(target.body.get("data"))) | set(_map(target.body.get("stringData")))


def _check_references(workload: _Object, objects: Mapping[ObjectKey, _Object], report: _Report) -> None:
    namespace = workload.key.namespace
    missing_reported: set[FieldPath] = set()
    for kind, name_path, name, key_path, key, optional in _references(workload):
        target = objects.get(ObjectKey(kind, namespace, name))
        if target is None:
            if not optional and name_path not in missing_reported:
                missing_reported.add(name_path)
                how = (
                    "declare it" if kind == "PersistentVolumeClaim" else 'declare it, or set "optional: true"'
                )
                report.add(
                    workload.document,
                    name_path,
                    f'{kind} "{name}" does not exist in namespace "{namespace}" ({how})',
                    workload.key,
                )
            continue
        if key is None or optional:
            continue
        keys = _data_keys(target)
        if key not in keys:
            report.add(
                workload.document,
                key_path,
                f'key "{key}" is not in {target.key} (it has: {", ".join(sorted(keys)) or "no keys"})',
                workload.key,
            )


def _check_pull_secrets(workload: _Object, objects: Mapping[ObjectKey, _Object], report: _Report) -> None:
    """An imagePullSecret that is not in the source is a warning, as in Kubernetes: images
    are then pulled without its credentials."""
    spec_path, pod = pod_spec(workload.key.kind, workload.body)
    for index, ref in enumerate(_list(pod.get("imagePullSecrets"))):
        name = _map(ref).get("name")
        if isinstance(name, str) and ObjectKey("Secret", workload.key.namespace, name) not in objects:
            report.add(
                workload.document,
                (*spec_path, "imagePullSecrets", index, "name"),
                f'Secret "{name}" is not in the source: images are pulled without its credentials',
                workload.key,
                warning=True,
            )


def _check_service_name(stateful: _Object, objects: Mapping[ObjectKey, _Object], report: _Report) -> None:
    """A StatefulSet's serviceName names the headless Service that gives each pod its DNS
    name (<pod>.<service>); without one the pods run but cannot be found by name."""
    name = _map(stateful.body.get("spec")).get("serviceName")
    if not isinstance(name, str) or not name:
        return
    service = objects.get(ObjectKey("Service", stateful.key.namespace, name))
    if service is None:
        problem = f'Service "{name}" is not in the source in namespace "{stateful.key.namespace}"'
    elif _map(service.body.get("spec")).get("clusterIP") != "None":
        problem = f"{service.key} is not headless"
    else:
        return
    report.add(
        stateful.document,
        ("spec", "serviceName"),
        f"{problem}: expected a headless Service (clusterIP: None), which gives the pods their DNS names",
        stateful.key,
        warning=True,
    )


def _check_scale_target(autoscaler: _Object, objects: Mapping[ObjectKey, _Object], report: _Report) -> None:
    """An autoscaler whose target is not in the source scales nothing."""
    target = _map(_map(autoscaler.body.get("spec")).get("scaleTargetRef"))
    kind, name = target.get("kind"), target.get("name")
    if kind not in SCALABLE_KINDS or not isinstance(name, str) or not name:
        return  # `check_stored` says what is wrong with it
    if ObjectKey(kind, autoscaler.key.namespace, name) in objects:
        return
    report.add(
        autoscaler.document,
        ("spec", "scaleTargetRef", "name"),
        f'{kind} "{name}" is not in the source in namespace "{autoscaler.key.namespace}": '
        "this autoscaler scales nothing",
        autoscaler.key,
        warning=True,
    )


def _check_global_default(objects: Mapping[ObjectKey, _Object], report: _Report) -> str:
    """At most one PriorityClass may be the global default: the first in file order is,
    each later one is an error naming it. Returns the default's name ("" for none)."""
    first: _Object | None = None
    for item in objects.values():
        if item.key.kind != "PriorityClass" or item.body.get("globalDefault") is not True:
            continue
        if first is None:
            first = item
            continue
        report.add(
            item.document,
            ("globalDefault",),
            f"{first.key} ({first.document.location(('globalDefault',))}) is already the global "
            "default: at most one PriorityClass may have globalDefault: true",
            item.key,
        )
    return first.key.name if first is not None else ""


def _check_priority(
    workload: _Object, classes: Mapping[str, Mapping[str, Any]], default: str, report: _Report
) -> None:
    """A pod template's priorityClassName names a PriorityClass of the source or a built-in
    one, and a `priority` written beside it is the value that class gives (Kubernetes sets
    a pod's priority from its class and refuses a pod whose priority disagrees)."""
    spec_path, pod = pod_spec(workload.key.kind, workload.body)
    name = pod.get("priorityClassName")
    if name is not None and not (isinstance(name, str) and is_subdomain(name)):
        return  # the schema says what is wrong with it
    priority = pod_priority(pod, classes, default)
    if priority is None:
        builtin = " or ".join(BUILTIN_PRIORITY_CLASSES)
        report.add(
            workload.document,
            (*spec_path, "priorityClassName"),
            f'PriorityClass "{name}" does not exist (declare it, or use {builtin})',
            workload.key,
        )
        return
    written = pod.get("priority")
    if not isinstance(written, int) or isinstance(written, bool) or written == priority.value:
        return
    if priority.source and priority.source == name:
        why = f'the value of its PriorityClass "{priority.source}"'
    elif priority.source:
        why = f'the value of PriorityClass "{priority.source}", the global default'
    else:
        why = "no priorityClassName and no global default PriorityClass"
    report.add(
        workload.document,
        (*spec_path, "priority"),
        f"expected {priority.value} ({why}) or no priority: Kubernetes sets a pod's priority from its "
        f"PriorityClass and refuses one that disagrees, got {written}",
        workload.key,
    )


def _check_node_ports(objects: Mapping[ObjectKey, _Object], report: _Report) -> None:
    """A port on the nodes (a nodePort, a LoadBalancer's port) leads to one Service: the
    first to claim it in file order keeps it, each later claim is an error naming it."""
    taken: dict[tuple[int, str], tuple[_Object, NodePortClaim]] = {}
    for item in objects.values():
        if item.key.kind != "Service":
            continue
        for claim in node_port_claims(item.body):
            holder, first = taken.setdefault((claim.number, claim.protocol), (item, claim))
            if holder is item:
                continue  # within one Service: `check_document` says so
            role = f" as its {first.what}" if first.what != claim.what else ""
            report.add(
                item.document,
                claim.path,
                f"{claim.what} {claim.number}/{claim.protocol} is already used by {holder.key} "
                f"({holder.document.location(first.path)}){role}",
                item.key,
            )


def _check_document(document: Document, report: _Report, policy: Policy) -> _Object | None:
    identified = _identify(document, report)
    if identified is None:
        return None
    kind, key = identified
    body: Mapping[str, Any] = document.body
    for finding in schema_findings(kind, body):
        report.add(
            document,
            finding.path,
            _hide_secret_value(kind, body, finding.path, finding.message),
            key,
            at_key=finding.at_key,
            warning=finding.severity == "warning",
        )
    checks = check_stored(kind, body) if kind in STORED_KINDS else check_document(kind, body, policy=policy)
    for check in checks:
        message = _hide_secret_value(kind, body, check.path, check.message)
        report.add(document, check.path, message, key, at_key=check.at_key, warning=check.warning)
    if key is None:
        return None
    if kind in INERT_KINDS:
        location = document.location(("kind",), key=True)
        report.warnings.append(Diagnostic("warning", not_acted_on(kind), location, key))
    return _Object(document, key, str(body["apiVersion"]), body)


def validate_files(files: Sequence[SourceFile], *, policy: Policy = DEFAULT_POLICY) -> ValidationResult:
    """Validate every manifest in `files`; see the module docstring. `policy` is what the
    server allows beyond Kubernetes' rules (by default: nothing, no hostPath volumes)."""
    report = _Report()
    found: list[_Object] = []
    for file in sorted(files, key=lambda f: f.path):
        documents, problems = load_file(file)
        report.errors += problems
        for document in documents:
            identified = _check_document(document, report, policy)
            if identified is not None:
                found.append(identified)

    objects: dict[ObjectKey, _Object] = {}
    for item in found:
        first = objects.get(item.key)
        if first is None:
            objects[item.key] = item
            continue
        report.add(
            item.document,
            (),
            f"duplicate object: {item.key} is already defined at {first.document.location()}",
            item.key,
        )

    declared = {key.name for key in objects if key.kind == "Namespace"} | BUILTIN_NAMESPACES
    default_class = _check_global_default(objects, report)
    classes = {key.name: item.body for key, item in objects.items() if key.kind == "PriorityClass"}
    for item in objects.values():
        namespace = item.key.namespace
        if item.key.kind in NAMESPACED_KINDS and namespace not in declared:
            report.add(
                item.document,
                ("metadata", "namespace"),
                f'namespace "{namespace}" is not declared; add a Namespace manifest named '
                f'"{namespace}" or use "default"',
                item.key,
            )
        if item.key.kind in WORKLOAD_KINDS:
            _check_references(item, objects, report)
            _check_pull_secrets(item, objects, report)
            _check_priority(item, classes, default_class, report)
        if item.key.kind == "StatefulSet":
            _check_service_name(item, objects, report)
        if item.key.kind == "HorizontalPodAutoscaler":
            _check_scale_target(item, objects, report)
    _check_node_ports(objects, report)

    manifests = tuple(
        Manifest(
            key=item.key,
            api_version=item.api_version,
            body=item.body,
            location=item.document.location(),
            hash=content_hash(item.body),
        )
        for item in sorted(objects.values(), key=lambda o: o.key)
    )
    return ValidationResult(manifests, _sorted(report.errors), _sorted(report.warnings))


def _sorted(diagnostics: list[Diagnostic]) -> tuple[Diagnostic, ...]:
    def order(d: Diagnostic) -> tuple[str, int, int, str, str]:
        location = d.location or SourceLocation("")
        return (location.file, location.line, location.col, d.field, d.message)

    return tuple(sorted(diagnostics, key=order))
