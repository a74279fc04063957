"""Values that come from files: ``${file:...}``, ``*_FILE`` variables, the
secrets directory and the env file.

A file holding one value (a Docker or Kubernetes secret) is read as UTF-8 text
with one trailing newline removed (``echo pw > file`` writes one), bounded by
``MAX_FILE_BYTES`` and opened without blocking (a FIFO or a device is refused,
not waited on). Problems name the path, never the content.

The secrets directory follows pydantic-settings' ``secrets_dir``: a file is
named like the variable it stands for, matched without regard to case; files
that resolve outside the directory are refused (Kubernetes' ``..data``
symlinks stay inside it). Names starting with ``.`` are skipped.

The env file is parsed by python-dotenv (quotes, escapes, ``export``,
comments), its values taken literally: no ``${...}`` expansion inside it.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

from dotenv.parser import parse_stream

from infrakit.errors import ConfigError, ConfigProblem
from infrakit.settings.limits import (
    MAX_DIR_ENTRIES,
    MAX_FILE_BYTES,
    MAX_PATH_CHARS,
    exceeded,
)

__all__ = ["FileProblem", "SecretsDir", "display", "read_env_file", "read_value_file"]


def display(path: Path) -> str:
    """``path`` relative to the working directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


class FileProblem(Exception):  # noqa: N818 - a reason to report, not an error raised to users
    """Why a value file could not be used (``missing``: it does not exist)."""

    def __init__(self, problem: ConfigProblem, *, missing: bool = False) -> None:
        super().__init__(problem.message)
        self.problem = problem
        self.missing = missing


def _read_bounded(path: Path, what: str) -> bytes:
    """The bytes of a regular file of at most ``MAX_FILE_BYTES``."""
    shown = str(path)
    if len(shown) > MAX_PATH_CHARS:
        raise FileProblem(
            exceeded(
                f"the path of {what}",
                "MAX_PATH_CHARS",
                size=len(str(path)),
                unit="characters",
                hint="check the path",
            )
        )
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FileProblem(
            ConfigProblem(f"{what} {shown} does not exist", hint="check the path"), missing=True
        ) from None
    except OSError as exc:
        raise FileProblem(
            ConfigProblem(f"cannot read {what} {shown}: {exc.strerror}", hint=_hint(exc))
        ) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise FileProblem(
            ConfigProblem(f"{what} {shown} is {kind}", hint="name the file holding the value")
        )
    with os.fdopen(fd, "rb") as file:
        if info.st_size > MAX_FILE_BYTES:
            raise FileProblem(_too_big(what, shown, info.st_size))
        try:
            raw = file.read(MAX_FILE_BYTES + 1)  # stat can be wrong (/proc, a growing file)
        except OSError as exc:
            raise FileProblem(
                ConfigProblem(f"cannot read {what} {shown}: {exc.strerror}", hint=_hint(exc))
            ) from None
    if len(raw) > MAX_FILE_BYTES:
        raise FileProblem(_too_big(what, shown, None))
    return raw


def _hint(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "give the service's user read access to the file"
    return "check the path"


def _too_big(what: str, shown: str, size: int | None) -> ConfigProblem:
    return exceeded(
        f"{what} {shown}",
        "MAX_FILE_BYTES",
        size=size,
        unit="bytes",
        hint="a value file holds one value (a password, a key, a certificate)",
    )


def _decode(raw: bytes, what: str, path: Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileProblem(
            ConfigProblem(
                f"{what} {path} is not UTF-8 text (byte {exc.start})",
                hint="a binary value must be encoded (base64) and decoded by its user",
            )
        ) from None


def read_value_file(path: Path, what: str = "the file") -> str:
    """The value a file holds: its UTF-8 text, one trailing newline removed.

    Raises :class:`FileProblem` naming the path (never the content).
    """
    text = _decode(_read_bounded(path, what), what, path)
    if text.endswith("\r\n"):
        return text[:-2]
    return text.removesuffix("\n")


def read_env_file(path: Path) -> tuple[dict[str, str], dict[str, str], list[ConfigProblem]]:
    """The variables of an env file, ``NAME -> "file:line"`` for each, and the
    lines that could not be used. A missing file is a ConfigError."""
    where = display(path)
    try:
        text = _decode(_read_bounded(path, "the env file"), "the env file", path)
    except FileProblem as problem:
        hint = (
            "check --env-file / INFRAKIT_ENV_FILE / env_file= (a file named explicitly must exist)"
            if problem.missing
            else problem.problem.hint
        )
        raise ConfigError(ConfigProblem(problem.problem.message, hint=hint)) from None
    values: dict[str, str] = {}
    origins: dict[str, str] = {}
    problems: list[ConfigProblem] = []
    # python-dotenv's own parser (what dotenv_values() uses), for the line numbers
    for binding in parse_stream(io.StringIO(text.removeprefix("\ufeff"))):
        line = f"{where}:{binding.original.line}"
        if binding.error:
            problems.append(
                ConfigProblem(
                    "cannot parse this line of the env file",
                    where=line,
                    hint="write NAME=value (quote values with spaces or '#')",
                )
            )
        elif binding.key is not None and binding.value is None:
            problems.append(
                ConfigProblem(
                    f"{binding.key} has no value",
                    where=line,
                    hint=f"write {binding.key}= for an empty value, or remove the line",
                )
            )
        elif binding.key is not None and binding.value is not None:
            values[binding.key] = binding.value
            origins[binding.key] = line
    return values, origins, problems


class SecretsDir:
    """A directory of files each named like the variable whose value it holds."""

    __slots__ = ("_by_name", "_resolved", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        shown = str(path)
        hint = "check --secrets-dir / INFRAKIT_SECRETS_DIR / secrets_dir="
        try:
            is_dir = path.is_dir()
            exists = is_dir or path.exists()
        except OSError as exc:
            raise ConfigError(
                ConfigProblem(f"cannot look up the secrets directory {shown}: {exc.strerror}")
            ) from None
        if not exists:
            raise ConfigError(
                ConfigProblem(f"the secrets directory {shown} does not exist", hint=hint)
            )
        if not is_dir:
            raise ConfigError(
                ConfigProblem(f"the secrets directory {shown} is not a directory", hint=hint)
            )
        self._resolved = path.resolve()
        self._by_name: dict[str, list[str]] = {}
        try:
            with os.scandir(path) as entries:
                for count, entry in enumerate(entries, 1):
                    if count > MAX_DIR_ENTRIES:
                        raise ConfigError(
                            exceeded(
                                f"the secrets directory {shown}",
                                "MAX_DIR_ENTRIES",
                                unit="entries",
                                hint="point it at the directory the secrets are mounted in",
                            )
                        )
                    if not entry.name.startswith("."):
                        self._by_name.setdefault(entry.name.lower(), []).append(entry.name)
        except OSError as exc:
            raise ConfigError(
                ConfigProblem(f"cannot list the secrets directory {shown}: {exc.strerror}")
            ) from None

    def names(self) -> list[str]:
        """The file names in the directory (sorted)."""
        return sorted(name for names in self._by_name.values() for name in names)

    def find(self, name: str) -> Path | None:
        """The file for variable ``name`` (the same name, or the one that differs only
        in case), or None. Raises :class:`FileProblem` when it cannot be used."""
        names = self._by_name.get(name.lower(), [])
        if not names:
            return None
        chosen = name if name in names else None
        if chosen is None and len(names) > 1:
            raise FileProblem(
                ConfigProblem(
                    f"the secrets directory has several files for {name}: "
                    + ", ".join(sorted(names)),
                    hint="keep one of them",
                )
            )
        path = self.path / (chosen or names[0])
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError):
            resolved = path
        if self._resolved not in resolved.parents:
            raise FileProblem(
                ConfigProblem(
                    f"the secret file {path} resolves outside the secrets directory",
                    hint="mount the secret inside the directory",
                )
            )
        return path
