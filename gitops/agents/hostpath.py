"""hostPath volumes on a node: a folder or file of the node itself, mounted into a pod.

The control plane refuses a revision with a hostPath outside the folders its operator
allows (`gitops serve --allow-host-path`). The agent checks again against the folders the
control plane sends with each sync (a control plane of an older release sends none, and
then nothing is mounted), this time on the path with its symbolic links resolved, so that
a link under an allowed folder cannot lead out of it. Then it does what kubelet does for
the volume's type: DirectoryOrCreate and FileOrCreate make what is missing (a folder
0755 with its parents; a file 0644 in a folder that must exist), the type "" makes a
missing folder (as container runtimes do) and checks nothing else, and every other type
is checked against what is there. A subPath is a folder of the volume, made when missing,
that may not lead out of it. Each refusal raises `RuntimeFailure` saying why, which the
agent reports as the pod's reason; the container does not start.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence

from gitops.agents.runtime import RuntimeFailure
from gitops.model import Volume
from gitops.schemas.checks import normal_host_path, under_prefix

# What each checked type must find at the path, and what it is called in a refusal.
_KINDS: dict[str, tuple[Callable[[int], bool], str]] = {
    "Directory": (stat.S_ISDIR, "a directory"),
    "DirectoryOrCreate": (stat.S_ISDIR, "a directory"),
    "File": (stat.S_ISREG, "a file"),
    "FileOrCreate": (stat.S_ISREG, "a file"),
    "Socket": (stat.S_ISSOCK, "a socket"),
    "CharDevice": (stat.S_ISCHR, "a character device"),
    "BlockDevice": (stat.S_ISBLK, "a block device"),
}


def host_path_source(volume: Volume, sub_path: str, allowed: Sequence[str]) -> str:
    """The path on this node to bind-mount for the hostPath `volume` (its `sub_path`
    folder when given), made or checked as its type says; `allowed` are the folders the
    control plane allows. Raises `RuntimeFailure` with the reason when it may not be
    mounted."""
    path = normal_host_path(volume.host_path)
    shown = ", ".join(allowed) or "none"
    if not under_prefix(path, allowed):
        raise RuntimeFailure(
            f"hostPath {path} is not under a folder the control plane allows (allowed: {shown})"
        )
    real = os.path.realpath(path)
    if not under_prefix(real, [os.path.realpath(p) for p in allowed]):
        raise RuntimeFailure(
            f"hostPath {path} leads to {real} (a symbolic link), which is not under a folder "
            f"the control plane allows (allowed: {shown})"
        )
    _prepare(path, real, volume.host_path_type)
    if not sub_path:
        return real
    folder = os.path.realpath(os.path.join(real, sub_path))
    if not under_prefix(folder, [real]):
        raise RuntimeFailure(f"subPath {sub_path!r} of hostPath {path} leaves it")
    try:
        os.makedirs(folder, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise RuntimeFailure(
            f"subPath {sub_path!r} of hostPath {path}: cannot make it: {exc.strerror}"
        ) from exc
    return folder


def _prepare(path: str, real: str, kind: str) -> None:
    """Make what the type makes when missing, then check what is there."""
    try:
        if kind in ("", "DirectoryOrCreate") and not os.path.lexists(real):
            os.makedirs(real, mode=0o755, exist_ok=True)
        elif kind == "FileOrCreate" and not os.path.lexists(real):
            folder = os.path.dirname(real)
            if not os.path.isdir(folder):
                raise RuntimeFailure(
                    f"hostPath {path}: cannot make the file, its folder {folder} does not exist"
                )
            os.close(os.open(real, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
    except FileExistsError:
        pass  # made meanwhile: checked below like anything found there
    except OSError as exc:
        raise RuntimeFailure(f"hostPath {path}: cannot make it: {exc.strerror}") from exc
    if kind not in _KINDS:
        return
    is_kind, name = _KINDS[kind]
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        raise RuntimeFailure(f"hostPath {path} does not exist (type {kind} does not make it)") from None
    except OSError as exc:
        raise RuntimeFailure(f"hostPath {path}: cannot read it: {exc.strerror}") from exc
    if not is_kind(mode):
        raise RuntimeFailure(f"hostPath {path} is not {name}")
