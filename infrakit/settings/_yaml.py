"""Safe YAML parsing that remembers where every value was written.

PyYAML's composer keeps each node's start mark; walking the node tree
ourselves (instead of ``yaml.safe_load``) lets the loader say
``profiles/prod.yaml:14:3`` for any key. Only the safe constructor is used,
so ``!!python/object`` and friends are rejected, not executed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from infrakit.errors import ConfigError, ConfigProblem

Path_ = tuple[str, ...]

_MAX_NODES = 100_000
_MAX_DEPTH = 64
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


class _Walker:
    def __init__(self, loader: yaml.SafeLoader, file: str) -> None:
        self.loader = loader
        self.file = file
        self.locations: dict[Path_, Location] = {}
        self.problems: list[ConfigProblem] = []
        self.nodes = 0

    def walk(self, node: yaml.Node, path: Path_, active: frozenset[int]) -> Any:
        self.nodes += 1
        where = _loc(self.file, node.start_mark)
        dotted = ".".join(path)
        if self.nodes > _MAX_NODES:
            raise ConfigError(
                ConfigProblem(
                    f"more than {_MAX_NODES} values (alias expansion?)",
                    key=dotted,
                    where=str(where),
                )
            )
        if id(node) in active or len(path) > _MAX_DEPTH:
            raise ConfigError(
                ConfigProblem("nested too deeply or refers to itself", key=dotted, where=str(where))
            )
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
                key = self.loader.construct_object(key_node, deep=True)
                key_where = _loc(self.file, key_node.start_mark)
                if not isinstance(key, str):
                    self.problems.append(
                        ConfigProblem(
                            f"keys must be strings, got {type(key).__name__} {key!r}",
                            key=dotted,
                            where=str(key_where),
                        )
                    )
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
        return self.loader.construct_object(node, deep=True)


def parse(text: str, file: str) -> tuple[dict[str, Any], dict[Path_, Location]]:
    """Parse one profile document: its data and the location of every key."""
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # checks for unprintable characters already
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
        raise ConfigError(ConfigProblem("invalid YAML: nested too deeply", where=file)) from None
    finally:
        if loader is not None:
            loader.dispose()
    if walker.problems:
        raise ConfigError(walker.problems)
    assert isinstance(data, dict)
    return data, walker.locations
