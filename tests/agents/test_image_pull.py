"""Images are pulled as imagePullPolicy says, with the credentials of the pod's
imagePullSecrets for the image's registry; credentials never show and replace no pod."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from gitops.agents.agent import Agent, AgentConfig
from gitops.model import NodeName, ObjectKey, Pod, PodName, RegistryAuth, image_registry
from gitops.planner.plan import configs_of
from gitops.planner.podspec import resolve_template
from tests.agents.fakes import MemoryRuntime
from tests.planner.factories import deployment, secret

NODE = NodeName("n1")
CONFIG = {
    "auths": {
        "registry.example.com:5000": {"username": "deploy", "password": "s3cret-pw"},
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hubuser:hub-pw").decode()},
    }
}


def template(image: str, policy: str = "IfNotPresent", token: str = "s3cret-pw") -> Pod:
    written = deployment(image=image, imagePullPolicy=policy)
    spec = written.body["spec"]["template"]["spec"]
    spec["imagePullSecrets"] = [{"name": "regcred"}]
    config = json.loads(json.dumps(CONFIG))
    config["auths"]["registry.example.com:5000"]["password"] = token
    creds = secret("regcred", **{".dockerconfigjson": json.dumps(config)})
    resolved = resolve_template(written, configs_of([creds]))
    return Pod(
        "default",
        PodName("web-1"),
        ObjectKey("Deployment", "default", "web"),
        resolved.hash,
        resolved.spec,
        node=NODE,
    )


def agent(tmp_path: Path, rt: MemoryRuntime) -> Agent:
    config = AgentConfig(
        iptables="/nonexistent/iptables",
        server="http://127.0.0.1:9",
        node=NODE,
        join_token="t",
        state_dir=tmp_path,
    )
    return Agent(config, rt, clock=lambda: rt.now)


def test_registries_are_read_as_docker_reads_them() -> None:
    assert image_registry("nginx:1.25") == "docker.io"
    assert image_registry("library/nginx") == "docker.io"
    assert image_registry("registry.example.com:5000/team/app:2") == "registry.example.com:5000"
    assert image_registry("localhost:5000/app") == "localhost:5000"
    assert image_registry("ghcr.io/owner/app@sha256:abc") == "ghcr.io"
    assert image_registry("https://index.docker.io/v1/") == "docker.io"


def test_pull_secrets_give_each_registry_its_credentials_which_are_redacted_and_not_hashed() -> None:
    pod = template("registry.example.com:5000/team/app:2")
    assert pod.spec.auth_for("registry.example.com:5000/team/app:2") == RegistryAuth(
        "registry.example.com:5000", "deploy", "s3cret-pw"
    )
    assert pod.spec.auth_for("nginx:1") == RegistryAuth("docker.io", "hubuser", "hub-pw")
    assert pod.spec.auth_for("ghcr.io/x/y:1") is None
    assert b"s3cret-pw" in pod.spec.secret_values() and b"hub-pw" in pod.spec.secret_values()
    # A rotated credential replaces no pod, as in Kubernetes.
    assert (
        template("registry.example.com:5000/team/app:2", token="rotated").template_hash == pod.template_hash
    )


def test_if_not_present_pulls_a_missing_image_once_with_its_registry_s_credentials(tmp_path: Path) -> None:
    rt = MemoryRuntime(pullable={"registry.example.com:5000/team/app:2"})
    pod = template("registry.example.com:5000/team/app:2")
    agent(tmp_path, rt).converge([pod], [])
    assert [line for line in rt.log if line.startswith("pull")] == [
        "pull registry.example.com:5000/team/app:2 as deploy@registry.example.com:5000"
    ]
    assert rt.list(NODE)[0].running


def test_always_pulls_at_every_start_even_an_image_that_is_present(tmp_path: Path) -> None:
    rt = MemoryRuntime(pullable={"web:1"})
    pod = template("web:1", policy="Always")
    a = agent(tmp_path, rt)
    a.converge([pod], [])
    rt.exit(pod.id, 1)
    a.converge([pod], rt.list(NODE))  # the exit is seen: the restart waits for the backoff
    rt.now += 100
    a.converge([pod], rt.list(NODE))
    assert [line for line in rt.log if line.startswith("pull")] == ["pull web:1 as hubuser@docker.io"] * 2


def test_a_failed_pull_under_always_is_err_image_pull_even_with_the_image_present(tmp_path: Path) -> None:
    rt = MemoryRuntime()
    pod = template("web:1", policy="Always")
    a = agent(tmp_path, rt)
    a.converge([pod], [])
    (status,) = a._statuses(rt.list(NODE), {pod.id: pod})
    assert status.reason.startswith("ErrImagePull: pull of 'web:1' failed")
    assert rt.list(NODE) == []
