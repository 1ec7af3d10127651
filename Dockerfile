# shield: one image for both gateways and the container sidecar.
#
#   docker build -t shield .                  (podman: add --format docker, or HEALTHCHECK is dropped)
#   docker run --read-only ... shield         a connector configured by SHIELD_* variables (sidecar)
#   docker run ... shield twistd -n --pidfile= shield-dmz --config /etc/shield/dmz.toml
#
# Built on Debian bookworm and its python3 (3.11), in two stages: the compilers that build the
# wheels stay in the first. It runs as the numeric user 65532, writes nothing outside /tmp (and
# with --pidfile= not even there), and tini passes SIGTERM (drain) and SIGHUP (reload) to twistd.
# See docs/containers.md.

ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev libffi-dev \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml setup.cfg README.md /src/
COPY shield /src/shield
COPY twisted /src/twisted
RUN python3 -m venv /opt/shield \
    && /opt/shield/bin/pip install --no-cache-dir --no-compile /src \
    && /opt/shield/bin/python -m compileall -q /opt/shield/lib \
    # twistd looks its plugins up in a cache it writes next to them: write it now, the image is read-only
    && /opt/shield/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
    && /opt/shield/bin/twistd --help | grep -q shield-internal

FROM ${BASE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="shield" \
      org.opencontainers.image.description="Reverse-connectivity tunnel: DMZ gateways (shield-dmz) and the connectors (shield-internal) that dial out to them" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="debian:bookworm-slim" \
      org.opencontainers.image.documentation="docs/containers.md"
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 tini ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /etc/shield /var/lib/shield/certs \
    && chown 65532:65532 /var/lib/shield/certs
COPY --from=build /opt/shield /opt/shield
ENV PATH=/opt/shield/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    SHIELD_ADMIN=http://0.0.0.0:9101
USER 65532:65532
WORKDIR /tmp
# 9101: the sidecar connector's admin (/healthz, /readyz, /metrics).
EXPOSE 9101
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 CMD ["shield", "healthcheck"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["twistd", "-n", "--pidfile=", "shield-internal"]
