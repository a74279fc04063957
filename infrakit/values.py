"""Small value checks shared by the components (one copy each)."""

from __future__ import annotations

import typing
from datetime import UTC, datetime
from typing import Literal

__all__ = ["DISTRIBUTION", "LOG_LEVELS", "LogLevel", "as_utc", "install_line"]

#: The name infrakit is installed under (``infrakit`` on PyPI is another project);
#: the import name and the command stay ``infrakit``.
DISTRIBUTION = "infrakit-compose"


def install_line(extra: str) -> str:
    """The command that adds ``extra`` to an installed infrakit (pip reads the
    extra's requirements from the installed distribution, wherever it came from)."""
    return f'pip install "{DISTRIBUTION}[{extra}]"'


#: The log levels a profile and ``configure_logging`` accept.
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LOG_LEVELS: tuple[str, ...] = typing.get_args(LogLevel)


def as_utc(name: str, value: object) -> datetime:
    """``value`` as an aware UTC datetime; a naive one or a non-datetime is a ValueError."""
    if not isinstance(value, datetime):
        raise ValueError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got naive {value.isoformat()}")
    return value.astimezone(UTC)
