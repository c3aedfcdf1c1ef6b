"""Every Secret value a pod spec carries is sealed in SQL: env values and files of every
container (init containers too) and registry passwords; the store gives them back whole."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

from gitops.controller import reconcile_once
from gitops.model import Revision
from gitops.store import Store
from tests.planner.factories import manifest, secret

VALUE = "correct-horse-battery-staple"
PASSWORD = "registry-pass-9731"


def deployment_with_secrets() -> object:
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}}]
    pod = {
        "imagePullSecrets": [{"name": "regcred"}],
        "initContainers": [{"name": "setup", "image": "web:1", "env": env}],
        "containers": [
            {
                "name": "main",
                "image": "registry.example.com/web:1",
                "env": env,
                "volumeMounts": [{"name": "creds", "mountPath": "/creds"}],
            }
        ],
        "volumes": [{"name": "creds", "secret": {"secretName": "creds"}}],
    }
    return manifest(
        "Deployment",
        "web",
        spec={
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod},
        },
    )


def test_secret_values_of_every_container_and_registry_passwords_are_sealed_in_sql(tmp_path: Path) -> None:
    database = tmp_path / "state.db"
    store = Store(f"sqlite:///{database}")
    config = {"auths": {"registry.example.com": {"username": "ci", "password": PASSWORD}}}
    store.apply_revision(
        Revision("git:x", "1" * 40),
        [
            secret("creds", token=VALUE),
            secret("regcred", **{".dockerconfigjson": json.dumps(config)}),
            deployment_with_secrets(),
        ],  # type: ignore[list-item]
        [],
        1.0,
    )
    reconcile_once(store, now=2.0)
    (pod,) = store.pods()
    assert dict(pod.spec.main.env)["TOKEN"] == VALUE
    assert dict(pod.spec.init_containers[0].env)["TOKEN"] == VALUE
    assert pod.spec.main.files[0].content == VALUE.encode()
    assert pod.spec.auth_for("registry.example.com/web:1").password == PASSWORD  # type: ignore[union-attr]
    with sqlite3.connect(database) as conn:
        (raw,) = conn.execute("select spec from pods").fetchone()
    for shown in (VALUE, base64.b64encode(VALUE.encode()).decode(), PASSWORD):
        assert shown not in raw
