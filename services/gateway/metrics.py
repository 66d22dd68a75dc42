"""Prometheus metrics of the gateway (``cretoai_gateway_*``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "cretoai_gateway_http_requests_total",
    "HTTP requests by route, method and status",
    ["route", "method", "status"],
)
HTTP_UNPARSABLE = Counter(
    "cretoai_gateway_http_unparsable_requests_total",
    "HTTP requests aiohttp's parser refused before the API saw them (a malformed request "
    "line or header, a bad chunk), answered with a JSON error and closed, by status",
    ["status"],
)
HTTP_LATENCY = Histogram(
    "cretoai_gateway_http_request_seconds",
    "Time to answer an HTTP request (to the upgrade for WebSockets)",
    ["route", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SUBMISSIONS = Counter(
    "cretoai_gateway_submissions_total",
    "Vertex submissions by API and outcome (accepted, duplicate, or the error code)",
    ["api", "outcome"],
)
FINALITY_WAIT = Histogram(
    "cretoai_gateway_finality_wait_seconds",
    "From submission to the answer of a waiting caller, by outcome",
    ["outcome"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
WAITERS = Gauge("cretoai_gateway_finality_waiters", "Callers waiting for a vertex to be final")
REQUEST_BYTES = Gauge(
    "cretoai_gateway_request_bytes_in_progress",
    "Bytes held by submission requests in progress, HTTP and gRPC (reserved before reading)",
)
ANSWER_BYTES = Gauge(
    "cretoai_gateway_answer_bytes_in_progress",
    "Bytes reserved by read answers in progress (a vertex, a page of batches), until sent",
)
SUBSCRIBERS = Gauge(
    "cretoai_gateway_stream_subscribers", "Subscribers of the finalized stream", ["api"]
)
STREAM_OVERFLOWS = Counter(
    "cretoai_gateway_stream_overflows_total",
    "Live subscribers whose buffer overflowed (they are disconnected, to resume by seq)",
    ["api"],
)
STREAMS_EVICTED = Counter(
    "cretoai_gateway_stream_evictions_total",
    "Subscribers ended to give their slot to a client holding fewer streams, when "
    "gateway.max_streams were open (the evicted client held the most; it may resume by seq)",
    ["api"],
)
STREAMS_ABORTED = Counter(
    "cretoai_gateway_stream_aborts_total",
    "Subscriber calls aborted because their client took nothing for "
    "END_GRACE_S after the gateway ended the stream (overflowed or evicted)",
    ["api"],
)
GRPC_CALLS_REFUSED = Counter(
    "cretoai_gateway_grpc_calls_refused_total",
    "Public gRPC calls refused at once because their client already had "
    "gateway.grpc_max_concurrent_rpcs_per_client calls in progress (limit per_client), or "
    "gateway.grpc_max_concurrent_rpcs were in progress and no client held two more than "
    "this one (limit total)",
    ["limit"],
)
GRPC_CALLS_EVICTED = Counter(
    "cretoai_gateway_grpc_calls_evicted_total",
    "Public gRPC calls ended (RESOURCE_EXHAUSTED) to admit a call of a client holding at "
    "least two fewer, all gateway.grpc_max_concurrent_rpcs being in progress",
)
STREAMS_REFUSED = Counter(
    "cretoai_gateway_streams_refused_total",
    "Subscriptions refused because gateway.max_streams subscribers were open (limit "
    "max_streams), or gateway.max_streams_per_client from the client's address (limit "
    "per_client)",
    ["api", "limit"],
)
CONNECTIONS_REFUSED = Counter(
    "cretoai_gateway_connections_refused_total",
    "HTTP connections refused: gateway.max_connections were open in all (limit total), "
    "or gateway.max_connections_per_client from its address (limit per_client)",
    ["api", "limit"],
)
CONNECTIONS_EVICTED = Counter(
    "cretoai_gateway_connections_evicted_total",
    "HTTP connections closed to admit a client holding at least two fewer, when "
    "gateway.max_connections were open (the evicted connection's client held the most)",
)
HTTP_CONNECTIONS = Gauge(
    "cretoai_gateway_http_connections", "HTTP connections open (WebSocket ones included)"
)
HTTP_WRITE_TIMEOUTS = Counter(
    "cretoai_gateway_http_write_timeouts_total",
    "HTTP connections (WebSocket ones included) aborted because their client took "
    "nothing the gateway sent it for gateway.idle_timeout_ms",
)
REQUEST_TIMEOUTS = Counter(
    "cretoai_gateway_request_timeouts_total",
    "HTTP requests whose body did not arrive within gateway.body_timeout_ms",
)
STREAM_CLOSED = Counter(
    "cretoai_gateway_stream_disconnects_total",
    "Finalized-stream subscribers disconnected by the gateway, by reason",
    ["reason"],
)
WATCH_SEQ = Gauge(
    "cretoai_gateway_watch_seq", "Last finalized seq received from the consensus service"
)
WATCH_RECONNECTS = Counter(
    "cretoai_gateway_watch_reconnects_total",
    "Times the gateway re-subscribed to the consensus finalized stream",
)
CONSENSUS_SUBMIT_CALLS = Counter(
    "cretoai_gateway_consensus_submit_calls_total",
    "Calls submitting vertices to the consensus service, by RPC (SubmitVertices; "
    "SubmitVertex only with a consensus service that lacks it)",
    ["rpc"],
)
CONSENSUS_SUBMIT_SHED = Counter(
    "cretoai_gateway_consensus_submit_shed_total",
    "Vertices refused (429 overloaded) without a call to consensus, because too many "
    "were already waiting for its answer, or because they waited SLOW_CALL_S in the queue "
    "for a call (services/gateway/coalesce.py)",
)
CONSENSUS_SUBMIT_CALL_VERTICES = Histogram(
    "cretoai_gateway_consensus_submit_call_vertices",
    "Vertices per call submitting vertices to the consensus service",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
CONSENSUS_OVERLOADED = Gauge(
    "cretoai_gateway_consensus_overloaded",
    "1 while consensus says it is overloaded (WatchAdmission): submissions are refused "
    "here at once, 429",
)
ADMISSION_LIVE = Gauge(
    "cretoai_gateway_admission_live",
    "1 while the gateway follows consensus's admission state (its WatchAdmission stream "
    "is up); 0: overloaded submissions are refused by consensus, after their wait",
)
