"""Every Prometheus metric of the node, in one place. Each process exports
the ones it records: the gRPC server (realtime, Ollama, the queue's gauges)
and the bridge on their /metrics, each worker (jobs, Ollama, webhooks) on its
health port."""

from prometheus_client import Counter, Gauge, Histogram

# Seconds: from a few milliseconds to the longest a job may reasonably wait or run.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

JOBS = Gauge("vlmnode_jobs", "Jobs in the queue by status", ["status"])
QUEUE_DEPTH = Gauge("vlmnode_queue_depth", "Pending jobs that are due")
OLDEST_PENDING = Gauge("vlmnode_oldest_pending_seconds", "Age of the oldest pending job")
PICKUP = Histogram("vlmnode_job_pickup_seconds", "From a job being due to a worker claiming it", buckets=LATENCY_BUCKETS)
JOB_DURATION = Histogram(
    "vlmnode_job_duration_seconds", "One attempt of a job, by type and outcome", ["job_type", "outcome"],
    buckets=LATENCY_BUCKETS,
)
OLLAMA_SECONDS = Histogram(
    "vlmnode_ollama_request_seconds", "Ollama requests, to the end of the answer", ["model"], buckets=LATENCY_BUCKETS
)
OLLAMA_SLOT_WAIT = Histogram(
    "vlmnode_ollama_slot_wait_seconds", "Waits for one of the node's slots for a model, before asking Ollama", ["model"],
    buckets=LATENCY_BUCKETS,
)
OLLAMA_ERRORS = Counter("vlmnode_ollama_errors_total", "Ollama requests that failed", ["model", "code"])
MODEL_TOKENS = Counter(
    "vlmnode_model_tokens_total", "Tokens of answered requests as the model server counted them, by kind: "
    "prompt (read) or answer (written)", ["model", "kind"],
)
# Each model server of a role (server/pool.py); `server` is its URL without a password.
MODEL_SERVER_UP = Gauge(
    "vlmnode_model_server_up", "1 while a model server takes requests, 0 while it is out after failing",
    ["role", "server"],
)
MODEL_SERVER_IN_FLIGHT = Gauge(
    "vlmnode_model_server_in_flight", "Requests in flight to a model server, waiting for a slot included",
    ["role", "server"],
)
MODEL_SERVER_TAKEN_OUT = Counter(
    "vlmnode_model_server_taken_out_total", "Times a model server was taken out after failing", ["role", "server"]
)
STREAMS = Gauge("vlmnode_realtime_streams", "Realtime Infer streams open")
FRAMES = Counter("vlmnode_frames_received_total", "Frames received on realtime streams")
FRAMES_DROPPED = Counter("vlmnode_frames_dropped_total", "Frames dropped because the model was busy")
WEBSOCKETS = Gauge("vlmnode_websockets", "WebSocket clients connected to the bridge")
WEBHOOKS = Counter("vlmnode_webhook_deliveries_total", "Webhook deliveries by outcome", ["outcome"])
