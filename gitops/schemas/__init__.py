"""Manifest loading and validation: the gate between the source and the store.

In come `SourceFile`s (a path relative to the source root and the raw bytes), as `sync/`
found them in a git checkout or a watched folder. Each may hold several YAML documents of
the kinds gitops understands: Namespace, Deployment, StatefulSet, DaemonSet, Job, CronJob,
Service (every type), ConfigMap, Secret, PersistentVolumeClaim, HorizontalPodAutoscaler, and
the kinds it only stores (`kinds`). Out comes a `ValidationResult`: the objects as frozen
`Manifest`s (sorted by key, each with its content hash and where it was written), and
`Diagnostic`s that name the file, line, column, object and field, and say what would be
valid. Fields that Kubernetes accepts but gitops does not act on are warnings, never errors
and never silently dropped. Hostile input (alias bombs, huge, binary or deeply nested files,
unsafe YAML tags) is refused with an error, never a crash or a hang.

Rooms: `loader` (YAML with positions), `schema` (the packaged JSON Schemas, one per kind),
`checks` (rules a schema cannot say), `kinds` (the rules of the kinds gitops only stores,
and of autoscalers), `cron` (CronJob schedules and time zones), `validate` (everything
together, plus the cross-object checks), `quantity` (CPU and memory quantities, also used by
the planner). Pure: the only I/O is reading the packaged schema files and the time zone
database.
"""

from .loader import MAX_FILE_BYTES, SourceFile
from .quantity import QuantityError, parse_cpu, parse_memory
from .validate import ValidationResult, validate_files

__all__ = [
    "MAX_FILE_BYTES",
    "QuantityError",
    "SourceFile",
    "ValidationResult",
    "parse_cpu",
    "parse_memory",
    "validate_files",
]
