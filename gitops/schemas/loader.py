"""Manifest files in, plain YAML documents with source positions out.

`load_file` turns one `SourceFile` into `Document`s: the parsed YAML as plain dicts,
lists and scalars, plus a map from each field path (`("spec", "replicas")`) to the
1-based line and column where its value (and its key) was written, so that every later
finding can point at the exact spot. It builds the values itself from the YAML event
stream of the safe loader, iteratively, which is what lets it refuse hostile input with
a clear error instead of crashing or hanging: oversized or binary files, alias bombs
("billion laughs"), deep nesting, recursive aliases and tags other than the standard
ones (`!!python/object` is an error, never executed).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

from gitops.model import Diagnostic, SourceLocation

__all__ = [
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_NODES",
    "Document",
    "FieldPath",
    "SourceFile",
    "format_path",
    "load_file",
]

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_NODES = 100_000
"""Keys and values in one document, counting every expansion of an alias."""
MAX_DEPTH = 100
"""Nesting of mappings and lists in one document; real manifests stay below 20."""

FieldPath = tuple[str | int, ...]
Position = tuple[int, int]

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(_TAG + t for t in ("str", "int", "float", "bool", "null", "timestamp"))
_MERGE_TAG = _TAG + "merge"
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_MERGE = object()
"""Stands for the merge key `<<` while its mapping is being built."""


@dataclass(frozen=True)
class SourceFile:
    path: str
    """posix path relative to the source root, used in messages"""
    content: bytes


@dataclass(frozen=True)
class Document:
    """One YAML document of a file, with where each of its values and keys was written."""

    file: str
    body: Any
    values: Mapping[FieldPath, Position] = field(default_factory=dict)
    keys: Mapping[FieldPath, Position] = field(default_factory=dict)

    def location(self, path: FieldPath = (), *, key: bool = False) -> SourceLocation:
        """Where `path` was written: its key if asked and known, else its value.

        A path that was not written (a missing field, or a field reached through an alias
        or merge) falls back to the nearest enclosing value that was.
        """
        if key and path in self.keys:
            line, col = self.keys[path]
            return SourceLocation(self.file, line, col)
        for end in range(len(path), -1, -1):
            position = self.values.get(path[:end])
            if position is not None:
                return SourceLocation(self.file, *position)
        return SourceLocation(self.file)


def format_path(path: FieldPath) -> str:
    """`("spec", "containers", 0, "image")` -> `spec.containers[0].image`."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            text += f".{part}" if text else part
        else:
            text += f'["{part}"]'
    return text


class _Refused(Exception):
    """A document we will not build; carries the message and where the problem is."""

    def __init__(self, message: str, position: Position) -> None:
        super().__init__(message)
        self.message = message
        self.position = position


@dataclass
class _Anchor:
    value: Any
    nodes: int
    height: int
    complete: bool


@dataclass
class _Frame:
    container: dict[str, Any] | list[Any]
    path: FieldPath
    anchor: str | None
    nodes: int = 1
    height: int = 0
    key: str | None = None
    key_is_merge: bool = False
    merges: list[tuple[Any, Position]] = field(default_factory=list)
    explicit: set[str] = field(default_factory=set)


class _Builder:
    """Builds one document's plain value from YAML events, counting and bounding it."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.resolver = Resolver()
        self.constructor = SafeConstructor()
        self.anchors: dict[str, _Anchor] = {}
        self.stack: list[_Frame] = []
        self.values: dict[FieldPath, Position] = {}
        self.keys: dict[FieldPath, Position] = {}
        self.nodes = 0
        self.root: Any = None

    # -- scalars and tags --------------------------------------------------------------

    def _scalar(self, event: yaml.ScalarEvent) -> Any:
        tag = event.tag
        if tag is None or tag == "!":
            tag = self.resolver.resolve(yaml.ScalarNode, event.value, event.implicit)  # type: ignore[no-untyped-call]
        if tag == _MERGE_TAG:
            return _MERGE
        if tag not in _SCALAR_TAGS:
            raise _Refused(_tag_message(tag), _position(event))
        if tag == _TAG + "timestamp":
            # Kubernetes reads manifests as JSON, where a date is just a string.
            return event.value
        node = yaml.ScalarNode(tag, event.value, None, None)
        try:
            return self.constructor.construct_object(node, deep=True)
        except (yaml.constructor.ConstructorError, ValueError, OverflowError) as error:
            message = f"invalid {tag.removeprefix(_TAG)} value {event.value!r}"
            raise _Refused(message, _position(event)) from error

    def _collection_tag(self, event: yaml.CollectionStartEvent, default: str) -> None:
        tag = event.tag
        if tag is not None and tag not in ("!", default):
            raise _Refused(_tag_message(tag), _position(event))

    # -- tree --------------------------------------------------------------------------

    def _child_path(self, position: Position) -> FieldPath:
        if not self.stack:
            return ()
        frame = self.stack[-1]
        if isinstance(frame.container, list):
            return (*frame.path, len(frame.container))
        if frame.key is None:
            raise _Refused("mapping keys must be plain strings, not mappings or lists", position)
        if frame.key_is_merge:
            return frame.path
        return (*frame.path, frame.key)

    def _count(self, nodes: int, position: Position) -> None:
        self.nodes += nodes
        if self.nodes > MAX_NODES:
            raise _Refused(
                f"document has more than {MAX_NODES} keys and values (counting every use of an alias); "
                "refusing it as a likely alias bomb",
                position,
            )

    def _attach(self, value: Any, nodes: int, height: int, position: Position) -> None:
        if len(self.stack) + height > MAX_DEPTH:
            raise _Refused(f"document is nested more than {MAX_DEPTH} levels deep", position)
        if not self.stack:
            self.root = value
            return
        frame = self.stack[-1]
        frame.nodes += nodes
        frame.height = max(frame.height, height + 1)
        if isinstance(frame.container, list):
            frame.container.append(value)
        elif frame.key_is_merge:
            frame.merges.append((value, position))
            frame.key, frame.key_is_merge = None, False
        else:
            assert frame.key is not None
            frame.container[frame.key] = value
            frame.key = None

    def _take_key(self, value: Any, event: yaml.ScalarEvent | yaml.AliasEvent) -> None:
        frame = self.stack[-1]
        position = _position(event)
        if value is _MERGE:
            frame.key, frame.key_is_merge = "<<", True
            return
        if isinstance(event, yaml.ScalarEvent):
            key = event.value  # as written: `80:` is the key "80", as in Kubernetes' JSON
        elif isinstance(value, str):
            key = value
        else:
            raise _Refused("mapping keys must be plain strings, not mappings or lists", position)
        if key in frame.explicit:
            location = SourceLocation(self.file, *self.keys[(*frame.path, key)])
            raise _Refused(f'duplicate key "{key}" (first written at {location})', position)
        frame.explicit.add(key)
        frame.key = key
        self.keys[(*frame.path, key)] = position

    def _register(self, anchor: str | None, value: Any, nodes: int, height: int, complete: bool) -> None:
        if anchor is not None:
            self.anchors[anchor] = _Anchor(value, nodes, height, complete)

    def feed(self, event: yaml.Event) -> None:
        if isinstance(event, yaml.ScalarEvent | yaml.AliasEvent):
            if isinstance(event, yaml.AliasEvent):
                anchor = self.anchors.get(event.anchor or "")
                if anchor is None:
                    raise _Refused(f'unknown alias "*{event.anchor}"', _position(event))
                if not anchor.complete:
                    message = f'alias "*{event.anchor}" refers to a value that contains it'
                    raise _Refused(message, _position(event))
                value, nodes, height = anchor.value, anchor.nodes, anchor.height
            else:
                value, nodes, height = self._scalar(event), 1, 0
            frame = self.stack[-1] if self.stack else None
            if frame is not None and isinstance(frame.container, dict) and frame.key is None:
                self._take_key(value, event)
                self._count(1, _position(event))
                frame.nodes += 1
                return
            if value is _MERGE:
                raise _Refused('the merge key "<<" is only allowed as a mapping key', _position(event))
            path = self._child_path(_position(event))
            if not (frame is not None and frame.key_is_merge):
                self.values[path] = _position(event)
            if isinstance(event, yaml.ScalarEvent):
                self._register(event.anchor, value, 1, 0, complete=True)
            self._count(nodes, _position(event))
            self._attach(value, nodes, height, _position(event))
        elif isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
            is_map = isinstance(event, yaml.MappingStartEvent)
            self._collection_tag(event, _TAG + ("map" if is_map else "seq"))
            merging = bool(self.stack) and self.stack[-1].key_is_merge
            path = self._child_path(_position(event))
            if len(self.stack) >= MAX_DEPTH:
                raise _Refused(f"document is nested more than {MAX_DEPTH} levels deep", _position(event))
            container: dict[str, Any] | list[Any] = {} if is_map else []
            if merging:
                # Merged mappings are built aside, then copied in where no key was written.
                path = (*path, "<<", len(self.stack[-1].merges))
            self.values[path] = _position(event)
            self._count(1, _position(event))
            self._register(event.anchor, container, 0, 0, complete=False)
            self.stack.append(_Frame(container, path, event.anchor))
        elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
            frame = self.stack.pop()
            if isinstance(frame.container, dict) and frame.merges:
                self._apply_merges(frame)
            self._register(frame.anchor, frame.container, frame.nodes, frame.height, complete=True)
            start = self.values[frame.path]
            self._attach(frame.container, frame.nodes, frame.height, start)

    def _apply_merges(self, frame: _Frame) -> None:
        assert isinstance(frame.container, dict)
        sources: list[tuple[Any, Position]] = []
        for value, position in frame.merges:
            if isinstance(value, list):
                sources += [(item, position) for item in value]
            else:
                sources.append((value, position))
        for source, position in sources:
            if not isinstance(source, dict):
                raise _Refused('the merge key "<<" needs a mapping or a list of mappings', position)
            for key, value in source.items():
                if key not in frame.container:
                    frame.container[key] = value
                    self.values[(*frame.path, key)] = position
                    self.keys[(*frame.path, key)] = position


def _position(event: yaml.Event) -> Position:
    mark = event.start_mark
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


def _tag_message(tag: str) -> str:
    shown = "!!" + tag.removeprefix(_TAG) if tag.startswith(_TAG) else tag
    return (
        f"YAML tag {shown} is not allowed; only the standard tags "
        "(!!str, !!int, !!float, !!bool, !!null, !!map, !!seq) are"
    )


def _decode(file: SourceFile) -> tuple[str | None, Diagnostic | None]:
    def refuse(message: str, line: int = 1, col: int = 1) -> Diagnostic:
        return Diagnostic("error", message, SourceLocation(file.path, line, col))

    size = len(file.content)
    if size > MAX_FILE_BYTES:
        return None, refuse(f"file is {size} bytes; manifests are limited to {MAX_FILE_BYTES} bytes")
    nul = file.content.find(b"\0")
    if nul >= 0:
        line, col = _line_col(file.content, nul)
        message = "file looks binary (it contains a NUL byte); manifests must be UTF-8 text"
        return None, refuse(message, line, col)
    try:
        text = file.content.decode("utf-8")
    except UnicodeDecodeError as error:
        line, col = _line_col(file.content, error.start)
        return None, refuse(
            f"file is not UTF-8 text (invalid byte 0x{file.content[error.start]:02x}); "
            "manifests must be UTF-8 text",
            line,
            col,
        )
    return text.removeprefix("\ufeff"), None


def _line_col(content: bytes, offset: int) -> Position:
    before = content[:offset]
    line_start = before.rfind(b"\n") + 1
    return before.count(b"\n") + 1, offset - line_start + 1


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, refusing flow collections nested deeper than `MAX_DEPTH`.

    PyYAML's scanner does work proportional to the flow nesting for every token, so a
    file of four million `[` would take hours; it must stop at the limit, not after.
    """

    def fetch_flow_collection_start(self, TokenClass: type[yaml.Token]) -> None:
        if self.flow_level >= MAX_DEPTH:
            raise yaml.scanner.ScannerError(
                None, None, f"collections are nested more than {MAX_DEPTH} levels deep", self.get_mark()
            )
        super().fetch_flow_collection_start(TokenClass)


class _FastFailed(Exception):
    """libyaml found a syntax error: read the file again with PyYAML's scanner, whose
    messages and positions are the ones users see."""


def _libyaml_events(text: str) -> Iterator[yaml.Event]:
    """libyaml's events of `text`, until a collection opens past `MAX_DEPTH` (then the file
    is read again by the bounded scanner, whose refusal users see). libyaml reads ahead of
    the events it gives by at most a line, and refuses nesting past its own limit (1,000),
    so the work done past ours is bounded too."""
    parser = yaml.CBaseLoader(text)
    depth = 0
    try:
        while parser.check_event():
            event = parser.get_event()
            assert event is not None  # libyaml has an event whenever check_event() says so
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise _FastFailed("nested past the limit")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
            yield event
    except yaml.YAMLError as error:
        raise _FastFailed from error
    finally:
        parser.dispose()


def _fast_enough() -> bool:
    """Whether libyaml (about 4x faster) is there to read files first (`_libyaml_events`).
    It once read only files opening no more than `MAX_DEPTH` flow collections in all: a
    file of 1,500 Deployments written with `{...}` was read by PyYAML's scanner alone,
    2.8 s of validating it."""
    return hasattr(yaml, "CBaseLoader")


def _events(text: str) -> Iterator[yaml.Event]:
    loader = _BoundedLoader(text)
    try:
        while loader.check_event():
            yield loader.get_event()  # type: ignore[no-untyped-call]
    finally:
        loader.dispose()


def load_file(file: SourceFile) -> tuple[list[Document], list[Diagnostic]]:
    """The non-empty YAML documents of `file`, and the errors of those we refused.

    A syntax error ends the file (the parser cannot resynchronise); a document refused
    for its content (bad tag, alias bomb, too deep) is skipped and the next one is read.
    """
    text, problem = _decode(file)
    if text is None:
        assert problem is not None
        return [], [problem]
    if _fast_enough():
        try:
            return _load(file.path, _libyaml_events(text))
        except _FastFailed:
            pass
    return _load(file.path, _events(text))


def _load(path: str, events: Iterator[yaml.Event]) -> tuple[list[Document], list[Diagnostic]]:
    documents: list[Document] = []
    errors: list[Diagnostic] = []
    builder: _Builder | None = None
    refused = False
    try:
        for event in events:
            if isinstance(event, yaml.DocumentStartEvent):
                builder, refused = _Builder(path), False
            elif isinstance(event, yaml.DocumentEndEvent):
                if builder is not None and not refused and builder.root is not None:
                    documents.append(Document(path, builder.root, builder.values, builder.keys))
                builder = None
            elif builder is not None and not refused and not isinstance(event, yaml.StreamEndEvent):
                try:
                    builder.feed(event)
                except _Refused as refusal:
                    refused = True
                    location = SourceLocation(path, *refusal.position)
                    errors.append(Diagnostic("error", refusal.message, location))
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        problem_text = " ".join(p for p in (error.context, error.problem) if p)
        location = SourceLocation(path, line, col)
        errors.append(Diagnostic("error", f"invalid YAML: {problem_text}", location))
    except yaml.YAMLError as error:
        errors.append(Diagnostic("error", f"invalid YAML: {error}", SourceLocation(path)))
    except RecursionError:
        # The parser keeps its own stacks, so this is a last line of defence only.
        errors.append(Diagnostic("error", "document is nested too deeply", SourceLocation(path)))
    return documents, errors
