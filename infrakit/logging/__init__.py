"""The logging pipeline: structlog, PII redaction, request and trace context."""

from infrakit.logging.config import configure_logging, configure_logging_from, reset_logging
from infrakit.logging.context import (
    add_request_id,
    add_trace_context,
    clear_request_id,
    get_request_id,
    request_context,
    set_request_id,
)
from infrakit.logging.redaction import DEFAULT_PATTERNS, REDACTED, PIIRedactor, is_sensitive_key

__all__ = [
    "DEFAULT_PATTERNS",
    "REDACTED",
    "PIIRedactor",
    "add_request_id",
    "add_trace_context",
    "clear_request_id",
    "configure_logging",
    "configure_logging_from",
    "get_request_id",
    "is_sensitive_key",
    "request_context",
    "reset_logging",
    "set_request_id",
]
