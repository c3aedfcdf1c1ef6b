"""A control plane in this process with one big Deployment and no node, for the benches
that measure it at scale (`memory.py`, `status.py`): SQLite in a temporary folder, a folder
source holding `big.yaml`, the API on a free loopback port. With no node every pod stays
Pending, as with a typo in `replicas` on a small cluster."""

from __future__ import annotations

import socket
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gitops.server import ControlPlane
from gitops.store import Store
from gitops.sync.sources import FolderSource


def manifest(replicas: int) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: big}}
        spec:
          replicas: {replicas}
          selector: {{matchLabels: {{app: big}}}}
          template:
            metadata: {{labels: {{app: big}}}}
            spec:
              containers:
                - name: app
                  image: big:1
                  resources: {{requests: {{cpu: 100m, memory: 64Mi}}}}
        """
    )


@dataclass
class BigCluster:
    plane: ControlPlane
    store: Store
    folder: Path

    def scale(self, replicas: int) -> None:
        (self.folder / "big.yaml").write_text(manifest(replicas))


def start(prefix: str, replicas: int, **options: Any) -> BigCluster:
    """A started control plane on a Deployment of `replicas` (ControlPlane `options` beside
    a 1 s source poll and no settle time)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    folder = tmp / "manifests"
    folder.mkdir()
    (folder / "big.yaml").write_text(manifest(replicas))
    store = Store(f"sqlite:///{tmp / 's.db'}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    plane = ControlPlane(
        store, [FolderSource(folder)], port=port, poll_interval=1, settle_seconds=0, **options
    )
    plane.start()
    return BigCluster(plane, store, folder)
