"""Reading training config files and override values as untrusted text: bounded in size, nodes and depth.

* The file is read with :func:`psaguard.checkpoints.files.read_regular_file` (a FIFO or device is refused at once, at
  most :data:`MAX_CONFIG_BYTES`); ``.json`` is parsed strictly (:func:`psaguard.checkpoints.files.parse_json`).
* YAML goes through a safe loader that bounds what its aliases expand to before anything is constructed: a
  377-byte "billion laughs" file names 10^9 nodes through nested aliases, cheap as a graph but expanded by
  every consumer that walks it (the overrides' deep copy, pydantic). The composed graph is measured as the
  tree it stands for: at most :data:`MAX_CONFIG_NODES` nodes and :data:`MAX_CONFIG_DEPTH` levels, no alias
  cycles; integers have at most :data:`~psaguard.checkpoints.files.MAX_JSON_INT_DIGITS` digits.

Every failure is a :class:`~psaguard.errors.ConfigError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from psaguard.checkpoints.files import MAX_JSON_INT_DIGITS, parse_json, read_regular_file
from psaguard.errors import ConfigError

__all__ = ["MAX_CONFIG_BYTES", "MAX_CONFIG_DEPTH", "MAX_CONFIG_NODES", "parse_yaml", "read_config_mapping"]

MAX_CONFIG_BYTES = 1024 * 1024
"""Largest config file read: a real one is a few KB."""

MAX_CONFIG_NODES = 100_000
"""Most YAML nodes a config may stand for, counting every alias as the copy it expands to."""

MAX_CONFIG_DEPTH = 64
"""Deepest nesting of a config (a real one nests 3 levels)."""


class _LimitError(yaml.YAMLError):
    pass


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` refusing deep nesting while composing and oversized alias expansion before building."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        # The composer recurses once per level: bounding it turns 20,000 '[' into an error, not a RecursionError.
        self._depth += 1
        try:
            if self._depth > MAX_CONFIG_DEPTH:
                raise _LimitError(f"nested deeper than {MAX_CONFIG_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node: Any) -> Any:
        size, height = _expanded_shape(node, {}, set())
        if height > MAX_CONFIG_DEPTH:
            raise _LimitError(f"aliases nest the document deeper than {MAX_CONFIG_DEPTH} levels")
        if size > MAX_CONFIG_NODES:
            raise _LimitError(f"the document expands to {size} nodes through its aliases (at most {MAX_CONFIG_NODES})")
        return super().construct_document(node)


def _expanded_shape(node: Any, shapes: dict[int, tuple[int, int]], open_nodes: set[int]) -> tuple[int, int]:
    """(nodes, levels) of the tree ``node`` stands for once aliases are copied; memoised per node, cycles refused.

    Both saturate just above their limits, so the recursion stays within :data:`MAX_CONFIG_DEPTH` + 1 levels.
    """
    key = id(node)
    if key in shapes:
        return shapes[key]
    if key in open_nodes:
        raise _LimitError("an alias refers to a node that contains it (a recursive structure)")
    if len(open_nodes) > MAX_CONFIG_DEPTH:
        return MAX_CONFIG_NODES + 1, MAX_CONFIG_DEPTH + 1
    open_nodes.add(key)
    shape = _shape_over(_children(node), shapes, open_nodes)
    open_nodes.discard(key)
    shapes[key] = shape
    return shape


def _children(node: Any) -> list[Any]:
    """The nodes a sequence or mapping node holds (keys and values); none for a scalar."""
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _shape_over(children: list[Any], shapes: dict[int, tuple[int, int]], open_nodes: set[int]) -> tuple[int, int]:
    """(nodes, levels) of a node over ``children``, saturated just above the limits."""
    size, height = 1, 1
    for child in children:
        child_size, child_height = _expanded_shape(child, shapes, open_nodes)
        size = min(size + child_size, MAX_CONFIG_NODES + 1)
        height = max(height, min(child_height + 1, MAX_CONFIG_DEPTH + 1))
        if size > MAX_CONFIG_NODES or height > MAX_CONFIG_DEPTH:
            break
    return size, height


def _bounded_int(loader: _BoundedLoader, node: Any) -> int:
    text = str(node.value).replace("_", "").lstrip("+-")
    if len(text) > MAX_JSON_INT_DIGITS:
        raise _LimitError(f"integer of {len(text)} digits is longer than {MAX_JSON_INT_DIGITS}")
    return loader.construct_yaml_int(node)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _bounded_int)  # copies the table: SafeLoader is untouched


def parse_yaml(text: str, what: str) -> Any:
    """``text`` parsed as one YAML document within the bounds above; :class:`ConfigError` naming ``what``."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # a SafeLoader subclass: no arbitrary objects
    # What the safe constructors leak on malformed scalars: ValueError (a 30th of February), IndexError (an
    # empty '!!int'), TypeError, OverflowError, KeyError.
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, IndexError, KeyError, RecursionError) as err:
        reason = str(err) if isinstance(err, _LimitError) else f"{type(err).__name__}: {err}"
        raise ConfigError(f"cannot parse {what}: {reason}") from err


def read_config_mapping(path: Path) -> dict[str, Any]:
    """The mapping in config file ``path`` (YAML, or strict JSON for ``.json``); empty for an empty file."""
    data = read_regular_file(path, MAX_CONFIG_BYTES, ConfigError, "config")
    if path.suffix == ".json":
        raw = parse_json(data, ConfigError, f"config {path}")
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"cannot read config {path}: {err}") from err
        raw = parse_yaml(text, f"config {path}")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must hold a mapping, got {type(raw).__name__}")
    return raw
