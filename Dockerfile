# VLM Node: one image for its three processes; the command picks the process.
#   python -m server.main          gRPC server            (GRPC_PORT, 50051)
#   python -m server.bridge.main   HTTP/WebSocket bridge  (HTTP_PORT, 8080)
#   python -m worker.main          job worker             (no port)
# Build: docker build -t vlm-node .   Settings: environment variables (README).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The node and its client package, with the pinned dependencies of their
# pyproject.toml files; no dev extras. .dockerignore lists what is copied.
COPY . /tmp/src
RUN pip install /tmp/src/clients/python /tmp/src \
    && rm -rf /tmp/src

WORKDIR /app
COPY deploy/healthcheck.py /app/healthcheck.py

RUN groupadd --system --gid 10001 vlmnode \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin vlmnode
USER 10001:10001

EXPOSE 50051 8080 9100 8081
# Asks each process running here its /health (server 9100, bridge 8080, worker 8081).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/app/healthcheck.py"]
CMD ["python", "-m", "server.main"]
