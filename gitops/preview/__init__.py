"""Pull-request previews: what a branch would change, and where every pod would land.

`compute.preview` runs the controller's own pass (`gitops.reconcile.decide`) on a copy of
the cluster state with the branch's manifests and records what it decides; `workloads`
says what each workload kind does besides its pod actions (a StatefulSet's order, a
DaemonSet's nodes, a Job's pods, a CronJob's next runs, an autoscaler's bounds); `diff`
compares objects field by field; `state` reads and writes the state a preview runs on;
`render` prints the result as text, Markdown or JSON. Pure: no git, no SQL, no HTTP in here.
"""

from gitops.preview.compute import PodAction, Preview, RevisionInfo, preview
from gitops.preview.state import StateError, load_state

__all__ = ["PodAction", "Preview", "RevisionInfo", "StateError", "load_state", "preview"]
