"""YAML files read with bounds: size, encoding, nesting depth, alias expansion, integer length.

PyYAML's ``safe_load`` constructs no arbitrary objects, but it will read a file of any size
(``/dev/zero`` ends in a MemoryError), recurse once per level of nesting (10,000 ``[`` end in
a RecursionError) and compose aliases into a graph whose expansion a caller walking it pays
for: a 433-byte "billion laughs" file is a list of 10^9 strings to anything that iterates or
prints it. This module refuses all of these before the caller sees the data, with one short
line naming the file: :class:`YamlFileError`, a ``ValueError``.

``load_file(path)`` is the entry point; ``loads(text, name)`` parses text already in memory.
The limits are keyword arguments with the module defaults below.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

MAX_BYTES = 2**20  # 1 MiB: a configuration is a few KiB
MAX_DEPTH = 64  # levels of nested collections, aliases expanded
MAX_NODES = 100_000  # scalars and collections in the document, aliases expanded
MAX_INT_CHARS = 1000  # longer integer scalars (sexagesimal ones cost quadratic time) refused
_MAX_PROBLEM = 100  # characters of a parser message kept in the error line
_MAX_PATH = 100  # characters of a path kept in the error line


class YamlFileError(ValueError):
    """A file that is not a bounded, UTF-8 YAML document; the message is one short line."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def cut(text: str, limit: int = 60) -> str:
    """``text`` on one line and at most ``limit`` characters (an ellipsis marks a cut)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: max(0, limit - 3)] + "..."


_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxdict, _repr.maxlist, _repr.maxtuple, _repr.maxset = 2, 4, 6, 6, 6
_repr.maxstring, _repr.maxother, _repr.maxlong = 60, 60, 40


def short(value: Any, limit: int = 60) -> str:
    """A repr of ``value`` for an error line: at most ``limit`` characters, computed without
    building the full repr of a huge or deeply nested value."""
    try:
        text = _repr.repr(value)
    except (ValueError, RecursionError, MemoryError, OverflowError):
        text = f"<{type(value).__name__}>"
    return cut(text, limit)


def as_float(value: int | float) -> float:
    """A YAML number as a float; an integer too large for one is infinite (so that the
    caller's finiteness check refuses it rather than an OverflowError escaping)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def display_path(path: str | Path) -> str:
    """A path for an error line: a long one keeps its tail."""
    s = str(path).replace("\n", "\\n")
    return s if len(s) <= _MAX_PATH else "..." + s[-(_MAX_PATH - 3):]


# What PyYAML's constructors raise, besides YAMLError, on values they cannot build.
_CONSTRUCTOR_BUGS = (ValueError, TypeError, ArithmeticError, LookupError, AttributeError)


class _Limits(yaml.constructor.ConstructorError):
    """A limit exceeded while composing; carries its own mark."""


class _Bounds:
    """The checks, mixed into a loader: deep nesting, large alias expansions, recursive
    aliases and over-long integers are refused while the document is composed, before
    anything is constructed."""

    max_depth = MAX_DEPTH
    max_nodes = MAX_NODES
    # What the loader this is mixed into provides (PyYAML's composer and parser).
    anchors: dict[str, Node]
    peek_event: Callable[[], Any]
    check_event: Callable[..., bool]

    def _init_bounds(self) -> None:
        self._depth = 0
        self._composed = 0  # nodes composed from events (aliases not counted)
        # id(node) -> (expanded node count, expanded height), for nodes fully composed.
        # The nodes themselves stay alive in the document, so ids are not reused.
        self._stats: dict[int, tuple[int, int]] = {}

    def _refuse(self, node_or_mark: Any, problem: str) -> _Limits:
        mark = getattr(node_or_mark, "start_mark", node_or_mark)
        return _Limits(None, None, problem, mark)

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self._depth += 1
        if self._depth > self.max_depth:
            raise self._refuse(self.peek_event(),
                               f"nested more than {self.max_depth} levels deep")
        try:
            if self.check_event(AliasEvent):
                anchored = self.anchors.get(self.peek_event().anchor)
                if anchored is not None and id(anchored) not in self._stats:
                    # the anchored collection is still being composed: it would contain itself
                    raise self._refuse(self.peek_event(), "an alias inside the collection it "
                                                          "names (a recursive alias)")
            else:
                self._composed += 1
                if self._composed > self.max_nodes:
                    raise self._refuse(self.peek_event(), f"more than {self.max_nodes} values")
            node = super().compose_node(parent, index)  # type: ignore[misc]
        finally:
            self._depth -= 1
        size, height = self._measure(node)
        if size > self.max_nodes:
            raise self._refuse(node, f"more than {self.max_nodes} values once its aliases "
                                     f"are expanded")
        if self._depth + height > self.max_depth:
            raise self._refuse(node, f"nested more than {self.max_depth} levels deep once "
                                     f"aliases are expanded")
        return node

    def _measure(self, node: Node) -> tuple[int, int]:
        known = self._stats.get(id(node))
        if known is not None:
            return known
        if isinstance(node, ScalarNode):
            stats = (1, 1)
        else:
            if isinstance(node, SequenceNode):
                children = list(node.value)
            elif isinstance(node, MappingNode):
                children = [n for pair in node.value for n in pair]
            else:  # pragma: no cover - PyYAML has no other node kind
                children = []
            size, height = 1, 0
            for child in children:
                got = self._stats[id(child)]  # composed before its parent ends
                size += got[0]
                height = max(height, got[1])
            stats = (size, height + 1)
        self._stats[id(node)] = stats
        return stats

    def construct_yaml_int(self, node: ScalarNode) -> int:
        if len(node.value) > MAX_INT_CHARS:
            raise self._refuse(node, f"an integer of {len(node.value)} characters "
                                     f"(at most {MAX_INT_CHARS})")
        return super().construct_yaml_int(node)  # type: ignore[misc]  # the loader's

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)  # type: ignore[misc]  # the loader's
        except yaml.YAMLError:
            raise
        except _CONSTRUCTOR_BUGS as e:  # a timestamp 2024-13-45, an empty `!!int`
            raise self._refuse(node, f"cannot read this value: {e or type(e).__name__}") \
                from None


class BoundedLoader(_Bounds, yaml.SafeLoader):
    """``yaml.SafeLoader`` with the bounds (pure Python)."""

    def __init__(self, stream: Any) -> None:
        yaml.SafeLoader.__init__(self, stream)
        self._init_bounds()


BoundedLoader.add_constructor("tag:yaml.org,2002:int", BoundedLoader.construct_yaml_int)

FastBoundedLoader: type | None = None
try:
    from yaml.cyaml import CParser
except ImportError:  # PyYAML built without libyaml
    pass
else:
    class _FastBoundedLoader(_Bounds, Composer, CParser, SafeConstructor, Resolver):
        """libyaml's scanner and parser (about ten times faster), PyYAML's composer with the
        bounds, the safe constructor: the same limits as :class:`BoundedLoader`."""

        def __init__(self, stream: Any) -> None:
            CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
            self._init_bounds()

    _FastBoundedLoader.add_constructor("tag:yaml.org,2002:int",
                                       _FastBoundedLoader.construct_yaml_int)
    FastBoundedLoader = _FastBoundedLoader


def _problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    problem = getattr(e, "problem", None)
    if not problem:
        lines = str(e).splitlines()
        problem = lines[0] if lines else type(e).__name__
    context = getattr(e, "context", None)
    if context and isinstance(e, yaml.composer.ComposerError):
        problem = f"{context}, {problem}"  # "expected a single document ..., but found ..."
    return f"not valid YAML{where}: {cut(problem, _MAX_PROBLEM)}"


def loads(text: str | bytes, name: str = "<string>", *, max_bytes: int = MAX_BYTES,
          max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> Any:
    """Parse one YAML document held in memory, with the same limits as :func:`load_file`;
    ``name`` opens the error line (``config file /etc/x.yaml``)."""
    if isinstance(text, str):
        if len(text) > max_bytes and len(text.encode("utf-8", "surrogatepass")) > max_bytes:
            raise YamlFileError(name, f"larger than {_size(max_bytes)}")
    else:
        if len(text) > max_bytes:
            raise YamlFileError(name, f"larger than {_size(max_bytes)}")
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise YamlFileError(name, f"not UTF-8 text (byte {e.start})") from None
    loader = None
    try:
        loader = (FastBoundedLoader or BoundedLoader)(text)
        loader.max_depth, loader.max_nodes = max_depth, max_nodes
        return loader.get_single_data()
    except yaml.YAMLError as e:
        raise YamlFileError(name, _problem(e)) from None
    except (*_CONSTRUCTOR_BUGS, RecursionError) as e:
        # Defence in depth: a constructor failing outside construct_object.
        raise YamlFileError(name, f"not valid YAML: {cut(str(e), _MAX_PROBLEM)}") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_file(path: str | Path, *, label: str = "file", max_bytes: int = MAX_BYTES,
              max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> Any:
    """The one YAML document in ``path``, read with bounds. Reads at most ``max_bytes`` + 1
    bytes, so a device or a huge file is refused at once. Raises :class:`YamlFileError`,
    whose message reads ``{label} {path}: {reason}`` on one line."""
    name = f"{label} {display_path(path)}"
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise YamlFileError(name, cut(e.strerror or str(e), _MAX_PROBLEM)) from None
    except ValueError as e:  # a path with a NUL byte
        raise YamlFileError(name, f"not a usable path ({cut(str(e), 40)})") from None
    return loads(data, name, max_bytes=max_bytes, max_depth=max_depth, max_nodes=max_nodes)


def _size(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"
