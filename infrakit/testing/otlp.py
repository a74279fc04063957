"""A real OTLP receiver on loopback, for tests: HTTP/protobuf and gRPC.

It decodes what the real exporters send with the ``opentelemetry-proto``
package, so tests assert on spans as a collector would see them::

    with OtlpReceiver() as receiver:
        ...  # point telemetry.endpoint at receiver.http_endpoint (or grpc_endpoint)
        spans = receiver.wait_for_spans(3)
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["OtlpReceiver", "ReceivedSpan"]


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the collector decoded it."""

    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    status_code: int  # 0 UNSET, 1 OK, 2 ERROR
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    events: list[str] = field(default_factory=list)
    #: each event's attributes, in the order of ``events``
    event_attributes: list[dict[str, Any]] = field(default_factory=list)
    status_message: str = ""


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    value = getattr(any_value, kind)
    if kind == "array_value":
        return [_value(v) for v in value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.values}
    return value


def _attributes(items: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in items}


def _received(span: Any, resource: dict[str, Any], scope: str) -> ReceivedSpan:
    return ReceivedSpan(
        name=span.name,
        kind=span.kind,
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex(),
        status_code=span.status.code,
        attributes=_attributes(span.attributes),
        resource=resource,
        scope=scope,
        events=[e.name for e in span.events],
        event_attributes=[_attributes(e.attributes) for e in span.events],
        status_message=span.status.message,
    )


class OtlpReceiver:
    """Collects spans and metric names sent over OTLP/HTTP and OTLP/gRPC."""

    def __init__(
        self,
        *,
        grpc: bool = True,
        hang: bool = False,
        host: str = "127.0.0.1",
        http_port: int = 0,
        grpc_port: int = 0,
        keep: bool = True,
        on_spans: Callable[[list[ReceivedSpan]], None] | None = None,
        on_metrics: Callable[[list[str]], None] | None = None,
    ) -> None:
        """``hang=True``: accept each OTLP/HTTP export and hold it unanswered until
        :meth:`release` (then answer it normally) or :meth:`stop` (then drop it).
        Ports 0 pick free ones. ``keep=False`` keeps no span or metric name (a
        long-running receiver); ``on_spans``/``on_metrics`` see each export's."""
        self._host = host
        self._ports = (http_port, grpc_port)
        self._keep = keep
        self._on_spans = on_spans
        self._on_metrics = on_metrics
        self._lock = threading.Lock()
        self.spans: list[ReceivedSpan] = []
        self.metric_names: list[str] = []
        self.requests = 0
        #: export requests a hanging receiver has accepted and holds unanswered
        self.held = 0
        self._hang = threading.Event() if hang else None
        self._stopping = False
        self._want_grpc = grpc
        self._http: ThreadingHTTPServer | None = None
        self._grpc: Any = None
        self.http_port = 0
        self.grpc_port = 0

    # --- decoding ---------------------------------------------------------------

    def _take_traces(self, payload: bytes) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        request = ExportTraceServiceRequest()
        request.ParseFromString(payload)
        self._add_traces(request)

    def _add_traces(self, request: Any) -> None:
        found = [
            _received(span, _attributes(resource_spans.resource.attributes), scope_spans.scope.name)
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]
        with self._lock:
            if self._keep:
                self.spans.extend(found)
            self.requests += 1
        if self._on_spans is not None and found:
            self._on_spans(found)

    def _take_metrics(self, payload: bytes) -> None:
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
            ExportMetricsServiceRequest,
        )

        request = ExportMetricsServiceRequest()
        request.ParseFromString(payload)
        self._add_metrics(request)

    def _add_metrics(self, request: Any) -> None:
        names = [
            metric.name
            for resource_metrics in request.resource_metrics
            for scope_metrics in resource_metrics.scope_metrics
            for metric in scope_metrics.metrics
        ]
        with self._lock:
            if self._keep:
                self.metric_names.extend(names)
            self.requests += 1
        if self._on_metrics is not None and names:
            self._on_metrics(names)

    # --- servers ----------------------------------------------------------------

    def _http_handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                if receiver._hang is not None and not receiver._hang.is_set():
                    with receiver._lock:
                        receiver.held += 1
                    receiver._hang.wait()  # accept, answer nothing until released
                    if receiver._stopping:
                        return
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path == "/v1/traces":
                    receiver._take_traces(body)
                elif self.path == "/v1/metrics":
                    receiver._take_metrics(body)
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def _start_grpc(self) -> None:
        from concurrent import futures

        import grpc
        from opentelemetry.proto.collector.metrics.v1 import (
            metrics_service_pb2,
            metrics_service_pb2_grpc,
        )
        from opentelemetry.proto.collector.trace.v1 import (
            trace_service_pb2,
            trace_service_pb2_grpc,
        )

        receiver = self

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC's name
                receiver._add_traces(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC's name
                receiver._add_metrics(request)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)  # type: ignore[no-untyped-call]
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)  # type: ignore[no-untyped-call]
        self.grpc_port = server.add_insecure_port(f"{self._host}:{self._ports[1]}")
        if not self.grpc_port:  # grpc answers 0 instead of raising
            raise OSError(f"cannot listen on {self._host}:{self._ports[1]} (gRPC): in use?")
        server.start()
        self._grpc = server

    def start(self) -> OtlpReceiver:
        self._http = ThreadingHTTPServer((self._host, self._ports[0]), self._http_handler())
        self._http.daemon_threads = True
        self.http_port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        if self._want_grpc:
            try:
                self._start_grpc()
            except BaseException:
                self.stop()
                raise
        return self

    def release(self) -> None:
        """Answer the held exports, and every later one, normally."""
        if self._hang is not None:
            self._hang.set()

    def stop(self) -> None:
        self._stopping = True
        if self._hang is not None:
            self._hang.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._grpc is not None:
            self._grpc.stop(grace=None)

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def http_endpoint(self) -> str:
        return f"http://{self._host}:{self.http_port}"

    @property
    def grpc_endpoint(self) -> str:
        return f"http://{self._host}:{self.grpc_port}"

    def wait_for_spans(self, count: int, timeout_s: float = 10.0) -> list[ReceivedSpan]:
        """Spans received so far, once at least ``count`` arrived (or the timeout)."""
        self._wait_until(lambda: len(self.spans) >= count, timeout_s)
        with self._lock:
            return list(self.spans)

    def wait_for_held(self, count: int = 1, timeout_s: float = 30.0) -> int:
        """Requests a hanging receiver holds, once at least ``count`` (or the timeout)."""
        self._wait_until(lambda: self.held >= count, timeout_s)
        with self._lock:
            return self.held

    def _wait_until(self, condition: Any, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if condition():
                    return
            time.sleep(0.02)
