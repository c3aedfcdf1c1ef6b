"""hostPath volumes validate as Kubernetes has them, but only under the folders the server
allows (`gitops serve --allow-host-path`): any other is an error at its field, so the
revision is refused; prefixes match whole path components of normalised paths."""

from __future__ import annotations

import pytest

from gitops.schemas import SourceFile
from gitops.schemas.checks import normal_host_path, under_prefix
from gitops.schemas.validate import Policy, ValidationResult, validate_files

from .helpers import errors, source, warnings

FLUENTD = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: fluentd
  namespace: default
spec:
  selector:
    matchLabels: {app: fluentd}
  template:
    metadata:
      labels: {app: fluentd}
    spec:
      containers:
        - name: fluentd
          image: fluent/fluentd:v1.16
          volumeMounts:
            - {name: varlog, mountPath: /var/log}
            - {name: containers, mountPath: /var/lib/docker/containers, readOnly: true}
            - {name: extra, mountPath: /extra}
      volumes:
        - name: varlog
          hostPath: {path: /var/log}
        - name: containers
          hostPath: {path: /var/lib/docker/containers, type: Directory}
        - name: extra
          hostPath: {path: PATH}
"""
WHERE = "apps/fluentd.yaml:26:28: Deployment default/fluentd: spec.template.spec.volumes[2].hostPath.path"


def check(extra: str, *allowed: str) -> ValidationResult:
    text = FLUENTD.replace("PATH", extra)
    return validate_files([source("apps/fluentd.yaml", text)], policy=Policy(host_paths=allowed))


LOGS = ("/var/log", "/var/lib/docker/containers")


def test_host_paths_under_the_allowed_prefixes_validate_cleanly() -> None:
    result = check("/var/log/journal", *LOGS)
    assert errors(result) == []
    assert warnings(result) == []  # acted on now: no "ignored" warning


def test_a_host_path_outside_the_allowed_prefixes_is_an_error_at_its_field() -> None:
    assert errors(check("/etc", *LOGS)) == [
        f"{WHERE}: hostPath /etc is not under a prefix this server allows "
        "(gitops serve --allow-host-path; allowed: /var/log, /var/lib/docker/containers)",
    ]


def test_by_default_a_server_allows_no_host_path() -> None:
    result = validate_files([source("apps/fluentd.yaml", FLUENTD.replace("PATH", "/var/log"))])
    assert not result.ok
    assert {e.field for e in result.errors} == {
        f"spec.template.spec.volumes[{i}].hostPath.path" for i in range(3)
    }
    assert all(e.message.endswith("allowed: none)") for e in result.errors)


@pytest.mark.parametrize("path", ["/var/logs", "/var/lo", "/var", "/", "/var/log-old/x"])
def test_a_prefix_matches_whole_path_components(path: str) -> None:
    assert errors(check(path, *LOGS))
    assert not under_prefix(path, ["/var/log"])


@pytest.mark.parametrize("path", ["/var/log", "/var/log/", "/var/log/x/y", "//var//log/./x"])
def test_paths_under_a_prefix_in_any_spelling_are_allowed(path: str) -> None:
    assert errors(check(path, *LOGS)) == []


def test_a_path_that_climbs_out_with_dot_dot_is_refused_as_kubernetes_refuses_it() -> None:
    assert errors(check("/var/log/../../etc", *LOGS)) == [
        f"""{WHERE}: must not contain '..', got "/var/log/../../etc\""""
    ]
    assert errors(check("/var/log/x/..", *LOGS)) == [
        f"""{WHERE}: must not contain '..', got "/var/log/x/..\""""
    ]
    assert normal_host_path("/var/log/../../etc") == "/etc"
    assert not under_prefix("/var/log/../../etc", ["/var/log"])


def test_an_oddly_written_path_is_shown_with_what_it_means() -> None:
    (error,) = errors(check("//etc/./ssl", *LOGS))
    assert "hostPath //etc/./ssl (/etc/ssl) is not under a prefix" in error


def test_the_path_is_absolute_and_the_type_one_of_kubernetes_types() -> None:
    text = FLUENTD.replace("{path: PATH}", "{path: etc, type: Dir}")
    result = validate_files([source("apps/fluentd.yaml", text)], policy=Policy(LOGS))
    assert errors(result) == [
        f"{WHERE}: expected an absolute path on the node (under a prefix the server allows: "
        'gitops serve --allow-host-path), got "etc"',
        "apps/fluentd.yaml:26:39: Deployment default/fluentd: spec.template.spec.volumes[2].hostPath.type: "
        'expected one of "", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket", '
        '"CharDevice", "BlockDevice", got "Dir"',
    ]


@pytest.mark.parametrize(
    "kind",
    ["", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket", "CharDevice", "BlockDevice"],
)
def test_every_kubernetes_host_path_type_is_accepted(kind: str) -> None:
    text = FLUENTD.replace("{path: PATH}", f'{{path: /var/log/x, type: "{kind}"}}')
    assert errors(validate_files([source("a.yaml", text)], policy=Policy(LOGS))) == []


def test_a_host_path_needs_its_path_and_one_source() -> None:
    text = FLUENTD.replace("{path: PATH}", "{type: File}\n          emptyDir: {}")
    messages = errors(validate_files([source("a.yaml", text)], policy=Policy(LOGS)))
    assert any("volumes[2].hostPath.path: required field is missing" in m for m in messages)
    assert any('expected exactly one volume source, got "emptyDir", "hostPath"' in m for m in messages)


def test_a_policy_takes_absolute_prefixes_and_normalises_them() -> None:
    assert Policy(("/var/log/", "//var/log", "/srv/./data")).host_paths == ("/var/log", "/srv/data")
    with pytest.raises(ValueError, match="expected an absolute path"):
        Policy(("var/log",))


def test_only_deployments_carry_host_paths_and_other_files_are_unaffected() -> None:
    files = [SourceFile("ns.yaml", b"apiVersion: v1\nkind: Namespace\nmetadata: {name: logs}\n")]
    assert validate_files(files, policy=Policy(LOGS)) == validate_files(files)
