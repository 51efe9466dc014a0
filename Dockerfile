# syntax=docker/dockerfile:1
#
# meshpipe images, built from the packed npm package (never from the source
# tree: .dockerignore lets only the tarballs into the build context).
#
#   npm run build:release -- x86_64-unknown-linux-gnu.2.28   # addon -> npm/linux-x64-gnu/
#   npm pack && npm pack ./npm/linux-x64-gnu            # -> meshpipe-0.1.0.tgz, meshpipe-linux-x64-gnu-0.1.0.tgz
#   docker build --target proxy -t meshpipe-proxy:0.1.0 .
#   docker build --target init  -t meshpipe-init:0.1.0 .
#
# Targets:
#   proxy (the default): `meshpipe proxy` (and `meshpipe injector`), as uid
#          2102, the uid `meshpipe init` exempts from redirection. No
#          capabilities needed.
#   init:  `meshpipe init` with iptables; runs as uid 0 with only NET_ADMIN
#          and NET_RAW (the injected securityContext drops ALL, adds those two).
#
# The package must carry its native addon (the prebuilt platform packages):
# `npm install --ignore-scripts` builds nothing, there is no Rust toolchain
# here. Pin the base by digest for reproducible builds:
#   docker build --build-arg NODE_IMAGE=node:20.20.2-bookworm-slim@sha256:<digest> ...
# Node runs as PID 1: meshpipe handles SIGTERM/SIGINT itself (drain, exit)
# and starts no child processes that would need reaping (init's iptables
# children are waited for).

ARG NODE_IMAGE=node:20.20.2-bookworm-slim

FROM ${NODE_IMAGE} AS install
COPY meshpipe-*.tgz /tmp/pkg/
# Production dependencies only; the smoke run proves the addon loads on this base.
RUN npm install --global --omit=dev --ignore-scripts --no-audit --no-fund --prefix /opt/meshpipe /tmp/pkg/*.tgz \
 && /opt/meshpipe/bin/meshpipe --version

FROM ${NODE_IMAGE} AS base
ENV NODE_ENV=production
COPY --from=install /opt/meshpipe /opt/meshpipe
RUN ln -s /opt/meshpipe/bin/meshpipe /usr/local/bin/meshpipe

FROM base AS init
# iptables 1.8.9 provides both backends (iptables-nft, iptables-legacy).
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables=1.8.9-2 \
 && rm -rf /var/lib/apt/lists/*
# uid 0 because iptables needs it; its powers come from the pod's
# securityContext: capabilities drop ALL, add NET_ADMIN and NET_RAW only.
# hadolint ignore=DL3002
USER 0:0
ENTRYPOINT ["meshpipe", "init"]

FROM base AS proxy
USER 2102:2102
# 4143 inbound (redirected by meshpipe init), 4191 admin (probes, metrics);
# the outbound listener 4140 is on loopback only.
EXPOSE 4143 4191
# For `docker run`; Kubernetes uses the injected probes (/ready, /live) instead.
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:4191/live').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["meshpipe"]
CMD ["proxy"]
