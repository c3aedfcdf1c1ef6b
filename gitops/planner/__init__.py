"""The planner: desired manifests and observed pods in, pod actions and endpoints out.

Pure functions only: no SQL, no Docker, no clock (callers pass `now`). `plan` sorts pods
into create / stop / keep buckets with a reason for each action; `all_endpoints` computes
which ready pods stand behind every Service port.
"""

from gitops.planner.plan import Action, Plan, plan, rollouts
from gitops.planner.podspec import Template, resolve_template
from gitops.planner.services import all_endpoints

__all__ = ["Action", "Plan", "Template", "all_endpoints", "plan", "resolve_template", "rollouts"]
