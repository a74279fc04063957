"""Safe YAML parsing that remembers where every value was written.

PyYAML's composer keeps each node's start mark; walking the node tree
ourselves (instead of ``yaml.safe_load``) lets the loader say
``profiles/prod.yaml:14:3`` for any key. Only the safe constructor is used,
so ``!!python/object`` and friends are rejected, not executed.

The walk is bounded (see :mod:`infrakit.settings.limits`): every entry it
visits counts, an alias each time it is used, so an alias bomb stops after
``MAX_VALUES``; keys are built only from plain scalars (a list used as a key
is refused before it is built or shown), and integers are measured before
Python converts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from infrakit.errors import ConfigError, ConfigProblem
from infrakit.settings.limits import (
    MAX_DEPTH,
    MAX_INT_CHARS,
    MAX_KEY_CHARS,
    MAX_VALUES,
    exceeded,
    shorten,
)

Path_ = tuple[str, ...]

_INT_TAG = "tag:yaml.org,2002:int"
_PLAIN_TAGS = frozenset({"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})


@dataclass(frozen=True, slots=True)
class Location:
    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


def _loc(file: str, mark: Any) -> Location:
    return Location(file, mark.line + 1, mark.column + 1)


def _too_many_values(where: str, key: str = "") -> ConfigError:
    return ConfigError(
        exceeded(
            "the number of keys and values (aliases counted each time they are used)",
            "MAX_VALUES",
            key=key,
            where=where,
            hint="a profile holds settings, not data; "
            "if aliases (*name) repeat a large value, write it once",
        )
    )


def _too_deep(where: str, key: str = "", size: int | None = None) -> ConfigError:
    return ConfigError(
        exceeded(
            "nesting",
            "MAX_DEPTH",
            size=size,
            unit="levels",
            key=key,
            where=where,
            hint="settings nest a few levels deep; flatten this value",
        )
    )


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, its composer held to the bounds while it builds
    the node tree: PyYAML in pure Python costs ~100 us a node, so the count has
    to stop it before a whole oversized document is composed, not after."""

    def __init__(self, stream: str, file: str) -> None:
        super().__init__(stream)
        self.file = file
        self.composed = 0
        self.depth = 0

    def _here(self) -> str:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
        return str(_loc(self.file, event.start_mark))

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:  # noqa: N803 - PyYAML's name
        # The scanner reads ahead while a '[' or '{' may still start a key, and
        # checks each pending one on every token: 1,000 unclosed brackets cost a
        # second before the composer sees the first level too deep.
        if self.flow_level >= MAX_DEPTH:
            raise _too_deep(str(_loc(self.file, self.get_mark())))
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self.composed += 1
        self.depth += 1
        try:
            if self.composed > MAX_VALUES:
                raise _too_many_values(self._here())
            if self.depth > MAX_DEPTH + 1:  # the document's own mapping is one level
                raise _too_deep(self._here())
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _Walker:
    def __init__(self, loader: yaml.SafeLoader, file: str) -> None:
        self.loader = loader
        self.file = file
        self.locations: dict[Path_, Location] = {}
        self.problems: list[ConfigProblem] = []
        self.nodes = 0

    def count(self, where: Location, dotted: str) -> None:
        self.nodes += 1
        if self.nodes > MAX_VALUES:
            raise _too_many_values(str(where), dotted)

    def walk(self, node: yaml.Node, path: Path_, active: frozenset[int]) -> Any:
        where = _loc(self.file, node.start_mark)
        dotted = ".".join(path)
        self.count(where, dotted)
        if id(node) in active:
            raise ConfigError(ConfigProblem("refers to itself", key=dotted, where=str(where)))
        if len(path) > MAX_DEPTH:
            raise _too_deep(str(where), shorten(dotted), len(path))
        active = active | {id(node)}
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and node.tag not in _PLAIN_TAGS:
            # Only the safe constructor may build values: a tag such as
            # !!python/object on a mapping or list is refused, not ignored.
            raise ConfigError(
                ConfigProblem(
                    f"YAML tag {node.tag!r} is not allowed",
                    key=dotted,
                    where=str(where),
                    hint="profiles are read with a safe loader; remove the tag",
                )
            )
        if isinstance(node, yaml.MappingNode):
            self.loader.flatten_mapping(node)  # resolve '<<' merge keys
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key_where = _loc(self.file, key_node.start_mark)
                self.count(key_where, dotted)
                key = self.key(key_node, key_where, dotted)
                if key is None:
                    continue
                child = (*path, key)
                if key in result:
                    first = self.locations[child]
                    self.problems.append(
                        ConfigProblem(
                            f"duplicate key (first set at line {first.line})",
                            key=".".join(child),
                            where=str(key_where),
                            hint="remove one of the two; YAML would silently keep the last",
                        )
                    )
                    continue
                self.locations[child] = key_where
                result[key] = self.walk(value_node, child, active)
            return result
        if isinstance(node, yaml.SequenceNode):
            items = []
            for index, item in enumerate(node.value):
                child = (*path, str(index))
                self.locations[child] = _loc(self.file, item.start_mark)
                items.append(self.walk(item, child, active))
            return items
        return self.scalar(node, where, dotted)

    def key(self, node: yaml.Node, where: Location, dotted: str) -> str | None:
        """A mapping key, or None (and a problem) when it is not a short string."""
        if not isinstance(node, yaml.ScalarNode):
            # never built: an aliased list as a key can stand for billions of items
            kind = "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"
            self.problems.append(
                ConfigProblem(f"keys must be strings, got {kind}", key=dotted, where=str(where))
            )
            return None
        key = self.scalar(node, where, dotted)
        if not isinstance(key, str):
            self.problems.append(
                ConfigProblem(
                    f"keys must be strings, got {type(key).__name__} {key!r}",
                    key=dotted,
                    where=str(where),
                )
            )
            return None
        if len(key) > MAX_KEY_CHARS:
            self.problems.append(
                exceeded(
                    f"the key {shorten(key, 40, count=False)!r}",
                    "MAX_KEY_CHARS",
                    size=len(key),
                    unit="characters",
                    key=dotted,
                    where=str(where),
                    hint="keys are setting names; put long text in a value",
                )
            )
            return None
        return key

    def scalar(self, node: yaml.Node, where: Location, dotted: str) -> Any:
        if node.tag == _INT_TAG and len(node.value) > MAX_INT_CHARS:
            # Python refuses (with a raw ValueError) to convert more than 4,300
            # digits, and converting fewer costs time quadratic in their number
            raise ConfigError(
                exceeded(
                    "an integer",
                    "MAX_INT_CHARS",
                    size=len(node.value),
                    unit="characters",
                    key=dotted,
                    where=str(where),
                    hint="quote it if it is text; no setting takes a number this large",
                )
            )
        return self.loader.construct_object(node, deep=True)


def parse(text: str, file: str) -> tuple[dict[str, Any], dict[Path_, Location]]:
    """Parse one profile document: its data and the location of every key."""
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text, file)  # checks for unprintable characters already
        walker = _Walker(loader, file)
        node = loader.get_single_node()
        if node is None:
            return {}, {}
        if not isinstance(node, yaml.MappingNode):
            kind = "a list" if isinstance(node, yaml.SequenceNode) else "a single value"
            raise ConfigError(
                ConfigProblem(
                    "a profile must be a mapping of sections (service:, database:, ...), "
                    f"got {kind}",
                    where=str(_loc(file, node.start_mark)),
                )
            )
        data = walker.walk(node, (), frozenset())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = str(_loc(file, mark)) if mark is not None else file
        problem = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        hint = None
        if "python/" in problem or "could not determine a constructor" in problem:
            hint = "profiles are read with a safe loader; Python tags are not allowed"
        raise ConfigError(
            ConfigProblem(f"invalid YAML: {problem}", where=where, hint=hint)
        ) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError(
            ConfigProblem(
                f"invalid YAML: {exc.reason} (character {exc.character!r})", where=f"{file}:{line}"
            )
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(ConfigProblem(f"invalid YAML: {exc}", where=file)) from None
    except RecursionError:
        # a backstop: the composer stops at MAX_DEPTH, far below Python's limit
        raise _too_deep(file) from None
    finally:
        if loader is not None:
            loader.dispose()
    if walker.problems:
        raise ConfigError(walker.problems)
    assert isinstance(data, dict)
    return data, walker.locations
