"""The scheduler: pending pods and nodes in, a node per pod (or why none) out.

Pure and deterministic: `place(pending, nodes, bound) -> Placements`. `cluster.py` turns
nodes and bound pods into columns, `checks.py` holds the feasibility checks and scorers
(each over all nodes at once, with the weights), `place.py` the placement loop and the
explanation of pods that fit nowhere.
"""

from gitops.scheduler.checks import CHECKS, SCORERS, tolerates
from gitops.scheduler.cluster import Cluster
from gitops.scheduler.place import explain, place, place_on

__all__ = ["CHECKS", "SCORERS", "Cluster", "explain", "place", "place_on", "tolerates"]
