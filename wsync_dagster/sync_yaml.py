"""A sync file's YAML, read defensively: UTF-8, bounded aliases, unique keys, no value in any error."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

# A sync file holds tens of values, a long mapping a few thousand; aliases may share parts, not multiply them.
MAX_VALUES = 10_000
_KEY_ON_LINE = re.compile(r"\s*(?:-\s+)?([A-Za-z_$][\w.$-]*)\s*:(?:\s|$)")
# A key an error may repeat: a name. Any other key may be text pasted in the wrong place, such as SQL.
_NAME_KEY = re.compile(r"[\w$*.-]{1,64}\Z")
# What datetime says of an impossible date or time; anything else it says may quote the value.
_DATE_PROBLEM = re.compile(
    r"year -?\d+ is out of range|day is out of range for month|month must be in 1\.\.12"
    r"|(hour|minute|second) must be in 0\.\.\d+"
)
_TAG_KINDS = {
    "tag:yaml.org,2002:timestamp": "date",
    "tag:yaml.org,2002:int": "whole number",
    "tag:yaml.org,2002:float": "number",
    "tag:yaml.org,2002:bool": "true or false",
}


class YamlFileError(ValueError):
    """A file that is not readable, safe YAML; the message names the file, line, column and key."""


def shown_key(key: Any) -> str:
    """A key as an error names it: itself when it is a name, else a placeholder that repeats none of it."""
    return str(key) if _NAME_KEY.match(str(key)) else "(a key that is not a name)"


def read_yaml(path: Path) -> Any:
    """The file's YAML document as Python values."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise YamlFileError(f"{path}: cannot read: {error.strerror}") from None
    text = _decode(path, data)
    try:
        loader = _SyncFileLoader(text)
    except yaml.reader.ReaderError as error:  # the reader checks the whole text before any parsing
        line = text.count("\n", 0, error.position) + 1
        column = error.position - text.rfind("\n", 0, error.position)
        raise YamlFileError(
            f"{path}: line {line}, column {column}: character U+{error.character:04X} is not allowed in YAML "
            "(control characters other than tab and line breaks are not); remove it"
        ) from None
    node = None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_shape(path, text, node)
        return loader.construct_document(node)
    except _UnbuildableValue as failure:
        raise YamlFileError(_value_error(path, text, node, failure)) from None
    except yaml.MarkedYAMLError as error:
        raise YamlFileError(_syntax_error(path, text, error)) from None
    except yaml.YAMLError as error:
        raise YamlFileError(f"{path}: invalid YAML: {type(error).__name__}") from None
    except RecursionError:
        raise YamlFileError(f"{path}: invalid YAML: nested too deeply") from None
    finally:
        loader.dispose()


class _UnbuildableValue(Exception):
    """A scalar YAML parsed but could not turn into its value (2024-02-30, !!int x); not a YAMLError."""

    def __init__(self, node: Node, error: Exception) -> None:
        super().__init__(type(error).__name__)
        self.node = node
        self.error = error


class _SyncFileLoader(yaml.SafeLoader):
    """SafeLoader whose value constructors fail with the node they could not build."""

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        """The node's value; a plain error of a constructor becomes an _UnbuildableValue naming the node."""
        try:
            return super().construct_object(node, deep=deep)
        except (yaml.YAMLError, RecursionError, _UnbuildableValue):
            raise
        # datetime raises ValueError on 2024-02-30; explicit tags (!!int x, !!bool y) raise
        # ValueError, KeyError, IndexError or AttributeError, with the value in the message.
        except Exception as error:
            raise _UnbuildableValue(node, error) from None


def _value_error(path: Path, text: str, root: Node | None, failure: _UnbuildableValue) -> str:
    """Which field, where, and what kind of value it is not: never the value."""
    node = failure.node
    field = _field_of(root, node) if root is not None else None
    where = f"{field} (line {node.start_mark.line + 1})" if field else _where(text, node.start_mark)
    kind = _TAG_KINDS.get(node.tag, f"value of tag {node.tag}")
    if kind == "date":
        has_time = isinstance(node, ScalarNode) and any(mark in node.value for mark in ("T", "t", " ", ":"))
        kind = "date and time" if has_time else "date"
        reason = str(failure.error)
        detail = f" ({reason})" if _DATE_PROBLEM.fullmatch(reason) else ""
        return f"{path}: {where}: not a real {kind}{detail}"
    return f"{path}: {where}: YAML cannot read this as a {kind}"


def _field_of(root: Node, target: Node) -> str | None:
    """The dotted path (sync.start, mapping[2].value) of a node, or of the mapping that has it as a key."""
    stack: list[tuple[Node, str]] = [(root, "")]
    seen: set[int] = set()
    while stack:
        node, where = stack.pop()
        if node is target:
            return where or None
        if id(node) in seen:
            continue  # an alias: its value was reached once already
        seen.add(id(node))
        if isinstance(node, SequenceNode):
            # Pushed last first, so that the first place in the file that holds the node is named.
            stack.extend((item, f"{where}[{index}]") for index, item in reversed(list(enumerate(node.value))))
        elif isinstance(node, MappingNode):
            for key, value in reversed(node.value):
                if key is target:
                    return f"a key of {where}" if where else "a top-level key"
                name = shown_key(key.value) if isinstance(key, ScalarNode) else "?"
                stack.append((value, f"{where}.{name}" if where else name))
    return None


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line_start = data.rfind(b"\n", 0, error.start) + 1
        line = data.count(b"\n", 0, error.start) + 1
        column = len(data[line_start : error.start].decode("utf-8", "replace")) + 1
        raise YamlFileError(
            f"{path}: line {line}, column {column}: not UTF-8 text (byte 0x{data[error.start]:02x}); "
            "save the file as UTF-8"
        ) from None


def _syntax_error(path: Path, text: str, error: yaml.MarkedYAMLError) -> str:
    """Where and what, never the offending line: it may hold a secret written by mistake."""
    # An unclosed quote or bracket is where it opened; a broken block is where the parser noticed.
    opened = (error.context or "").startswith(("while scanning", "while parsing a flow"))
    mark = error.context_mark if opened and error.context_mark else error.problem_mark or error.context_mark
    what = ", ".join(part for part in (error.context, error.problem) if part)
    if mark is None:
        return f"{path}: invalid YAML: {what}"
    return f"{path}: invalid YAML at {_where(text, mark)}: {what}"


def _where(text: str, mark: yaml.Mark, *, with_key: bool = True) -> str:
    """Line, column and the key written on that line: never the line itself."""
    lines = text.splitlines()
    where = f"line {mark.line + 1}, column {mark.column + 1}"
    key = _KEY_ON_LINE.match(lines[mark.line]) if with_key and mark.line < len(lines) else None
    return f"{where} (key '{key.group(1)}')" if key else where


def _check_shape(path: Path, text: str, root: Node) -> None:
    """Refuse a key given twice, an alias to itself, and aliases that expand beyond MAX_VALUES."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise YamlFileError(
                f"{path}: invalid YAML at {_where(text, node.start_mark)}: an alias refers to the value that holds it"
            )
        open_nodes.add(id(node))
        total = 1
        if isinstance(node, SequenceNode):
            total += sum(size(item) for item in node.value)
        elif isinstance(node, MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                if isinstance(key, ScalarNode):
                    if key.value in seen:
                        raise YamlFileError(
                            f"{path}: invalid YAML at {_where(text, key.start_mark, with_key=False)}: "
                            f"key '{shown_key(key.value)}' is given twice"
                        )
                    seen.add(key.value)
                total += size(key) + size(value)
        open_nodes.discard(id(node))
        sizes[id(node)] = total
        return total

    if size(root) > MAX_VALUES:
        node = root
        # Point at the value whose own aliases multiply it: descend while one child alone is too big.
        while big := [child for child in _children(node) if sizes[id(child)] > MAX_VALUES]:
            node = big[0]
        raise YamlFileError(
            f"{path}: YAML aliases at {_where(text, node.start_mark)} expand to more than "
            f"{MAX_VALUES:,} values; a sync file may share small parts with anchors, not multiply them"
        )


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []
