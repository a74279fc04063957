"""Testing helpers for applications built on infrakit.

- the pytest plugin (:mod:`infrakit.testing.plugin`, loaded automatically):
  ``infra``, ``infra_factory``, ``captured_logs``, ``captured_spans``;
- :func:`override` and :func:`capture_logs` for use outside fixtures;
- the backend contract suites, :mod:`infrakit.testing.contracts`;
- a real OTLP receiver, :mod:`infrakit.testing.otlp`.
"""

from infrakit.testing.capture import CapturedSpans, capture_logs, span_attributes
from infrakit.testing.plugin import override

__all__ = ["CapturedSpans", "capture_logs", "override", "span_attributes"]
