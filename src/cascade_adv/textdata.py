"""YAML and JSON text from files a user hands over, parsed within limits.

A config file, a ``key=value`` override or a checkpoint's metadata is text that
the user, or whoever sent them the file, controls.  Parsed as it is, a
20,000-deep nesting ends in a ``RecursionError`` (both parsers recurse once per
level) and an anchor / alias "billion laughs" document expands into ~10^9 values
when it is validated or printed.  These readers refuse, with one
:class:`~cascade_adv.errors.ConfigError` line (also a ``ValueError``):

- text longer than :data:`MAX_CHARS` characters;
- nesting deeper than :data:`MAX_DEPTH` levels, counted with every alias expanded;
- more than :data:`MAX_NODES` values with every alias expanded (a YAML alias may
  refer to its own anchor: refused too);
- anything else YAML / JSON cannot read, e.g. tags that would build Python objects
  (``!!python/object``), undefined aliases, tabs where YAML forbids them, integers
  longer than Python converts.

docs/reliability.md (class 6) lists the cases.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

import yaml

from cascade_adv.errors import ConfigError, shorten

#: The deepest nesting accepted (the project's configs nest 4 levels).
MAX_DEPTH = 32
#: The most values (mapping keys and values, list items) a document may expand to.
MAX_NODES = 100_000
#: The longest text accepted (the project's largest config is under 5,000 characters).
MAX_CHARS = 1_000_000


class _Refused(Exception):
    """A limit of this module exceeded (message: what and which limit)."""


class _BoundedLoader(yaml.SafeLoader):
    """``SafeLoader`` that stops composing below :data:`MAX_DEPTH` levels, before the
    composer's recursion can reach Python's limit."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nests deeper than the limit of {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expanded(root: yaml.Node) -> None:
    """Size and depth of the document with its aliases expanded (an alias is the node of
    its anchor, shared): computed once per node, without recursion, so a bomb of
    10^9 values costs as much as its text."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            open_nodes.discard(key)
            if size[key] > MAX_NODES:
                raise _Refused(f"expands (its aliases resolved) to more than the limit of "
                               f"{MAX_NODES:,} values")
            if depth[key] > MAX_DEPTH:
                raise _Refused(f"nests (its aliases resolved) deeper than the limit of "
                               f"{MAX_DEPTH} levels")
            continue
        if key in size:
            continue
        if key in open_nodes:
            raise _Refused("has an alias inside its own anchor (a value that contains itself)")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in size)


def _fail(message: str, fix: str) -> ConfigError:
    return ConfigError(f"{message}; {fix}" if fix else message)


def _problem(exc: Exception) -> str:
    """A short reason from a parser's exception (its first line, shortened)."""
    text = getattr(exc, "problem", None) or str(exc) or type(exc).__name__
    return shorten(" ".join(str(text).split()), 120)


def load_yaml(text: str, where: str, fix: str = "fix its syntax") -> Any:
    """The value of the YAML document ``text`` (``None`` when it is empty), parsed with
    ``yaml.safe_load``'s rules within this module's limits; otherwise
    :class:`ConfigError`: "``where`` is not valid YAML[ at line N] (reason); ``fix``",
    or the limit exceeded (an empty ``fix`` appends none)."""
    if len(text) > MAX_CHARS:
        raise _fail(f"{where} is {len(text):,} characters long, more than the limit of "
                    f"{MAX_CHARS:,}", fix)
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded(node)
        return loader.construct_document(node)
    except _Refused as exc:
        raise _fail(f"{where} {exc}", fix) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise _fail(f"{where} is not valid YAML{at} ({_problem(exc)})", fix) from None
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. a 5,000-digit integer
        raise _fail(f"{where} holds a value YAML cannot read ({_problem(exc)})", fix) from None
    finally:
        loader.dispose()


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def load_json(text: str | bytes, where: str, fix: str = "fix its syntax",
              max_chars: int = MAX_CHARS) -> Any:
    """The value of the JSON text ``text`` within this module's limits (``max_chars``
    for a larger kind of document, e.g. a safetensors header); otherwise
    :class:`ConfigError` naming ``where``, the problem and ``fix``."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise _fail(f"{where} is not UTF-8 text", fix) from None
    if len(text) > max_chars:
        raise _fail(f"{where} is {len(text):,} characters long, more than the limit of "
                    f"{max_chars:,}", fix)
    brackets = _BRACKET.findall(_JSON_STRING.sub("", text))  # nesting outside strings
    deepest = max(accumulate(1 if b in "[{" else -1 for b in brackets), default=0)
    if deepest > MAX_DEPTH:
        raise _fail(f"{where} nests deeper than the limit of {MAX_DEPTH} levels", fix)
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError, an integer too long to convert
        raise _fail(f"{where} is not valid JSON ({_problem(exc)})", fix) from None
