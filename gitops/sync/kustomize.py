"""Kustomize: a folder holding a kustomization is rendered before it is validated.

As in Argo CD and Flux, a folder of a source that holds a `kustomization.yaml` (or
`kustomization.yml`, `Kustomization`) is given to a real `kustomize build`, and the objects
it prints stand for the folder's files. Only the topmost such folders are built (`roots`);
their folder trees are not also read as plain manifests (`covers`).

`render` takes the files of a source (paths relative to its root, read on demand: a folder's
and a commit's alike), checks every kustomization reachable from the roots, writes the files
kustomize may read (the folders of those kustomizations) into a private temporary folder and
builds each root there. Kustomize must not reach the network or read outside the source: a
reference to a URL, an absolute path, a path leaving the source or a path that does not exist
(which kustomize would try as a remote base) is refused before it runs, with the position in
the kustomization file; kustomize then runs with its default load restrictor (files only from
in or below a kustomization's folder), without exec or helm plugins, with no `git` on its
`PATH` and an HTTP proxy that answers nothing. The temporary folder holds only regular files,
so no symbolic link can lead out of it.

Each rendered object becomes one `SourceFile` named after the file it came from (kustomize's
`config.kubernetes.io/origin` annotation, asked for with `buildMetadata: [originAnnotations]`
on a copy of the root kustomization and removed from the output), starting at the line where
its document begins there; generated ConfigMaps and Secrets are named after the generator's
entry in its kustomization. Lines inside a rendered object count through kustomize's output of
it, so they are near the original, not exact. Rendering is deterministic (kustomize is, and its
messages are stripped of the temporary folder's name), which revision ids built from hashes of
the files rely on; renders are cached by the hash of what kustomize reads.
"""

from __future__ import annotations

import functools
import hashlib
import os
import posixpath
import re
import shutil
import subprocess
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from gitops.model import Diagnostic, SourceLocation
from gitops.schemas.loader import MAX_FILE_BYTES, Document, FieldPath, SourceFile, load_file

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
ORIGIN_ANNOTATION = "config.kubernetes.io/origin"
TIMEOUT_SECONDS = 60.0
MAX_TREE_BYTES = 64 * MAX_FILE_BYTES
"""What the files of the kustomizations of one source may add up to."""

INSTALL_HINT = (
    "install kustomize (scripts/setup does; on Debian 13 or newer `apt-get install kustomize`), "
    "put it on PATH or name it in GITOPS_KUSTOMIZE"
)

# Fields whose entries are kustomizations, files of objects, or (for kustomize) remote bases.
_REFERENCES = ("resources", "bases", "components", "generators", "transformers", "validators")
# Fields naming files that kustomize loads (and would download, given a URL).
_FILE_LISTS = ("crds", "configurations", "patchesStrategicMerge")
_PATH_ITEMS = ("patches", "patchesJson6902", "replacements")
_GENERATORS = {"ConfigMapGenerator": "configMapGenerator", "SecretGenerator": "secretGenerator"}

# No git for remote bases, and a proxy on a closed loopback port for HTTP ones: remote
# references are refused before kustomize runs, and this makes sure it could not fetch them.
_NO_NETWORK = "http://127.0.0.1:9"

Files = tuple[list[SourceFile], list[Diagnostic]]
Sizes = Mapping[str, int]
Reader = Callable[[str], bytes]


# --- finding kustomize -------------------------------------------------------------------


def find_kustomize() -> tuple[str, ...] | None:
    """The command that builds a kustomization folder given as its last argument: the binary
    named by GITOPS_KUSTOMIZE, else `kustomize` on PATH, else `kubectl kustomize` when that
    kubectl embeds kustomize 5 or newer; None when there is none."""
    configured = os.environ.get("GITOPS_KUSTOMIZE", "")
    if configured:
        found = shutil.which(configured)
        return (str(Path(found).resolve()), "build") if found else None
    found = shutil.which("kustomize")
    if found:
        return (str(Path(found).resolve()), "build")
    kubectl = shutil.which("kubectl")
    if kubectl and _embeds_kustomize_5(str(Path(kubectl).resolve())):
        return (str(Path(kubectl).resolve()), "kustomize")
    return None


@functools.lru_cache(maxsize=8)
def _embeds_kustomize_5(kubectl: str) -> bool:
    """Older kubectls embed kustomize 2 to 4, which lack origin annotations."""
    try:
        done = subprocess.run(
            [kubectl, "version", "--client"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_SECONDS,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    version = re.search(r"Kustomize Version: v?(\d+)", done.stdout)
    return version is not None and int(version.group(1)) >= 5


# --- which folders are kustomizations ----------------------------------------------------


def kustomization_file(folder: str, paths: Container[str]) -> str | None:
    """The kustomization file of `folder` ("" for the source root), if `paths` has one."""
    for name in KUSTOMIZATION_FILES:
        candidate = posixpath.join(folder, name) if folder else name
        if candidate in paths:
            return candidate
    return None


def roots(kustomization_files: Iterable[str]) -> list[str]:
    """The topmost folders among those holding `kustomization_files`: the ones to build."""
    folders = sorted({posixpath.dirname(path) for path in kustomization_files if _is_kustomization(path)})
    topmost: list[str] = []
    for folder in folders:
        if not any(covers(root, folder) for root in topmost):
            topmost.append(folder)
    return topmost


def covers(root: str, path: str) -> bool:
    """Whether `path` is `root` or lies in its folder tree ("" is the source root)."""
    return root in ("", path) or path.startswith(root + "/")


def _is_kustomization(path: str) -> bool:
    return posixpath.basename(path) in KUSTOMIZATION_FILES


# --- rendering ---------------------------------------------------------------------------


def render(folders: Sequence[str], sizes: Sizes, read: Reader) -> Files:
    """Build each kustomization folder of `folders` with kustomize.

    `sizes` has every file of the source (path -> bytes); `read` gives a file's content.
    Returns the rendered objects, one `SourceFile` each, and the errors of the folders that
    could not be built (each named by its kustomization file).
    """
    command = find_kustomize()
    if command is None:
        message = f"this folder is a kustomization, and rendering it needs kustomize: {INSTALL_HINT}"
        return [], [Diagnostic("error", message, SourceLocation(_kfile(folder, sizes))) for folder in folders]
    reader = _CachedReader(read)
    existing = _folders(sizes)
    problems: dict[Diagnostic, None] = {}  # a base shared by two roots is checked for each
    buildable: list[str] = []
    reachable: set[str] = set()
    for folder in folders:
        found, trouble = _check(folder, sizes, existing, reader)
        problems.update(dict.fromkeys(trouble))
        if not trouble:
            buildable.append(folder)
            reachable |= found
    tree = {
        path: size
        for path, size in sizes.items()
        if size <= MAX_FILE_BYTES and any(covers(folder, path) for folder in reachable)
    }
    total = sum(tree.values())
    if total > MAX_TREE_BYTES:
        message = (
            f"the kustomizations' folders hold {total} bytes; kustomize is given at most {MAX_TREE_BYTES}"
        )
        problems.update(
            (Diagnostic("error", message, SourceLocation(_kfile(f, sizes))), None) for f in buildable
        )
        buildable = []
    if not buildable:
        return [], list(problems)
    contents = {path: reader(path) for path in sorted(tree)}
    rendered, trouble = _render_cached(command, tuple(buildable), contents)
    return rendered, [*problems, *trouble]


class _CachedReader:
    def __init__(self, read: Reader) -> None:
        self.read = read
        self.seen: dict[str, bytes] = {}

    def __call__(self, path: str) -> bytes:
        if path not in self.seen:
            self.seen[path] = self.read(path)
        return self.seen[path]


def _kfile(folder: str, paths: Container[str]) -> str:
    found = kustomization_file(folder, paths)
    assert found is not None, folder
    return found


# --- checking references before kustomize runs --------------------------------------------


def _check(root: str, sizes: Sizes, folders: set[str], read: Reader) -> tuple[set[str], list[Diagnostic]]:
    """The kustomization folders reachable from `root`, and the references among them that
    kustomize must not follow (remote, absolute, leaving the source, missing). `folders`
    are the source's folders."""
    seen: set[str] = set()
    pending = [root]
    problems: list[Diagnostic] = []
    while pending:
        folder = pending.pop()
        if folder in seen:
            continue
        seen.add(folder)
        kfile = _kfile(folder, sizes)
        if sizes[kfile] > MAX_FILE_BYTES:
            message = f"file is {sizes[kfile]} bytes; kustomizations are limited to {MAX_FILE_BYTES} bytes"
            problems.append(Diagnostic("error", message, SourceLocation(kfile)))
            continue
        documents, trouble = load_file(SourceFile(kfile, read(kfile)))
        problems += trouble  # invalid YAML, with its line: kustomize would give less
        if trouble or len(documents) != 1 or not isinstance(documents[0].body, dict):
            continue  # kustomize says what else is wrong with it
        document = documents[0]
        body: dict[str, Any] = document.body
        for name, index, entry in _entries(body, _REFERENCES):
            if "\n" in entry:
                continue  # an inline generator or transformer configuration
            target, message = _reference(folder, entry, sizes, folders)
            if message:
                field = f"{name}[{index}]"
                location = document.location((name, index))
                problems.append(Diagnostic("error", message, location, field=field))
            elif target is not None:
                pending.append(target)
        for path, entry in _file_fields(body):
            if "\n" not in entry and _remote(entry):
                field = _field_name(path)
                message = f"{entry} is a URL; {_OFFLINE}"
                problems.append(Diagnostic("error", message, document.location(path), field=field))
    return seen, problems


_OFFLINE = "gitops runs kustomize without network access: copy what it names into the source"


def _reference(folder: str, entry: str, sizes: Sizes, folders: set[str]) -> tuple[str | None, str]:
    """(the kustomization folder `entry` of a kustomization in `folder` names, or None for a
    file; or the reason it is refused)."""
    if _remote(entry):
        return None, f"{entry} is a remote base; {_OFFLINE}"
    if entry.startswith("/"):
        return None, f"{entry} is an absolute path; name files of the source relative to this folder"
    target = posixpath.normpath(posixpath.join(folder, entry))
    target = "" if target == "." else target
    if target == ".." or target.startswith("../"):
        return None, f"{entry} is outside the source; kustomize may only read the source's own files"
    if target in sizes:
        if not covers(folder, target):
            return None, (
                f"{entry} is not in or below this kustomization's folder, the only files kustomize "
                "loads; name a folder with a kustomization of its own instead"
            )
        return None, ""
    if target in folders:
        if kustomization_file(target, sizes) is None:
            return None, f"{entry} is a folder without a kustomization.yaml"
        return target, ""
    first = entry.split("/", 1)[0]
    if "/" in entry and "." in first and not first.startswith("."):
        return None, f"{entry} does not exist here, and kustomize would fetch it as a remote base; {_OFFLINE}"
    return None, f"{entry} does not exist"


def _remote(entry: str) -> bool:
    return "://" in entry or entry.startswith("git@")


def _folders(paths: Iterable[str]) -> set[str]:
    folders = {""}
    for path in paths:
        folder = posixpath.dirname(path)
        while folder and folder not in folders:
            folders.add(folder)
            folder = posixpath.dirname(folder)
    return folders


def _entries(body: Mapping[str, Any], names: Iterable[str]) -> Iterable[tuple[str, int, str]]:
    for name in names:
        values = body.get(name)
        if isinstance(values, list):
            for index, value in enumerate(values):
                if isinstance(value, str):
                    yield name, index, value


def _file_fields(body: Mapping[str, Any]) -> Iterable[tuple[FieldPath, str]]:
    """Every string of `body` that kustomize loads as a file."""
    for name, index, value in _entries(body, _FILE_LISTS):
        yield (name, index), value
    for name in _PATH_ITEMS:
        items = body.get(name)
        for index, item in enumerate(items if isinstance(items, list) else []):
            if isinstance(item, dict) and isinstance(item.get("path"), str):
                yield (name, index, "path"), item["path"]
    openapi = body.get("openapi")
    if isinstance(openapi, dict) and isinstance(openapi.get("path"), str):
        yield ("openapi", "path"), openapi["path"]
    for name in _GENERATORS.values():
        generators = body.get(name)
        for index, generator in enumerate(generators if isinstance(generators, list) else []):
            if not isinstance(generator, dict):
                continue
            for key in ("files", "envs"):
                values = generator.get(key)
                for j, value in enumerate(values if isinstance(values, list) else []):
                    if isinstance(value, str):
                        yield (name, index, key, j), value.split("=", 1)[-1]
            if isinstance(generator.get("env"), str):
                yield (name, index, "env"), generator["env"]


def _field_name(path: FieldPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


# --- running kustomize ---------------------------------------------------------------------

_CACHE_SIZE = 16
_cache: OrderedDict[str, Files] = OrderedDict()
_cache_lock = threading.Lock()


def _render_cached(
    command: tuple[str, ...], folders: tuple[str, ...], contents: Mapping[str, bytes]
) -> Files:
    """`_render`, remembered by the hash of everything it reads: a watched folder is read on
    every poll, and rendering it costs a process per kustomization."""
    h = hashlib.sha256()
    for part in (*command, "", *folders, ""):
        h.update(part.encode() + b"\0")
    for path, content in contents.items():
        h.update(path.encode() + b"\0" + hashlib.sha256(content).digest())
    key = h.hexdigest()
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            files, problems = _cache[key]
            return list(files), list(problems)
    result = _render(command, folders, contents)
    with _cache_lock:
        _cache[key] = result
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return list(result[0]), list(result[1])


def _render(command: tuple[str, ...], folders: Sequence[str], contents: Mapping[str, bytes]) -> Files:
    files: list[SourceFile] = []
    problems: list[Diagnostic] = []
    with tempfile.TemporaryDirectory(prefix="gitops-kustomize-") as scratch:
        sandbox = Path(scratch)
        for path, content in contents.items():
            if not _plain_path(path):
                continue
            target = sandbox / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        for folder in folders:
            kfile = _kfile(folder, contents)
            output, error = _build(command, sandbox, folder, kfile, contents[kfile])
            if error:
                problems.append(Diagnostic("error", error, SourceLocation(kfile)))
                continue
            rendered, trouble = _split(output, folder, kfile, contents)
            files += rendered
            problems += trouble
    return files, problems


def _plain_path(path: str) -> bool:
    parts = path.split("/")
    return not path.startswith("/") and all(part not in ("", ".", "..") for part in parts)


def _build(
    command: tuple[str, ...], sandbox: Path, folder: str, kfile: str, original: bytes
) -> tuple[str, str]:
    """(kustomize's output, "") or ("", its error as a message)."""
    marked = _with_origin_annotations(kfile, original)
    kpath = sandbox / kfile
    if marked is not None:
        kpath.write_bytes(marked)
    env = {
        "PATH": "",
        "HOME": str(sandbox),
        "XDG_CONFIG_HOME": str(sandbox),
        "KUSTOMIZE_PLUGIN_HOME": str(sandbox / ".no-plugins"),
        "TMPDIR": str(sandbox),
        "HTTP_PROXY": _NO_NETWORK,
        "HTTPS_PROXY": _NO_NETWORK,
        "http_proxy": _NO_NETWORK,
        "https_proxy": _NO_NETWORK,
        "NO_PROXY": "",
        "no_proxy": "",
        "LC_ALL": "C",
    }
    try:
        done = subprocess.run(
            [*command, str(sandbox / folder) if folder else str(sandbox)],
            cwd=sandbox,
            env=env,
            capture_output=True,
            timeout=TIMEOUT_SECONDS,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return "", f"kustomize build did not finish within {TIMEOUT_SECONDS:.0f}s"
    except OSError as exc:
        return "", f"could not run {command[0]} ({exc.strerror}); {INSTALL_HINT}"
    finally:
        # Other roots may use this folder as a base: they must see it as written.
        kpath.write_bytes(original)
    stderr = done.stderr.decode("utf-8", errors="replace")
    if done.returncode != 0:
        # The error runs from "Error: " to the end, over several lines; warnings come before it.
        lines = stderr.splitlines()
        first = next((i for i, line in enumerate(lines) if line.startswith("Error: ")), 0)
        detail = " ".join(" ".join(lines[first:]).removeprefix("Error: ").split())
        detail = _without_sandbox(detail, sandbox) or f"exit status {done.returncode}"
        if len(detail) > 2000:
            detail = detail[:2000] + "..."
        return "", f"kustomize build failed: {detail}"
    return done.stdout.decode("utf-8", errors="replace"), ""


def _without_sandbox(text: str, sandbox: Path) -> str:
    for name in sorted({str(sandbox), str(sandbox.resolve())}, key=len, reverse=True):
        text = text.replace(name + "/", "").replace(name, ".")
    return text


def _with_origin_annotations(path: str, content: bytes) -> bytes | None:
    """`content` asking kustomize to annotate each object with where it came from, or None
    when it is not a mapping we can add to (kustomize then reports what is wrong)."""
    documents, problems = load_file(SourceFile(path, content))
    if problems or len(documents) != 1 or not isinstance(documents[0].body, dict):
        return None
    body = dict(documents[0].body)
    metadata = body.get("buildMetadata", [])
    if not isinstance(metadata, list):
        return None
    if "originAnnotations" not in metadata:
        body["buildMetadata"] = [*metadata, "originAnnotations"]
    return yaml.safe_dump(body, sort_keys=False, allow_unicode=True).encode()


# --- attributing the output ------------------------------------------------------------------


def _split(output: str, folder: str, kfile: str, contents: Mapping[str, bytes]) -> Files:
    """One `SourceFile` per object of kustomize's `output`, named after where it came from."""
    files: list[SourceFile] = []
    problems: list[Diagnostic] = []
    originals = _Originals(contents)
    for chunk in re.split(r"^---[ \t]*$", output, flags=re.MULTILINE):
        if not chunk.strip():
            continue
        documents, trouble = load_file(SourceFile(kfile, chunk.encode()))
        problems += trouble
        for document in documents:
            body = document.body
            origin = _pop_origin(body) if isinstance(body, dict) else None
            path, line = originals.place(body, origin, folder, kfile)
            text = yaml.safe_dump(body, sort_keys=False, allow_unicode=True)
            files.append(SourceFile(path, ("\n" * (line - 1) + text).encode()))
    return files, problems


def _pop_origin(body: dict[str, Any]) -> dict[str, Any] | None:
    metadata = body.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    if not isinstance(annotations, dict) or ORIGIN_ANNOTATION not in annotations:
        return None
    assert isinstance(metadata, dict)
    text = annotations.pop(ORIGIN_ANNOTATION)
    if not annotations:
        del metadata["annotations"]
    if not isinstance(text, str):
        return None
    documents, problems = load_file(SourceFile(ORIGIN_ANNOTATION, text.encode()))
    if problems or len(documents) != 1 or not isinstance(documents[0].body, dict):
        return None
    origin: dict[str, Any] = documents[0].body
    return origin


class _Originals:
    """The source files rendered objects came from, loaded once each."""

    def __init__(self, contents: Mapping[str, bytes]) -> None:
        self.contents = contents
        self.loaded: dict[str, list[Document]] = {}

    def documents(self, path: str) -> list[Document]:
        if path not in self.loaded:
            documents, _ = load_file(SourceFile(path, self.contents[path]))
            self.loaded[path] = documents
        return self.loaded[path]

    def place(self, body: Any, origin: Mapping[str, Any] | None, folder: str, kfile: str) -> tuple[str, int]:
        """(file, line) an object of kustomize's output is attributed to."""
        if origin is None or "repo" in origin:
            return kfile, 1
        kind, name = _kind_and_name(body)
        source = origin.get("path")
        if isinstance(source, str):
            path = self._inside(folder, source)
            if path is None:
                return kfile, 1
            return path, _document_line(self.documents(path), kind, name)
        configured = origin.get("configuredIn")
        if isinstance(configured, str):
            path = self._inside(folder, configured)
            if path is None:
                return kfile, 1
            by = origin.get("configuredBy")
            generator = by.get("kind") if isinstance(by, dict) else None
            return path, self._generator_line(path, _GENERATORS.get(str(generator), "generators"), name)
        return kfile, 1

    def _inside(self, folder: str, relative: str) -> str | None:
        path = posixpath.normpath(posixpath.join(folder, relative))
        return path if path in self.contents else None

    def _generator_line(self, kfile: str, field: str, name: str) -> int:
        documents = self.documents(kfile)
        if len(documents) != 1 or not isinstance(documents[0].body, dict):
            return 1
        document = documents[0]
        entries = document.body.get(field)
        best: tuple[int, int] | None = None
        for index, entry in enumerate(entries if isinstance(entries, list) else []):
            named = entry.get("name") if isinstance(entry, dict) else None
            if isinstance(named, str) and named and named in name and (best is None or len(named) > best[0]):
                best = (len(named), index)
        if best is not None:
            return document.location((field, best[1])).line
        return document.location((field,), key=True).line


def _kind_and_name(body: Any) -> tuple[str, str]:
    if not isinstance(body, dict):
        return "", ""
    metadata = body.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return str(body.get("kind", "")), name if isinstance(name, str) else ""


def _document_line(documents: Sequence[Document], kind: str, name: str) -> int:
    """The line where the document of `kind` that became `name` begins (kustomize may have
    added a prefix or suffix to its name)."""
    same_kind = [d for d in documents if _kind_and_name(d.body)[0] == kind]
    written = [(d, _kind_and_name(d.body)[1]) for d in same_kind]
    exact = [d for d, original in written if original == name]
    within = sorted(
        ((d, original) for d, original in written if original and original in name),
        key=lambda pair: -len(pair[1]),
    )
    for candidates in (exact, [d for d, _ in within], same_kind):
        if candidates:
            return candidates[0].location().line
    return 1


def clear_cache() -> None:
    """Forget remembered renders (tests that change what kustomize is found use it)."""
    with _cache_lock:
        _cache.clear()
    _embeds_kustomize_5.cache_clear()


__all__ = [
    "INSTALL_HINT",
    "KUSTOMIZATION_FILES",
    "clear_cache",
    "covers",
    "find_kustomize",
    "kustomization_file",
    "render",
    "roots",
]
