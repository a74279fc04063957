"""The profile reference, generated from the settings models so it cannot drift.

``infrakit config reference > docs/profile-reference.md``; a test fails when
the committed file is stale.
"""

from __future__ import annotations

import json
import typing
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from infrakit import registry
from infrakit.scrub import SecretUrl
from infrakit.settings.models import COMPONENT_SETTINGS, InfraSettings

__all__ = ["render_reference"]


def _type_name(annotation: Any) -> str:
    if annotation is SecretUrl:
        return "URL (secret password)"
    if annotation is SecretStr:
        return "secret string"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is list:
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"map of {_type_name(args[1])}" if args else "map"
    if origin is typing.Annotated:
        return _type_name(args[0])
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, SecretUrl):
        value = value.masked
    if isinstance(value, SecretStr):
        return "(secret)"
    return f"`{json.dumps(value)}`"


def _bounds(field: FieldInfo) -> str:
    parts = []
    for item in field.metadata:
        for name, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            bound = getattr(item, name, None)
            if bound is not None:
                parts.append(f"{symbol} {bound}")
    return ", ".join(parts)


def _rows(model: type[BaseModel], prefix: str, skip: frozenset[str] = frozenset()) -> list[str]:
    rows: list[str] = []
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        key = f"{prefix}.{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(_rows(annotation, key))
            continue
        env = "INFRAKIT__" + key.replace(".", "__").upper()
        bounds = _bounds(field)
        kind = _type_name(annotation) + (f" ({bounds})" if bounds else "")
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{key}` | {kind} | {_default(field)} | `{env}` | {description} |")
    return rows


def render_reference() -> str:
    lines = [
        "# Profile reference",
        "",
        "Generated from the settings models by `infrakit config reference`; do not edit by",
        "hand (a test fails when this file is stale). Every key can also be set with the",
        "environment variable shown (double underscores nest; also from an env file, or a",
        "file of that name in the secrets directory) or `--set key=value`. Their text is",
        "read by the key's type: as it is for strings, numbers and booleans, as JSON for",
        "lists, mappings and sections. Any string value in a profile can be",
        "`${VAR}`, `${VAR:-default}` or `${file:/run/secrets/name}` (see profiles.md).",
        "",
    ]
    for section, field in InfraSettings.model_fields.items():
        model = field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"section {section!r} is not a model")
        lines += [
            f"## `{section}`",
            "",
            (model.__doc__ or "").strip().splitlines()[0],
            "",
            "| key | type | default | environment variable | what |",
            "|---|---|---|---|---|",
            *_rows(model, section),
            "",
        ]
        if section not in COMPONENT_SETTINGS:
            continue
        # each backend's own keys (a key of one backend is an error under another)
        shared = frozenset(model.model_fields)
        for name, backend in registry.backends(section).items():
            own = _rows(backend.settings, section, skip=shared)
            selector = COMPONENT_SETTINGS[section].selector
            lines += [
                f"### `{section}.{selector}: {name}`",
                "",
                (backend.description or (backend.settings.__doc__ or "").strip()).splitlines()[0],
                "",
            ]
            if own:
                lines += [
                    "| key | type | default | environment variable | what |",
                    "|---|---|---|---|---|",
                    *own,
                    "",
                ]
            else:
                lines += ["No keys of its own.", ""]
    lines += [
        "## `extends`",
        "",
        "Name or path of a profile to deep-merge over (mappings merge key by key;",
        "lists and scalars are replaced).",
        "",
    ]
    return "\n".join(lines)
