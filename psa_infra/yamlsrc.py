"""Read YAML while remembering where each key and item stands.

Validation errors name a line, so loading keeps a map from every path in the
document (``("containers", 2, "memory")``) to the 1-based line of its key or
item. Duplicate mapping keys, which PyYAML would silently overwrite, are an
error here: a repeated key in an inventory is almost always a mistake.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import InventoryError

Loc = tuple[str | int, ...]
# libyaml's parser when PyYAML was built with it: the same nodes, marks and
# errors, several times faster.
LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class Document:
    """A YAML document's data and the line of every path in it."""

    path: Path
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)
    # Paths set by an override (``--set``), and how each was given.
    overrides: dict[Loc, str] = field(default_factory=dict)

    def line(self, loc: Loc) -> int | None:
        """Return the line of ``loc``, or of its nearest enclosing path."""
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get(())

    def where(self, loc: Loc) -> str:
        """Return ``file line N`` for ``loc``, or the override that set it."""
        loc = tuple(loc)
        for length in range(len(loc), 0, -1):
            given = self.overrides.get(loc[:length])
            if given is not None:
                return f"{self.path} ({given})"
        line = self.line(loc)
        return f"{self.path}" + (f" line {line}" if line else "")

    def override(self, assignment: str, source: str) -> None:
        """Apply ``dotted.key=value`` over the document's data.

        The value is read as YAML (``4G``, ``true``, ``[a, b]``); the key must
        name mapping keys only. ``source`` says where the assignment came from.
        """
        key, sep, text = assignment.partition("=")
        parts = tuple(key.strip().split("."))
        if not sep or not all(parts) or not re.fullmatch(r"[\w.-]+", key.strip()):
            # The text may hold a mistyped secret: name it by position only.
            raise InventoryError(
                f"{source}: an override is not KEY=VALUE",
                hint="for example --set packages.nodejs=debian",
            )
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        if not isinstance(self.data, dict):
            self.data = {}
        node = self.data
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                shown = ".".join(parts[: depth + 1])
                raise InventoryError(
                    f"{source}: cannot set '{key}': {shown} is not a mapping"
                )
            node = child
        node[parts[-1]] = value
        # A value under secrets is never a valid override, and is never shown.
        shown = "********" if parts[0] == "secrets" else text
        self.overrides[parts] = f"{source} {key}={shown}"


def format_loc(loc: Loc) -> str:
    """Spell a path the way an operator reads it: ``containers[2].memory``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(document)"


class _Builder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: dict[Loc, int] = {}

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self.lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise self._error(key_node, "a mapping key must be a plain value")
                key = yaml.constructor.SafeConstructor().construct_object(key_node)
                if not isinstance(key, str | int):
                    key = str(key)
                if key in result:
                    first = self.lines.get((*loc, key))
                    raise self._error(
                        key_node,
                        f"duplicate key '{format_loc((*loc, key))}'"
                        + (f" (first at line {first})" if first else ""),
                    )
                self.lines[(*loc, key)] = key_node.start_mark.line + 1
                result[key] = self.build(value_node, (*loc, key))
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
        return yaml.constructor.SafeConstructor().construct_object(node)

    def _error(self, node: yaml.Node, message: str) -> InventoryError:
        return InventoryError(f"{self.path} line {node.start_mark.line + 1}: {message}")


def load_yaml(path: Path, display: Path | None = None) -> Document:
    """Load one YAML file into a :class:`Document`; errors name file and line."""
    shown = display or path
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InventoryError(
            f"{shown}: no such file", hint="check the path, or pass --root"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError(f"{shown}: cannot read: {exc}") from exc
    try:
        try:
            node = yaml.compose(text, Loader=LOADER)
        except yaml.YAMLError:
            # Python's parser words its errors better than libyaml's: ask it.
            node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f" line {mark.line + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise InventoryError(
            f"{shown}{line}: invalid YAML: {problem}",
            hint="check the indentation there, and quote values that contain ': '",
        ) from None
    except yaml.YAMLError as exc:
        raise InventoryError(f"{shown}: invalid YAML: {exc}") from None
    if node is None:
        return Document(shown, {}, {(): 1})
    builder = _Builder(shown)
    try:
        data = builder.build(node, ())
    except yaml.YAMLError as exc:
        raise InventoryError(f"{shown}: invalid YAML: {exc}") from None
    return Document(shown, data, builder.lines)
