# One image for every service of a CretoAI node (see docs/deployment.md):
#
#   docker build -t cretoai/node:local .
#   docker run --rm cretoai/node:local start --config /cluster/node1/node.toml --service consensus
#
# Build arguments:
#   BASE_IMAGE      a Debian bookworm image with Python 3.11 (python3 -m venv must work)
#   LIBOQS_VERSION  the liboqs release built for the liboqs-python backend; empty: none.
#                   Where its source cannot be fetched the build goes on with the
#                   cryptography backend and says so ("liboqs source unavailable: ...").
#   LIBOQS_SHA256   the release tarball's SHA-256 (checked when given)
#
# A directory .wheelhouse/ in the build context, when present, is the only package
# index (pip --no-index --find-links): builds without network (the tests) supply
# every wheel there.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder
ARG LIBOQS_VERSION=0.14.0
ARG LIBOQS_SHA256=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
COPY docker/build-liboqs.sh /usr/local/lib/cretoai/build-liboqs.sh
RUN /usr/local/lib/cretoai/build-liboqs.sh "$LIBOQS_VERSION" "$LIBOQS_SHA256"
COPY . /src
RUN set -eu; \
    python3 -m venv /opt/venv; \
    index=""; \
    if [ -d /src/.wheelhouse ]; then index="--no-index --find-links /src/.wheelhouse"; fi; \
    extras=""; \
    if [ -e /opt/liboqs/lib/liboqs.so ]; then extras="[oqs]"; fi; \
    /opt/venv/bin/pip install -q $index "/src$extras"; \
    /opt/venv/bin/cretoai-node --version

FROM ${BASE_IMAGE} AS runtime
# The fixed uid/gid the services (and the compose init job) run as: files in the
# volumes, private keys included (0600), belong to it. /cluster/nodeN and /keys/nodeN
# are the mount points of compose.yaml's volumes (a fresh volume takes their owner).
ARG UID=10001
RUN set -eu; \
    groupadd --system --gid "$UID" cretoai; \
    useradd --system --uid "$UID" --gid "$UID" --home-dir /var/lib/cretoai \
        --no-create-home --shell /usr/sbin/nologin cretoai; \
    mkdir -p /var/lib/cretoai /cluster /keys; \
    for i in 1 2 3 4 5 6 7; do mkdir -p "/cluster/node$i" "/keys/node$i"; done; \
    chown -R "$UID:$UID" /var/lib/cretoai /cluster /keys; \
    chmod 0700 /var/lib/cretoai /cluster/node* /keys/node*
COPY --from=builder /opt/liboqs/lib/ /usr/local/lib/
COPY --from=builder /opt/venv /opt/venv
RUN ldconfig
# MALLOC_ARENA_MAX: as node/supervisor.py MALLOC_ARENAS (each container runs one service)
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MALLOC_ARENA_MAX=2
USER ${UID}:${UID}
WORKDIR /var/lib/cretoai
# gRPC health of this container's own service: CRETOAI_SERVICE of the node whose config
# is CRETOAI_CONFIG (compose.yaml sets both; unset, the container reports unhealthy).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD cretoai-node health --config "$CRETOAI_CONFIG" --service "$CRETOAI_SERVICE" >/dev/null || exit 1
ENTRYPOINT ["cretoai-node"]
CMD ["start", "--help"]
