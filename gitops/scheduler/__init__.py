"""The scheduler: pending pods and nodes in, a node per pod (or why none) out.

Pure and deterministic: `place(pending, nodes, bound) -> Placements`. See `place.py` for
the checks, the scoring weights, and how each check works on all nodes at once.
"""

from gitops.scheduler.place import Cluster, place, place_on, tolerates

__all__ = ["Cluster", "place", "place_on", "tolerates"]
