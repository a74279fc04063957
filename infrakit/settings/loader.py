"""``load_settings``: profile chain + environment + overrides -> InfraSettings.

Precedence, lowest first: model defaults < profile chain (``extends``) <
``INFRAKIT__SECTION__KEY`` env vars < explicit overrides. Every value's origin
is kept so an error (or ``infrakit config show --sources``) can name the file
and line, the env var or the override that supplied it. All problems found
are reported together in one :class:`~infrakit.errors.ConfigError`.

Every input is bounded before it is worked on (file size, ``extends`` depth,
values, nesting, key and name lengths, integer sizes, interpolations and the
characters they expand to): the bounds and why are in
:mod:`infrakit.settings.limits`. Reaching one stops loading with a
``ConfigError`` that names it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import types
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Annotated, Any, Literal, Self, Union

from pydantic import BaseModel, ValidationError

from infrakit import registry
from infrakit.errors import ConfigError, ConfigProblem
from infrakit.scrub import MASK, is_sensitive_key
from infrakit.settings import _yaml
from infrakit.settings._files import FileProblem, SecretsDir, read_env_file, read_value_file
from infrakit.settings.base import Section, mask_value, unknown_backend
from infrakit.settings.limits import (
    MAX_DEPTH,
    MAX_EXPANDED_CHARS,
    MAX_EXTENDS,
    MAX_INT_CHARS,
    MAX_INTERPOLATIONS,
    MAX_KEY_CHARS,
    MAX_PATH_CHARS,
    MAX_PROFILE_BYTES,
    MAX_PROFILE_NAME_CHARS,
    MAX_VALUE_CHARS,
    exceeded,
    shorten,
)
from infrakit.settings.models import COMPONENT_SETTINGS, InfraSettings, settings_model

__all__ = [
    "EMBEDDED_PROFILES_DIR",
    "ENV_PREFIX",
    "Kind",
    "TextValue",
    "available_profiles",
    "load_settings",
    "parse_value",
    "resolve_profile",
    "value_kind",
]

ENV_PREFIX = "INFRAKIT__"
PROFILE_ENV = "INFRAKIT_PROFILE"
PROFILES_DIR_ENV = "INFRAKIT_PROFILES_DIR"
ENV_FILE_ENV = "INFRAKIT_ENV_FILE"
SECRETS_DIR_ENV = "INFRAKIT_SECRETS_DIR"
DEFAULT_PROFILE = "local"


def _embedded_profiles() -> Path:
    """The profiles shipped with the kit: inside the installed wheel
    (``infrakit/profiles``), or the repository's top-level ``profiles/`` when
    running from a checkout (an editable install)."""
    package = Path(__file__).resolve().parent.parent
    inside = package / "profiles"
    return inside if inside.is_dir() else package.parent / "profiles"


EMBEDDED_PROFILES_DIR = _embedded_profiles()

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_INTERPOLATION = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_VAR = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.DOTALL)

Path_ = tuple[str, ...]


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _profiles_dir(profiles_dir: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path:
    if profiles_dir is not None:
        return _bounded_path(os.fspath(profiles_dir), "the profiles directory")
    text = environ.get(PROFILES_DIR_ENV) or "profiles"
    return _bounded_path(text, PROFILES_DIR_ENV)


def _bounded_path(text: str, what: str) -> Path:
    if len(text) > MAX_PATH_CHARS:
        raise ConfigError(
            exceeded(
                f"{what} {shorten(text, count=False)!r}",
                "MAX_PATH_CHARS",
                size=len(text),
                unit="characters",
                hint="check the path; no file system takes one this long",
            )
        )
    return Path(text)


def _exists(path: Path, *, directory: bool = False) -> bool:
    """``is_file``/``is_dir``, a path the system refuses to look up (a name
    longer than the file system allows: ``OSError: File name too long``) being
    a ConfigError instead of a traceback."""
    try:
        return path.is_dir() if directory else path.is_file()
    except OSError as exc:
        raise ConfigError(
            ConfigProblem(
                f"cannot look up {shorten(str(path))!r}: {exc.strerror}",
                hint="check the profile name or path",
            )
        ) from None


def available_profiles(
    profiles_dir: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> list[str]:
    """Profile names found in the profiles directory and among the embedded ones."""
    env = os.environ if environ is None else environ
    names: set[str] = set()
    for directory in (_profiles_dir(profiles_dir, env), EMBEDDED_PROFILES_DIR):
        if _exists(directory, directory=True):
            names.update(p.stem for p in directory.iterdir() if p.suffix in (".yaml", ".yml"))
    return sorted(names)


def _looks_like_path(profile: str) -> bool:
    return "/" in profile or os.sep in profile or profile.endswith((".yaml", ".yml"))


def _find_named(name: str, directories: list[Path], *, skip: Path | None = None) -> Path | None:
    for directory in directories:
        for suffix in (".yaml", ".yml"):
            candidate = directory / f"{name}{suffix}"
            if _exists(candidate) and (skip is None or candidate.resolve() != skip.resolve()):
                return candidate
    return None


def resolve_profile(
    profile: str | os.PathLike[str] | None = None,
    *,
    profiles_dir: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Path:
    """The file a profile name or path refers to.

    A name is looked up as ``<profiles_dir>/<name>.yaml``, then among the
    profiles embedded in the package (``local``, ``test``, ``production``).
    """
    env = os.environ if environ is None else environ
    if profile is None:
        profile = env.get(PROFILE_ENV) or DEFAULT_PROFILE
    text = os.fspath(profile)
    directory = _profiles_dir(profiles_dir, env)
    if isinstance(profile, os.PathLike) or _looks_like_path(text):
        path = _bounded_path(text, "the profile path")
        if _exists(path):
            return path
        raise ConfigError(
            ConfigProblem(f"profile file {text!r} does not exist", hint="check the path")
        )
    if len(text) > MAX_PROFILE_NAME_CHARS:
        raise ConfigError(
            exceeded(
                f"the profile name {shorten(text, count=False)!r}",
                "MAX_PROFILE_NAME_CHARS",
                size=len(text),
                unit="characters",
                hint="a profile name is a file name without .yaml; "
                "check what INFRAKIT_PROFILE or the profile argument holds",
            )
        )
    if not _NAME.match(text):
        raise ConfigError(
            ConfigProblem(
                f"{text!r} is not a valid profile name",
                hint="use letters, digits, '.', '_' or '-', or give a path to a .yaml file",
            )
        )
    found = _find_named(text, [directory, EMBEDDED_PROFILES_DIR])
    if found is not None:
        return found
    known = available_profiles(directory, env)
    close = difflib.get_close_matches(text, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError(
        ConfigProblem(
            f"profile {text!r} not found in {_display(directory)}/ or the embedded profiles",
            hint=f"{hint}available: {', '.join(known) or 'none'}; "
            f"set {PROFILES_DIR_ENV} or pass profiles_dir= to look elsewhere",
        )
    )


# --- reading one file -------------------------------------------------------


def _read_text(path: Path) -> str:
    where = _display(path)

    def too_big(size: int | None) -> ConfigError:
        return ConfigError(
            exceeded(
                "the profile file",
                "MAX_PROFILE_BYTES",
                size=size,
                unit="bytes",
                where=where,
                hint="is this the right file? A profile holds settings, not data: "
                "keep large values (certificates, lists) in files of their own",
            )
        )

    try:
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > MAX_PROFILE_BYTES:
                raise too_big(size)
            # stat can be wrong (/proc, a file still growing): read one byte past
            raw = file.read(MAX_PROFILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            ConfigProblem(f"cannot read profile: {exc.strerror}", where=where)
        ) from None
    if len(raw) > MAX_PROFILE_BYTES:
        raise too_big(None)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            ConfigProblem(
                f"profile is not UTF-8 text (byte {exc.start})",
                where=f"{where}:{line}",
                hint="save the file as UTF-8",
            )
        ) from None


class _Sources(Mapping[Path_, str]):
    """Where each key path's value came from, each path's children indexed so
    that forgetting a subtree costs what it removes. (A scan of every path on
    each change made a profile of n keys cost n**2: 60,000 keys took minutes.)"""

    __slots__ = ("_children", "_known", "_secret", "_source")

    def __init__(self) -> None:
        self._source: dict[Path_, str] = {}
        self._children: dict[Path_, set[Path_]] = {}
        self._known: set[Path_] = set()
        #: paths whose value came (wholly or partly) from a file: secrets
        self._secret: set[Path_] = set()

    def __getitem__(self, path: Path_) -> str:
        return self._source[path]

    def __iter__(self) -> Iterator[Path_]:
        return iter(self._source)

    def __len__(self) -> int:
        return len(self._source)

    def __setitem__(self, path: Path_, source: str) -> None:
        self._source[path] = source
        self._secret.discard(path)  # a new value: secret only if marked again
        while path and path not in self._known:
            self._known.add(path)
            self._children.setdefault(path[:-1], set()).add(path)
            path = path[:-1]

    def setdefault(self, path: Path_, source: str) -> str:
        if path not in self._source:
            self[path] = source
        return self._source[path]

    def pop(self, path: Path_) -> None:
        self._source.pop(path, None)
        self._secret.discard(path)

    def mark_secret(self, path: Path_) -> None:
        if path in self._source:
            self._secret.add(path)

    def secret_paths(self) -> frozenset[Path_]:
        return frozenset(self._secret)

    def forget_below(self, path: Path_) -> None:
        """Drop every path under ``path`` (not ``path`` itself)."""
        stack = list(self._children.pop(path, ()))
        while stack:
            child = stack.pop()
            self._known.discard(child)
            self._source.pop(child, None)
            self._secret.discard(child)
            stack.extend(self._children.pop(child, ()))


class _Layers:
    """The merged data so far and, for each key path, where it came from."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.sources = _Sources()
        self.problems: list[ConfigProblem] = []
        #: unset variables (and missing ``${file:}`` files) by the key they were
        #: for: an error only if no higher layer sets that key
        self.pending: dict[Path_, ConfigProblem] = {}

    def set(self, path: Path_, value: Any, source: str, *, secret: bool = False) -> None:
        node = self.data
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
                self._forget(path[: depth + 1])
                self.sources[path[: depth + 1]] = source
            node = child
        node[path[-1]] = value
        self._forget(path)
        self._record(path, value, source)
        self._settle(path)
        if secret:
            self.sources.mark_secret(path)

    def _settle(self, path: Path_) -> None:
        """A value set at ``path`` answers the unset variables of lower layers there."""
        if self.pending:
            for missing in [p for p in self.pending if p[: len(path)] == path]:
                del self.pending[missing]
            for depth in range(1, len(path)):
                self.pending.pop(path[:depth], None)

    def merge(self, layer: _Layer) -> None:
        """Apply one profile of the chain over what is below it."""
        self._merge(layer.data, layer.sources)
        for path in layer.secrets:
            self.sources.mark_secret(path)
        for path, problem in layer.missing.items():
            # the layer meant to set this key: what a lower one said does not count
            self.delete(path)
            self.pending[path] = problem

    def _merge(self, data: dict[str, Any], sources: dict[Path_, str], path: Path_ = ()) -> None:
        for key, value in data.items():
            child = (*path, key)
            if isinstance(value, dict) and value:
                self._ensure_dict(child, sources.get(child, "?"))
                self._merge(value, sources, child)
            else:
                self.set(child, value, sources.get(child, "?"))

    def _ensure_dict(self, path: Path_, source: str) -> None:
        node = self.data
        for depth, part in enumerate(path):
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
                self._forget(path[: depth + 1])
                self.sources[path[: depth + 1]] = source
            node = child
        self.sources.setdefault(path, source)

    def _forget(self, path: Path_) -> None:
        self.sources.forget_below(path)

    def _record(self, path: Path_, value: Any, source: str) -> None:
        self.sources[path] = source
        if isinstance(value, dict):
            for key, item in value.items():
                self._record((*path, str(key)), item, source)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self._record((*path, str(index)), item, source)

    def switch_backends(self, data: Mapping[str, Any]) -> None:
        """Before a layer that selects another backend for a component is applied,
        drop what lower layers set for the old one (a profile that ``extends``
        ``production`` and says ``tokens.backend: memory`` takes Redis's keys
        with it); keys of another backend in that same layer stay an error."""
        for component, base in COMPONENT_SETTINGS.items():
            section, current = data.get(component), self.data.get(component)
            if not isinstance(section, Mapping) or not isinstance(current, dict):
                continue
            name = section.get(base.selector)
            if not isinstance(name, str) or name == current.get(base.selector):
                continue
            backend = registry.get_backend(component, name)
            if backend is None:
                continue  # reported by validation
            for key in [k for k in current if k not in backend.settings.model_fields]:
                source = self.sources.get((component, key), "")
                if not source.startswith(_ABOVE_PROFILES):  # those are errors
                    self.delete((component, key))
            for path in [p for p in self.pending if p[0] == component and len(p) > 1]:
                if path[1] not in backend.settings.model_fields:
                    del self.pending[path]  # a variable for the old backend's key

    def delete(self, path: Path_) -> None:
        node: Any = self.data
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
        self._forget(path)
        self.sources.pop(path)
        for missing in [p for p in self.pending if p[: len(path)] == path]:
            del self.pending[missing]


#: Sources of the layers above the profile chain (env vars, whether from the
#: environment or the env file, the secrets directory, overrides).
_ABOVE_PROFILES = ("env ", "secret file ", "override")


@dataclasses.dataclass
class _Layer:
    """One profile file, read and interpolated."""

    data: dict[str, Any]
    sources: dict[Path_, str]
    #: key paths whose value came from a file (secrets)
    secrets: set[Path_]
    #: key paths whose variable is unset (or whose ``${file:}`` does not exist)
    missing: dict[Path_, ConfigProblem]


class _Expansion:
    """What ``${...}`` reads (the variables, the secrets directory, files), and
    what interpolation has done so far in one load (over the whole chain), to
    hold it to its bounds."""

    __slots__ = ("chars", "environ", "files", "origins", "references", "secrets", "texts")

    def __init__(
        self,
        environ: Mapping[str, str],
        *,
        origins: Mapping[str, str] | None = None,
        secrets: SecretsDir | None = None,
    ) -> None:
        self.environ = environ
        #: variables that came from the env file: name -> "file:line"
        self.origins: Mapping[str, str] = origins or {}
        self.secrets = secrets
        self.references = 0
        self.chars = 0
        #: files read in this load (one read each), by resolved path
        self.files: dict[Path, str] = {}
        #: the text of every value read from a file: never shown
        self.texts: set[str] = set()

    def count(self, key: str, where: str) -> None:
        """One more ``${...}`` reference."""
        self.references += 1
        if self.references > MAX_INTERPOLATIONS:
            raise ConfigError(
                exceeded(
                    "the number of ${...} references",
                    "MAX_INTERPOLATIONS",
                    key=key,
                    where=where,
                    hint="a profile needs a variable per setting, not thousands; "
                    "set the value once",
                )
            )

    def grow(self, chars: int, key: str, where: str, what: str) -> None:
        """The interpolated text grew by ``chars``."""
        self.chars += chars
        if self.chars > MAX_EXPANDED_CHARS:
            raise ConfigError(
                exceeded(
                    "the text of the interpolated values",
                    "MAX_EXPANDED_CHARS",
                    unit="characters",
                    key=key,
                    where=where,
                    hint=f"{what} here; keep large values (certificates, lists) "
                    "out of references used many times",
                )
            )

    def read(self, path: Path, what: str) -> str:
        """The value ``path`` holds (read once per load); a secret from now on."""
        key = path.absolute()
        if key not in self.files:
            self.files[key] = read_value_file(path, what)
            if self.files[key]:
                self.texts.add(self.files[key])
        return self.files[key]

    def lookup(self, name: str) -> tuple[str | None, str, bool]:
        """The value of variable ``name``, how to name where it came from, and
        whether it is a secret (read from a file). Raises FileProblem."""
        file_var = f"{name}_FILE"
        if name in self.environ:
            if file_var in self.environ:
                raise FileProblem(
                    ConfigProblem(
                        f"both {name} and {file_var} are set",
                        hint=f"unset one of them ({file_var} names a file holding the value)",
                    )
                )
            origin = self.origins.get(name)
            return self.environ[name], f"${{{name}}}" + (f" from {origin}" if origin else ""), False
        if file_var in self.environ:
            path = self.environ[file_var]
            value = self.read(Path(path), f"the file {file_var} names,")
            return value, f"${{{name}}} from file {path} (${file_var})", True
        if self.secrets is not None:
            found = self.secrets.find(name)
            if found is not None:
                value = self.read(found, "the secret file")
                return value, f"${{{name}}} from file {found}", True
        return None, "", False


class _Expanded:
    """One string after interpolation."""

    __slots__ = ("missing", "problem", "refs", "secret", "text")

    def __init__(self) -> None:
        self.text = ""
        #: how each reference was answered, for the key's source
        self.refs: list[str] = []
        self.problem: ConfigProblem | None = None
        #: an unset variable or a missing file: an error unless a higher layer sets the key
        self.missing = False
        self.secret = False


def _interpolate(
    text: str, budget: _Expansion, key: str, where: str, base: Path | None = None
) -> _Expanded:
    """Expand ``${VAR}``/``${VAR:-default}`` and ``${file:path}``; ``$${`` is a
    literal ``${``. A relative ``${file:}`` path is relative to ``base`` (the
    directory of the profile it is written in).

    The result's size is counted while it is built, so a bound is hit before
    the memory is spent, not after.
    """
    out = _Expanded()
    budget.chars += len(text)

    def fail(message: str, hint: str | None = None, *, missing: bool = False) -> None:
        if out.problem is None:
            out.problem = ConfigProblem(message, key=key, where=where, hint=hint)
            out.missing = missing

    def count() -> None:
        budget.count(key, where)

    def grow(value: str, text: str, name: str) -> None:
        budget.grow(len(value) - len(text), key, where, f"{name} is {len(value):,} characters")

    def from_file(text: str, spec: str) -> str:
        count()
        if not spec:
            fail("${file:} names no file", "write ${file:/run/secrets/NAME}")
            return text
        path = Path(spec)
        if not path.is_absolute() and base is not None:
            path = base / path
        try:
            value = budget.read(path, "the file")
        except FileProblem as problem:
            fail(problem.problem.message, problem.problem.hint, missing=problem.missing)
            return text
        out.refs.append(f"file {path}")
        out.secret = True
        grow(value, text, f"${{file:{shorten(spec, 40)}}}")
        return value

    def replace(match: re.Match[str]) -> str:
        text = match.group(0)
        if text == "$${":
            return "${"
        if match.group(1) is None:
            fail("unclosed '${' (write '$${' for a literal '${')")
            return text
        if match.group(1).startswith("file:"):
            return from_file(text, match.group(1)[5:])
        spec = _VAR.match(match.group(1))
        if spec is None:
            fail(
                f"malformed interpolation {shorten(text)!r}: expected ${{NAME}}, "
                "${NAME:-default} or ${file:path}"
            )
            return text
        name, default = spec.group(1), spec.group(2)
        count()
        try:
            value, ref, secret = budget.lookup(name)
        except FileProblem as problem:
            fail(problem.problem.message, problem.problem.hint)
            return text
        if value is None:
            if default is None:
                where = (
                    f"set {name} (in the environment, an env file, {name}_FILE naming a "
                    "file, or the secrets directory)"
                )
                fail(
                    f"environment variable {name} is not set",
                    # a secret written into the profile as a default is no secret
                    f"{where}; a secret has no default in a profile"
                    if is_sensitive_key(name)
                    else f"{where} or give a default: ${{{name}:-value}}",
                    missing=True,
                )
                return text
            value, ref = default, f"${{{name}}}"
        out.refs.append(ref)
        out.secret = out.secret or secret
        grow(value, text, f"${{{name}}}")
        return value

    out.text = _INTERPOLATION.sub(replace, text)
    return out


def _interpolate_tree(
    value: Any,
    path: Path_,
    layer: _Layer,
    budget: _Expansion,
    *,
    base: Path,
    problems: list[ConfigProblem],
    slot: Path_ | None = None,
) -> Any:
    """Interpolate every string under ``value``. An unset variable makes its key
    missing (``_MISSING``); inside a list, the whole list (its key is the slot
    that a higher layer may set instead)."""
    if isinstance(value, dict):
        out = {
            k: _interpolate_tree(
                v, (*path, k), layer, budget, base=base, problems=problems, slot=slot
            )
            for k, v in value.items()
        }
        if slot is not None and any(v is _MISSING for v in out.values()):
            return _MISSING
        return out
    if isinstance(value, list):
        items = [
            _interpolate_tree(
                v, (*path, str(i)), layer, budget, base=base, problems=problems, slot=slot or path
            )
            for i, v in enumerate(value)
        ]
        return _MISSING if any(v is _MISSING for v in items) else items
    if isinstance(value, str) and "${" in value:
        where = layer.sources.get(path, "")
        result = _interpolate(value, budget, ".".join(path), where, base)
        if result.problem is not None:
            if result.missing:
                layer.missing.setdefault(slot or path, result.problem)
            else:
                problems.append(result.problem)
            return _MISSING
        if result.refs:
            layer.sources[path] = f"{where} ({', '.join(dict.fromkeys(result.refs))})"
        if result.secret:
            layer.secrets.add(path)
        return result.text
    return value


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


def _drop_missing(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_missing(v) for k, v in value.items() if v is not _MISSING}
    return value


def _read_profile(path: Path, budget: _Expansion) -> tuple[_Layer, list[ConfigProblem]]:
    """One file: its interpolated data, where each key was written, and its problems."""
    where = _display(path)
    data, locations = _yaml.parse(_read_text(path), where)
    layer = _Layer({}, {p: str(loc) for p, loc in locations.items()}, set(), {})
    problems: list[ConfigProblem] = []
    base = path.parent
    layer.data = _drop_missing(
        _interpolate_tree(data, (), layer, budget, base=base, problems=problems)
    )
    return layer, problems


def _resolve_extends(value: Any, where: str, base_of: Path, profiles_dir: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            ConfigProblem(
                "extends must be a profile name or a path to a .yaml file",
                key="extends",
                where=where,
                value=repr(value),
            )
        )
    if len(value) > MAX_PATH_CHARS:
        raise ConfigError(
            exceeded(
                f"extends: {shorten(value, count=False)!r}",
                "MAX_PATH_CHARS",
                size=len(value),
                unit="characters",
                key="extends",
                where=where,
                hint="name a profile or give the path to a .yaml file",
            )
        )
    if _looks_like_path(value):
        candidate = (base_of.parent / value).resolve()
        if _exists(candidate):
            return candidate
        raise ConfigError(
            ConfigProblem(f"extends: file {value!r} does not exist", key="extends", where=where)
        )
    # a profile that extends its own name (profiles/test.yaml: extends: test)
    # means the next one of that name down the list: the embedded one
    directories = [base_of.parent, profiles_dir, EMBEDDED_PROFILES_DIR]
    found = _find_named(value, directories, skip=base_of)
    if found is None and _find_named(value, directories) is not None:
        raise ConfigError(
            ConfigProblem(
                f"extends forms a cycle: {_display(base_of)} extends itself",
                key="extends",
                where=where,
                hint="name a profile of another name (or one the kit ships)",
            )
        )
    if found is None:
        known = available_profiles(profiles_dir)
        close = difflib.get_close_matches(value, known, n=1)
        raise ConfigError(
            ConfigProblem(
                f"extends: profile {value!r} not found",
                key="extends",
                where=where,
                hint=(f"did you mean {close[0]!r}? " if close else "")
                + f"available: {', '.join(known) or 'none'}",
            )
        )
    return found


def _load_chain(path: Path, profiles_dir: Path, budget: _Expansion, layers: _Layers) -> None:
    chain: list[_Layer] = []
    seen: list[Path] = []
    current: Path | None = path
    while current is not None:
        if len(chain) == MAX_EXTENDS:
            raise ConfigError(
                exceeded(
                    "the extends chain",
                    "MAX_EXTENDS",
                    unit="profiles",
                    key="extends",
                    where=chain[-1].sources.get(("extends",), _display(current)),
                    hint="extend a profile that extends fewer others",
                )
            )
        resolved = current.resolve()
        if resolved in seen:
            names = " -> ".join(_display(p) for p in [*seen, resolved])
            raise ConfigError(
                ConfigProblem(
                    f"extends forms a cycle: {names}",
                    key="extends",
                    where=chain[-1].sources.get(("extends",), _display(current)),
                )
            )
        seen.append(resolved)
        layer, problems = _read_profile(current, budget)
        layers.problems.extend(problems)
        parent = layer.data.pop("extends", None)
        chain.append(layer)
        current = (
            _resolve_extends(
                parent, layer.sources.get(("extends",), _display(current)), current, profiles_dir
            )
            if parent is not None
            else None
        )
    for layer in reversed(chain):
        layers.switch_backends(layer.data)
        layers.merge(layer)


# --- environment and overrides ----------------------------------------------


#: How a value given as text is read, by the type of the key it sets: as it is
#: (a string, number, boolean ... key), as JSON (a list, mapping or section),
#: as JSON when it parses (a key that takes either), or, for a key the models
#: do not know, as JSON when it looks like JSON (the error names the key).
Kind = Literal["text", "json", "either"] | None


def parse_value(raw: str, kind: Kind = None) -> Any:
    """Env, secret-file and command-line values, read as pydantic-settings does:
    by the type of the key they set (``kind``, see :func:`value_kind`).

    A string key takes the text as it is (``[HIDDEN]`` stays a string); a list,
    mapping or section key takes JSON when the text starts with ``[`` or ``{``.
    Malformed JSON raises :class:`json.JSONDecodeError` (not for ``"either"``,
    which falls back to the text); a value over one of the loader's bounds (its
    length, its nesting, an integer's digits) raises
    :class:`~infrakit.errors.ConfigError` naming the bound.
    """
    if len(raw) > MAX_VALUE_CHARS:
        raise ConfigError(
            exceeded(
                "the value",
                "MAX_VALUE_CHARS",
                size=len(raw),
                unit="characters",
                hint="set large values in a file the application reads, not in a variable",
            )
        )
    stripped = raw.strip()
    if kind == "text" or stripped[:1] not in ("[", "{"):
        return raw
    try:
        value = json.loads(stripped, parse_int=_json_int)
    except RecursionError:
        value = _TOO_DEEP
    except json.JSONDecodeError:
        if kind == "either":
            return raw
        raise
    if value is _TOO_DEEP or not _within_depth(value):
        raise ConfigError(
            exceeded(
                "the JSON value's nesting",
                "MAX_DEPTH",
                unit="levels",
                hint="settings nest a few levels deep; flatten this value",
            )
        )
    return value


_TOO_DEEP = object()


def _json_int(text: str) -> int:
    if len(text) > MAX_INT_CHARS:
        raise ConfigError(
            exceeded(
                "an integer in the JSON value",
                "MAX_INT_CHARS",
                size=len(text),
                unit="characters",
                hint="quote it if it is text; no setting takes a number this large",
            )
        )
    return int(text)


def _within_depth(value: Any) -> bool:
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                return False
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return True


def _members(annotation: Any) -> list[Any]:
    """The types a field may hold: ``Annotated`` unwrapped, unions split, None left out."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _members(arg)]
    return [] if annotation is type(None) else [annotation]


def _is_complex(annotation: Any) -> bool:
    """A type whose value is written as JSON (what pydantic-settings calls complex)."""
    origin = typing.get_origin(annotation) or annotation
    if not isinstance(origin, type) or issubclass(origin, str | bytes):
        return False
    return issubclass(origin, BaseModel | Mapping | Sequence | AbstractSet | tuple)


def _annotations_at(path: Path_, data: Mapping[str, Any]) -> list[Any]:
    """The types the key at ``path`` may hold, given the data so far (whose
    backend selections narrow the component sections); [] when no model knows it."""
    current: list[Any] = [settings_model(data)]
    for part in path:
        found: list[Any] = []
        for member in (m for a in current for m in _members(a)):
            origin = typing.get_origin(member) or member
            args = typing.get_args(member)
            if isinstance(member, type) and issubclass(member, BaseModel):
                field = member.model_fields.get(part)
                if field is not None:
                    found.append(field.annotation)
            elif isinstance(origin, type) and issubclass(origin, Mapping) and len(args) == 2:
                found.append(args[1])
            elif isinstance(origin, type) and issubclass(origin, Sequence) and part.isdigit():
                found.append(args[0] if args else Any)
        current = found
    return current


def value_kind(path: Path_, data: Mapping[str, Any] | None = None) -> Kind:
    """How text for the key at ``path`` is read (see :data:`Kind`)."""
    members = [m for a in _annotations_at(path, data or {}) for m in _members(a)]
    if not members:
        return None
    complex_ = [_is_complex(m) for m in members]
    if all(complex_):
        return "json"
    return "either" if any(complex_) else "text"


class TextValue(str):
    """An override given as text (``--set key=value``): read by the type of the
    key it sets, as an ``INFRAKIT__`` variable is; ``where`` names it in errors."""

    where: str

    def __new__(cls, text: str, where: str = "") -> Self:
        value = super().__new__(cls, text)
        value.where = where
        return value


def _parse_for(layers: _Layers, path: Path_, raw: str, where: str) -> tuple[Any, bool]:
    """``raw`` read for the key at ``path``; a problem is recorded (and False returned)."""
    try:
        return parse_value(raw, value_kind(path, layers.data)), True
    except json.JSONDecodeError as exc:
        layers.problems.append(
            ConfigProblem(
                f"value looks like JSON but does not parse: {exc.msg}",
                key=".".join(path),
                where=where,
                hint="this key takes a list or mapping written as JSON",
            )
        )
    except ConfigError as exc:
        layers.problems.extend(
            dataclasses.replace(p, key=".".join(path), where=where) for p in exc.problems
        )
    return None, False


def _env_path(name: str) -> tuple[Path_ | None, ConfigProblem | None]:
    """The key path of an ``INFRAKIT__A__B`` variable, or the problem with its name
    (checked before the name is split: a name of thousands of segments is refused
    by counting them)."""
    rest = name[len(ENV_PREFIX) :]
    where = f"env {shorten(name, 80)}"
    example = "use INFRAKIT__SECTION__KEY, e.g. INFRAKIT__DATABASE__POOL_SIZE=20"
    segments = rest.count("__") + 1
    if segments > MAX_DEPTH:
        return None, exceeded(
            "the variable name's nesting",
            "MAX_DEPTH",
            size=segments,
            unit="segments",
            where=where,
            hint=example,
        )
    parts = tuple(p.lower() for p in rest.split("__"))
    if any(not p for p in parts):
        return None, ConfigProblem("malformed variable name", where=where, hint=example)
    longest = max(parts, key=len)
    if len(longest) > MAX_KEY_CHARS:
        return None, exceeded(
            f"the name segment {shorten(longest, 40, count=False)!r}",
            "MAX_KEY_CHARS",
            size=len(longest),
            unit="characters",
            where=where,
            hint=example,
        )
    return parts, None


def _is_setting_name(name: str) -> bool:
    return name[: len(ENV_PREFIX)].upper() == ENV_PREFIX


def _set_from_text(
    layers: _Layers, name: str, raw: str, source: str, *, secret: bool = False
) -> None:
    parts, problem = _env_path(name)
    if parts is None:
        assert problem is not None
        layers.problems.append(dataclasses.replace(problem, where=source))
        return
    value, ok = _parse_for(layers, parts, raw, source)
    if not ok:
        return
    if len(parts) == 2:
        layers.switch_backends({parts[0]: {parts[1]: value}})
    layers.set(parts, value, source, secret=secret)


def _apply_secrets_dir(layers: _Layers, secrets: SecretsDir, budget: _Expansion) -> None:
    """Files named like ``INFRAKIT__SECTION__KEY`` variables, below the environment."""
    for name in secrets.names():
        if not _is_setting_name(name):
            continue
        source = f"secret file {secrets.path / name}"
        try:
            path = secrets.find(name)
            raw = budget.read(path, "the secret file") if path is not None else None
        except FileProblem as problem:
            layers.problems.append(dataclasses.replace(problem.problem, where=source))
            continue
        if raw is not None:
            _set_from_text(layers, name, raw, source, secret=True)


def _apply_env(
    layers: _Layers, environ: Mapping[str, str], origins: Mapping[str, str] | None = None
) -> None:
    origins = origins or {}
    for name in sorted(environ):
        if not _is_setting_name(name):
            continue
        origin = origins.get(name)
        source = f"env {shorten(name, 80)}" + (f" ({origin})" if origin else "")
        _set_from_text(layers, name, environ[name], source)


def _flatten_overrides(overrides: Mapping[str, Any], prefix: Path_ = ()) -> list[tuple[Path_, Any]]:
    out: list[tuple[Path_, Any]] = []
    for key, value in overrides.items():
        if not isinstance(key, str) or not key.strip():
            raise ConfigError(ConfigProblem(f"override keys must be dotted strings, got {key!r}"))
        if len(prefix) + key.count(".") + 1 > MAX_DEPTH:
            raise ConfigError(
                exceeded(
                    "the override's nesting",
                    "MAX_DEPTH",
                    unit="levels",
                    key=shorten(".".join((*prefix, key))),
                    where="override",
                    hint="give each setting its own dotted key",
                )
            )
        path = (*prefix, *key.split("."))
        if any(len(p) > MAX_KEY_CHARS for p in path):
            raise ConfigError(
                exceeded(
                    "an override key's segment",
                    "MAX_KEY_CHARS",
                    unit="characters",
                    key=shorten(".".join(path)),
                    where="override",
                    hint="keys are setting names, e.g. database.pool_size",
                )
            )
        if isinstance(value, Mapping) and value:
            out.extend(_flatten_overrides(value, path))
        else:
            out.append((path, value))
    return out


def _apply_overrides(layers: _Layers, overrides: Mapping[str, Any]) -> None:
    for path, value in _flatten_overrides(overrides):
        if any(not p for p in path):
            layers.problems.append(
                ConfigProblem("empty key segment", key=".".join(path), where="override")
            )
            continue
        parsed, ok = value, True
        if isinstance(value, TextValue):
            parsed, ok = _parse_for(layers, path, str(value), value.where or "override")
        if not ok:
            continue
        if len(path) == 2:
            layers.switch_backends({path[0]: {path[1]: parsed}})
        layers.set(path, parsed, f"override {'.'.join(path)}")


# --- validation ---------------------------------------------------------------


def _model_at(path: Path_, tag: str | None) -> type[BaseModel] | None:
    """The model that validates the section at ``path`` (a component's backend
    model when ``tag`` names the backend)."""
    model: type[BaseModel] | None = settings_model()
    for depth, part in enumerate(path):
        if model is None:
            return None
        if depth == 0 and part in COMPONENT_SETTINGS and tag is not None:
            backend = registry.get_backend(part, tag)
            model = backend.settings if backend is not None else None
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        model = (
            annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel)
            else None
        )
    return model


def _fields_at(path: Path_, tag: str | None = None) -> list[str]:
    model = _model_at(path, tag)
    return sorted(model.model_fields) if model is not None else []


def _owners(component: str, key: str) -> list[str]:
    """The backends of ``component`` whose settings have ``key``."""
    return [
        name
        for name, backend in registry.backends(component).items()
        if key in backend.settings.model_fields
    ]


def _split_loc(loc: tuple[Any, ...]) -> tuple[Path_, str | None]:
    """pydantic's error location without the union tag it puts after a component
    (``('tokens', 'redis', 'url')`` -> ``('tokens', 'url')``, tag ``'redis'``)."""
    path = tuple(str(p) for p in loc)
    if len(path) > 1 and path[0] in COMPONENT_SETTINGS:
        return (path[0], *path[2:]), path[1]
    return path, None


def _source_of(path: Path_, sources: Mapping[Path_, str]) -> str:
    probe = path
    while probe:
        if probe in sources:
            return sources[probe]
        probe = probe[:-1]
    return "default"


def _validation_problems(
    exc: ValidationError, sources: Mapping[Path_, str], data: Mapping[str, Any]
) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    for error in exc.errors(include_url=False):
        path, tag = _split_loc(error["loc"])
        if error["type"] == "union_tag_invalid":
            # the section names a backend nothing provides
            component = path[0]
            selector = COMPONENT_SETTINGS[component].selector
            path = (component, selector)
            chosen = data.get(component, {}).get(selector) if isinstance(data, Mapping) else None
            problems.append(
                ConfigProblem(
                    unknown_backend(component, chosen),
                    key=".".join(path),
                    where=_source_of(path, sources),
                    value=mask_value(path, chosen),
                )
            )
            continue
        if len(path) == 1 and path[0] in COMPONENT_SETTINGS and error["type"] == "value_error":
            # a problem of the whole backend (a missing package): point at the selector
            path = (path[0], COMPONENT_SETTINGS[path[0]].selector)
        where = _source_of(path, sources)
        key = ".".join(path)
        if error["type"] == "extra_forbidden":
            fields = _fields_at(path[:-1], tag)
            owners = _owners(path[0], path[-1]) if len(path) == 2 and tag is not None else []
            if owners and path[0] in COMPONENT_SETTINGS:
                selector = COMPONENT_SETTINGS[path[0]].selector
                problems.append(
                    ConfigProblem(
                        f"not a key of the {path[0]} backend {tag!r}: it belongs to "
                        + " or ".join(repr(o) for o in owners),
                        key=key,
                        where=where,
                        hint=f"set {path[0]}.{selector}: {owners[0]}, or remove the key",
                    )
                )
                continue
            close = difflib.get_close_matches(path[-1], fields, n=1, cutoff=0.6)
            message = "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
            hint = f"valid keys here: {', '.join(fields)}" if fields and not close else None
            problems.append(ConfigProblem(message, key=key, where=where, hint=hint))
            continue
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(
            ConfigProblem(message, key=key, where=where, value=mask_value(path, error.get("input")))
        )
    return problems


def _hide(
    problems: list[ConfigProblem], secrets: frozenset[Path_], texts: set[str]
) -> list[ConfigProblem]:
    """Problems with nothing of a value read from a file: its value masked, and the
    text of every such value masked wherever a message might quote it."""
    # short texts are left alone: masking every "1" would garble the messages,
    # and a value that short is no secret worth the name
    hidden = sorted((t for t in texts if len(t) >= 4), key=len, reverse=True)
    out = []
    for problem in problems:
        path = tuple(problem.key.split(".")) if problem.key else ()
        fields: dict[str, str] = {}
        secret = any(path[:depth] in secrets for depth in range(1, len(path) + 1))
        if secret and problem.value is not None:
            fields["value"] = MASK
        for name in ("message", "value", "hint"):
            text = fields.get(name, getattr(problem, name))
            if text and any(s in text for s in hidden):
                for s in hidden:
                    text = text.replace(s, MASK)
                fields[name] = text
        out.append(dataclasses.replace(problem, **fields) if fields else problem)
    return out


def _path_option(
    given: str | os.PathLike[str] | None, environ: Mapping[str, str], variable: str, what: str
) -> Path | None:
    text = os.fspath(given) if given is not None else environ.get(variable) or None
    return None if text is None else _bounded_path(text, what)


def load_settings(
    profile: str | os.PathLike[str] | None = None,
    *,
    profiles_dir: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    env_file: str | os.PathLike[str] | None = None,
    secrets_dir: str | os.PathLike[str] | None = None,
) -> InfraSettings:
    """Load, merge and validate a profile.

    ``profile`` is a name (``<profiles_dir>/<name>.yaml``, falling back to the
    embedded profiles) or a path; ``None`` means ``$INFRAKIT_PROFILE``, else
    ``local``. ``environ`` defaults to ``os.environ`` and feeds both
    ``${VAR}`` interpolation and ``INFRAKIT__SECTION__KEY`` overrides;
    ``overrides`` (``{"database.pool_size": 3}``) beat everything.

    ``env_file`` (else ``$INFRAKIT_ENV_FILE``) is a ``.env`` file whose
    variables count as environment variables, the real environment winning.
    ``secrets_dir`` (else ``$INFRAKIT_SECRETS_DIR``) is a directory of files
    each named like a variable: ``INFRAKIT__DATABASE__URL`` sets that key
    (below the environment), ``DATABASE_URL`` answers ``${DATABASE_URL}`` when
    the variable is unset. Values read from files are secrets: masked in
    :meth:`InfraSettings.masked` and in errors.

    Raises :class:`~infrakit.errors.ConfigError` listing every problem.
    """
    real: Mapping[str, str] = os.environ if environ is None else environ
    env: Mapping[str, str] = real
    origins: dict[str, str] = {}
    dotenv_problems: list[ConfigProblem] = []
    dotenv_path = _path_option(env_file, real, ENV_FILE_ENV, "the env file")
    if dotenv_path is not None:
        values, lines, dotenv_problems = read_env_file(dotenv_path)
        origins = {name: line for name, line in lines.items() if name not in real}
        env = {**values, **real}
    secrets_path = _path_option(secrets_dir, env, SECRETS_DIR_ENV, "the secrets directory")
    secrets = SecretsDir(secrets_path) if secrets_path is not None else None
    path = resolve_profile(profile, profiles_dir=profiles_dir, environ=env)
    label = os.fspath(profile) if profile is not None else (env.get(PROFILE_ENV) or DEFAULT_PROFILE)
    layers = _Layers()
    layers.problems.extend(dotenv_problems)
    budget = _Expansion(env, origins=origins, secrets=secrets)
    try:
        _load_chain(path, _profiles_dir(profiles_dir, env), budget, layers)
    except ConfigError as exc:
        raise ConfigError(list(exc.problems), profile=label) from None
    if secrets is not None:
        _apply_secrets_dir(layers, secrets, budget)
    _apply_env(layers, env, origins)
    if overrides:
        _apply_overrides(layers, overrides)
    layers.problems.extend(layers.pending.values())
    secret_paths = layers.sources.secret_paths()
    try:
        settings = settings_model(layers.data).model_validate(layers.data)
    except ValidationError as exc:
        layers.problems.extend(_validation_problems(exc, layers.sources, layers.data))
        raise ConfigError(
            _hide(layers.problems, secret_paths, budget.texts), profile=label
        ) from None
    if layers.problems:
        raise ConfigError(_hide(layers.problems, secret_paths, budget.texts), profile=label)
    settings._profile = label
    settings._sources = {".".join(p): s for p, s in layers.sources.items()}
    settings._secret_paths = secret_paths
    _mask_in_reprs(settings, secret_paths)
    return settings


def _mask_in_reprs(settings: InfraSettings, paths: Iterable[tuple[str, ...]]) -> None:
    """Mark, on the section that holds it, each field whose value (or a value
    inside it) was read from a file, so ``repr()`` of the settings and of the
    section shows it masked whatever its type."""
    for path in paths:
        node: Any = settings
        for part in path:
            child = getattr(node, part, None) if isinstance(node, BaseModel) else None
            if isinstance(child, Section):
                node = child
                continue
            if isinstance(node, Section):
                node._masked_fields = node._masked_fields | {part}
            break
