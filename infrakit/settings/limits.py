"""The loader's resource bounds: every input it reads is capped, and checked first.

A profile, the environment and the command line are input like any other: a
40 KB profile that repeats ``${A}`` ten thousand times, a 100,000-deep JSON
value or a 5,000-segment variable name must not cost gigabytes or minutes.
Each bound below is far above any real profile (the kit's own profiles are
about 1 KB, nest four levels deep and use a handful of variables), and each
is checked *before* the work it bounds: a file's size before it is read, a
value's length before it is parsed, the expanded size while it is expanded.

A bound that is reached is a :class:`~infrakit.errors.ConfigError` naming the
bound (``MAX_PROFILE_BYTES`` ...), where the input came from (file and line,
the variable's name; never the value, which may be a secret) and the fix.

The bounds are constants, not settings: a profile cannot raise the bounds it
is checked against. If a real profile reaches one, that is a bug to report.
"""

from __future__ import annotations

from infrakit.errors import ConfigProblem

__all__ = [
    "MAX_DEPTH",
    "MAX_DIR_ENTRIES",
    "MAX_EXPANDED_CHARS",
    "MAX_EXTENDS",
    "MAX_FILE_BYTES",
    "MAX_INTERPOLATIONS",
    "MAX_INT_CHARS",
    "MAX_KEY_CHARS",
    "MAX_PATH_CHARS",
    "MAX_PROFILE_BYTES",
    "MAX_PROFILE_NAME_CHARS",
    "MAX_VALUES",
    "MAX_VALUE_CHARS",
    "exceeded",
    "shorten",
]

#: Size of one profile file (checked with ``stat`` before reading; the read
#: itself stops one byte past it).
MAX_PROFILE_BYTES = 1 << 20  # 1 MiB
#: Profiles in one ``extends`` chain, the loaded one included.
MAX_EXTENDS = 32
#: Keys and values (mappings, lists, scalars) in one YAML document, an alias
#: counted each time it is used (what stops "billion laughs"). PyYAML builds
#: about 10,000 values a second, so this also bounds the time to parse a file.
MAX_VALUES = 10_000
#: Nesting of mappings and lists: in a YAML document, in a JSON value of an
#: ``INFRAKIT__`` variable or ``--set``, and the segments of a variable name or
#: override key.
MAX_DEPTH = 64
#: Characters of one key: a YAML key, a segment of ``INFRAKIT__A__B`` or of a
#: dotted override key.
MAX_KEY_CHARS = 256
#: Characters of an integer written in YAML or JSON (Python itself refuses
#: more than 4,300 decimal digits, with a raw ``ValueError``).
MAX_INT_CHARS = 100
#: ``${VAR}`` references interpolated in one load, over the whole chain.
MAX_INTERPOLATIONS = 10_000
#: Characters of all interpolated strings in one load, counted while expanding.
MAX_EXPANDED_CHARS = 4 << 20  # 4 Mi characters
#: Characters of the value of one ``INFRAKIT__`` variable or ``--set``.
MAX_VALUE_CHARS = 1 << 20  # 1 Mi characters
#: Characters of a profile name: with ``.yaml``, the 255 bytes most file
#: systems allow in a file name.
MAX_PROFILE_NAME_CHARS = 250
#: Characters of a profile path, of ``extends:``, of ``INFRAKIT_PROFILES_DIR`` and
#: of the paths of value files (``${file:...}``, the env file, the secrets directory).
MAX_PATH_CHARS = 4096
#: Size of one file read for values: an env file, a ``${file:...}``, a file of the
#: secrets directory or named by a ``*_FILE`` variable (a certificate bundle is
#: about 200 KB). Its text also counts towards ``MAX_EXPANDED_CHARS``.
MAX_FILE_BYTES = 1 << 20  # 1 MiB
#: Entries of the secrets directory looked through (Kubernetes mounts a handful).
MAX_DIR_ENTRIES = 10_000


def shorten(text: str, keep: int = 60, *, count: bool = True) -> str:
    """``text`` cut for a message: a huge key or variable name is shown by its
    start (and its length, unless the message says it already)."""
    if len(text) <= keep:
        return text
    return f"{text[:keep]}..." + (f" ({len(text):,} characters)" if count else "")


def exceeded(
    what: str,
    limit: str,
    *,
    size: int | None = None,
    unit: str = "",
    where: str = "",
    key: str = "",
    hint: str,
) -> ConfigProblem:
    """The problem for one bound: what was too big (by how much, when it was
    measured rather than counted up to the bound), which bound by its name
    here, and how to fix it."""
    value: int = globals()[limit]
    unit = f" {unit}" if unit else ""
    measured = f" is {size:,}{unit}," if size is not None else " is"
    return ConfigProblem(
        f"{what}{measured} over the loader's limit of {value:,}{unit} ({limit})",
        key=key,
        where=where,
        hint=hint,
    )
