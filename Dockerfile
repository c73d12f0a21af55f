# syntax=docker/dockerfile:1
#
# keyshift worker image.
#   docker build -t keyshift .
#   docker run --rm keyshift                      # runs examples.wordcount:app
#   docker run --rm keyshift mypkg.module:app     # any importable app
# See docs/docker.md.

# ---- builder: wheels for keyshift and all of its dependencies ----------------
FROM python:3.12-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY . .
RUN pip wheel --wheel-dir /wheels .

# ---- runtime ----------------------------------------------------------------
FROM python:3.12-slim AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app

# Install offline from the builder's wheels: nothing is fetched at runtime.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels keyshift

RUN groupadd --system --gid 10001 keyshift \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /app --shell /usr/sbin/nologin keyshift

WORKDIR /app
COPY --chown=keyshift:keyshift examples/ /app/examples/

# Defaults match the service names in docker-compose.yml; override with -e.
# The operations endpoint (/metrics, /healthz, /readyz) listens on port 9400 of
# the container's own network namespace, so that probes and Prometheus reach it.
ENV KEYSHIFT_BROKERS=kafka:9092 \
    KEYSHIFT_STATE=redis://redis:6379/0 \
    KEYSHIFT_METRICS_PORT=9400 \
    KEYSHIFT_METRICS_HOST=0.0.0.0
EXPOSE 9400

USER keyshift

# Healthy while the worker's processing loop turns (or it restores state); a
# 503 (stuck loop, failed worker) or no answer fails the check.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9400/healthz', timeout=4)"]

ENTRYPOINT ["keyshift", "worker"]
CMD ["examples.wordcount:app"]
