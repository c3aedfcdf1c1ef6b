"""One redacted read model: every read path (page, JSON API, state snapshot, previews) shows
no Secret value, even one that reached the store before it became a Secret, and nothing
derived from a Secret value leaves the server unless keyed with the cluster's key."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from fastapi.testclient import TestClient

from gitops.api.app import create_app
from gitops.controller import reconcile_once
from gitops.keyed import body_digest, digest, seal
from gitops.model import PodStatus, Revision, canonical_json
from gitops.planner.plan import configs_of
from gitops.planner.podspec import resolve_template
from gitops.redact import Redactor
from gitops.store import SecretKeys, Store
from tests.api.sample import NOW, sample_store
from tests.api.test_read_only import read_only_paths
from tests.planner.factories import deployment, secret

LATE = "Late-Rotated-Value-5521"


def every_answer(client: TestClient) -> str:
    app = client.app
    extra = ["/pods?q=web", "/api/v1/events?limit=1000", "/api/v1/revisions?limit=1000", "/api/v1/previews"]
    return "\n".join(client.get(path).text for path in [*read_only_paths(app), *extra])  # type: ignore[arg-type]


def test_text_stored_before_its_value_became_a_secret_is_redacted_on_every_read_path(tmp_path: Path) -> None:
    store = sample_store(tmp_path)
    pod = next(p for p in store.pods() if p.node == "n1")
    status = PodStatus(
        pod.id, "Running", False, f"Readiness probe failed: exit code 1: pw={LATE}", "172.17.0.9"
    )
    store.heartbeat("n1", [status], NOW - 5)
    assert any(LATE in p.reason for p in store.pods())  # not a Secret yet: stored as reported
    desired = store.desired()
    store.apply_revision(Revision("git:repo", "c" * 40), [*desired, secret("rotated", pw=LATE)], [], NOW - 4)

    client = TestClient(create_app(store, join_token="j", sources=["git:repo"], clock=lambda: NOW))
    shown = every_answer(client)
    for form in (LATE, base64.b64encode(LATE.encode()).decode(), json.dumps(LATE)[1:-1]):
        assert form not in shown
    pods = {p["id"]: p for p in client.get("/api/v1/pods").json()}
    assert pods[pod.id]["reason"] == "Readiness probe failed: exit code 1: pw=[redacted]"
    events = [e["message"] for e in client.get("/api/v1/events?limit=1000").json()]
    assert any("pw=[redacted]" in m for m in events)


def test_the_state_snapshot_publishes_no_plain_digest_of_a_secret(tmp_path: Path) -> None:
    keys = SecretKeys.generate()
    store = Store(f"sqlite:///{tmp_path / 's.db'}", keys=keys)
    creds = secret("creds", token="hunter2hunter2")
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}}]
    store.apply_revision(Revision("git:x", "1" * 40), [creds, deployment(replicas=1, env=env)], [], 1.0)
    client = TestClient(create_app(store, join_token="j", clock=lambda: 2.0))
    text = client.get("/api/v1/state").text
    plain = {
        hashlib.sha256(canonical_json(creds.body).encode()).hexdigest(),  # 0.1's Secret hash
        hashlib.sha256(b"hunter2hunter2").hexdigest(),
        "hunter2hunter2",
        base64.b64encode(b"hunter2hunter2").decode(),
    }
    assert not any(p in text for p in plain)
    (published,) = [m for m in json.loads(text)["desired"] if m["key"]["kind"] == "Secret"]
    assert published["hash"] == body_digest(keys.digest_key, creds.body)
    assert published["digests"] == {"token": digest(keys.digest_key, b"hunter2hunter2")}


def test_pod_names_hash_secret_values_only_through_the_cluster_key() -> None:
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}}]
    uses_secret = deployment("web", env=env)
    plain = deployment("plain")

    def hashes(key: bytes, value: str = "hunter2") -> tuple[str, str]:
        configs = configs_of([seal(m, key) for m in (secret("creds", token=value), uses_secret, plain)])
        return resolve_template(uses_secret, configs).hash, resolve_template(plain, configs).hash

    one, two = hashes(b"cluster one"), hashes(b"cluster two")
    assert one[0] != two[0], "the same Secret value must not give the same pod name in two clusters"
    assert one[1] == two[1], "templates without Secrets keep their hash"
    assert hashes(b"cluster one") == one, "and it is stable within a cluster"
    assert hashes(b"cluster one", "other")[0] != one[0], "a changed value still changes the pods"


def test_a_rotated_secrets_old_value_that_pods_still_hold_is_in_no_answer(tmp_path: Path) -> None:
    old, new = "Old-Password-Still-Valid-1234", "New-Password-5678-xyz"
    store = sample_store(tmp_path)
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}}]
    store.apply_revision(
        Revision("git:repo", "d" * 40),
        [secret("creds", token=old), deployment("db", replicas=2, env=env)],
        [],
        NOW - 9,
    )
    reconcile_once(store, NOW - 8)
    for p in store.pods():
        if p.node and p.owner.name == "db":
            store.heartbeat(p.node, [PodStatus(p.id, "Running", True, "", "172.17.0.9")], NOW - 7)
    store.apply_revision(
        Revision("git:repo", "e" * 40),
        [secret("creds", token=new), deployment("db", replicas=2, env=env)],
        [],
        NOW - 6,
    )
    reconcile_once(store, NOW - 5)  # a rolling update: the old pods keep running with the old value
    assert any(old.encode() in p.spec.secret_values() for p in store.pods())
    client = TestClient(create_app(store, join_token="j", sources=["git:repo"], clock=lambda: NOW))
    shown = every_answer(client)
    for form in (old, base64.b64encode(old.encode()).decode()):
        assert form not in shown


def test_every_form_of_a_multi_line_secret_is_redacted() -> None:
    pem = (
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n"
        "BKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----\n"
    )
    redact = Redactor.of_values([pem.encode()])
    for text in (pem, pem.replace("\n", "\r\n"), json.dumps(pem), "line: MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"):
        assert "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC" not in redact(text), text
    assert base64.b64encode(pem.encode()).decode() not in redact(base64.b64encode(pem.encode()).decode())
