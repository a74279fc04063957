"""The building blocks of every settings model: sections and component bases.

A component's section (``database``, ``tokens``, ``audit``, ``telemetry``) is
validated by the settings model of the backend it selects; each backend module
defines that model as a subclass of its component's base here, narrowing the
selector (``backend``, or ``exporter`` for telemetry) to a ``Literal`` of its
own name. Constructing a component base directly (``TokensSettings(backend=
"redis", url=...)``) builds the selected backend's model.

Nothing here imports a component: backend models are found through the
registry, which imports a backend module only when it is asked for.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Any, ClassVar, Self, TypeVar, cast

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from infrakit import registry
from infrakit.errors import ConfigError, ConfigProblem
from infrakit.scrub import MASK, is_sensitive_key, mask_url, scrub_text

__all__ = ["BackendSettings", "Section", "backend_model", "build", "mask_value", "unknown_backend"]

S = TypeVar("S", bound=BaseModel)

#: Sections whose every value is a secret, whatever its key.
_SECRET_SECTIONS = {("telemetry", "headers")}


def mask_value(path: tuple[str, ...], value: Any) -> str:
    """How a value may be shown in an error: secrets hidden, long values cut."""
    if any(is_sensitive_key(p) for p in path) or any(path[: len(s)] == s for s in _SECRET_SECTIONS):
        return MASK
    if isinstance(value, str):
        masked = mask_url(value)
        if masked == value and "@" in value and "://" in value:
            masked = MASK + value[value.rindex("@") :]  # a URL too broken to parse
        value = masked
    # any shape (a URL inside a list, a dict of credentials): the text rules
    text = scrub_text(repr(value))
    return text if len(text) <= 80 else scrub_text(text[:77]) + "..."


class Section(BaseModel):
    """A profile section: unknown keys are errors, values are frozen, and a
    validation error never echoes the value it refused (it may be a secret)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, hide_input_in_errors=True
    )

    #: fields whose value (or a value inside) was read from a file: masked in
    #: ``repr()``/``str()`` whatever their type (set by the loader)
    _masked_fields: frozenset[str] = PrivateAttr(default_factory=frozenset)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        masked = self._masked_fields
        for name, value in super().__repr_args__():
            yield name, (MASK if name in masked else value)


def build(model: type[S], /, **values: Any) -> S:
    """``model(**values)``, a bad value being a :class:`~infrakit.errors.ConfigError`
    that names the key and shows the value masked (what components' constructors
    use when given plain values instead of a validated section)."""
    try:
        return model(**values)
    except ValidationError as error:
        raise _config_error(error, getattr(model, "component", "") or "") from None


def _config_error(error: ValidationError, prefix: str) -> ConfigError:
    problems = []
    for item in error.errors(include_url=False):
        path = tuple(str(p) for p in item["loc"])
        if prefix:
            path = (prefix, *path)
        message = str(item["msg"]).removeprefix("Value error, ")
        value = None if item["type"] == "missing" else mask_value(path, item.get("input"))
        if item["type"] == "extra_forbidden":
            message, value = "unknown key", None
        problems.append(ConfigProblem(message, key=".".join(path), value=value))
    return ConfigError(problems)


def unknown_backend(component: str, name: object) -> str:
    """The message for a backend name nothing provides, with the closest one."""
    known = registry.backend_names(component)
    close = difflib.get_close_matches(str(name), known, n=1)
    suggestion = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown backend {name!r}{suggestion}; expected one of: {', '.join(known)}"


def backend_model(component: str, name: object) -> type[BackendSettings]:
    """The settings model of ``component``'s backend ``name`` (the default when None)."""
    chosen = registry.DEFAULT_BACKENDS[component] if name is None else name
    backend = registry.get_backend(component, chosen) if isinstance(chosen, str) else None
    if backend is None:
        raise ValueError(unknown_backend(component, chosen))
    model: type[BackendSettings] = backend.settings  # type: ignore[assignment]
    return model


class BackendSettings(Section):
    """Base of a component's settings. Its direct subclasses (one per component)
    pick the backend's own model when constructed or validated."""

    #: set by each component's base class, which also declares the selector field
    component: ClassVar[str] = ""
    selector: ClassVar[str] = "backend"

    def __new__(cls, *args: Any, **data: Any) -> Self:
        model = (
            backend_model(cls.component, data.get(cls.selector))
            if cls._is_component_base()
            else cls
        )
        return cast(Self, super().__new__(model))

    @classmethod
    def _is_component_base(cls) -> bool:
        return "component" in cls.__dict__

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Self:
        if cls._is_component_base():
            name = obj.get(cls.selector) if isinstance(obj, dict) else getattr(obj, cls.selector)
            model = backend_model(cls.component, name)
            return model.model_validate(obj, *args, **kwargs)  # type: ignore[return-value]
        return super().model_validate(obj, *args, **kwargs)
