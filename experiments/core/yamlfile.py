"""YAML as people write it, read strictly: safe, numbers as numbers, no silent duplicates.

PyYAML reads YAML 1.1, where `1e-5` (no dot) is text, not a number: a known W&B bug that
makes `min: 1e-5` a string. Here every float that YAML 1.2 reads as a number is one. A
key given twice in one mapping is an error naming the key and both lines (the YAML spec
forbids it; PyYAML silently keeps the last value). The same reader reads a sweep file and
a `--set` value, so one spelling means one thing in both.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

# YAML 1.2's float, as PyYAML's own resolver would have it with the exponent's dot optional.
_FLOAT = re.compile(r"""^(?:
     [-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)


class DuplicateKey(yaml.YAMLError):
    """A mapping gives the same key twice."""

    def __init__(self, key: Any, first: int, again: int) -> None:
        super().__init__(f"key {key!r} given twice (lines {first} and {again})")
        self.key, self.line = key, again


class _Loader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`, merged below
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKey(key, seen[key], line)
            except TypeError:  # an unhashable key: the base class says so
                break
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def load(text: str) -> Any:
    """Parse YAML text; yaml.YAMLError (DuplicateKey among them) when it is not valid."""
    return yaml.load(text, Loader=_Loader)
