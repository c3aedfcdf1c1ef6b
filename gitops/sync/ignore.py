"""`.gitopsignore`: files of a source that are not manifests.

A `.gitopsignore` at a source's root lists, in gitignore syntax, paths that are not read as
manifests (drafts, CI configuration, a kustomize base that only overlays should deploy).
Patterns are matched against posix paths relative to the source root, as git matches a
`.gitignore` at a repository's root; as in git, a file inside an ignored folder stays
ignored whatever a later `!pattern` says. Kustomize may still read ignored files when a
kustomization refers to them: ignoring decides what is deployed, not what exists.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pathspec

IGNORE_FILE = ".gitopsignore"


@dataclass(frozen=True)
class IgnoreRules:
    """Compiled patterns of one `.gitopsignore`; empty rules ignore nothing."""

    spec: pathspec.GitIgnoreSpec | None = field(default=None)

    @classmethod
    def parse(cls, content: bytes) -> IgnoreRules:
        import pathspec  # noqa: PLC0415 - 20 ms to import: only for a source that has the file

        lines = content.decode("utf-8", errors="replace").removeprefix("\ufeff").splitlines()
        return cls(pathspec.GitIgnoreSpec.from_lines(lines))

    def ignores(self, path: str) -> bool:
        """Whether the file at `path` (relative, posix) is excluded, by itself or by a folder."""
        if self.spec is None:
            return False
        folder = posixpath.dirname(path)
        while folder:
            # Git does not look inside an excluded folder, so nothing in it can be re-included.
            if self.spec.match_file(folder + "/"):
                return True
            folder = posixpath.dirname(folder)
        return self.spec.match_file(path)


NO_RULES = IgnoreRules()
