# syntax=docker/dockerfile:1.7
# The ledger's image: one binary, `ledger`, for the embedded server
# (`ledger serve`, the default command) and the distributed services
# (`ledger command-api | projector | query-api`, as deploy/helm/ledger runs
# them). Built with the `distributed` feature (librdkafka from its bundled
# source, with cmake).
#
#   docker build -t ghcr.io/marketplace/ledger:0.1.0 .
#   docker run --read-only -p 127.0.0.1:8080:8080 -p 127.0.0.1:8081:8081 \
#     -v ledger-data:/var/lib/ledger ghcr.io/marketplace/ledger:0.1.0
#
# Runs as uid/gid 10001 with a read-only root filesystem: it writes only the
# data directory (a volume; embedded mode) and /tmp (mount a tmpfs when the
# root is read-only). scripts/validate-ops lints this file with hadolint.

ARG RUST_VERSION=1.95.0

FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS builder
# cmake, make and a C/C++ compiler for librdkafka (rdkafka's cmake-build) and
# SQLite (rusqlite's bundled build); pkg-config for the build scripts.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake=3.25.* make=4.3-* g++=4:12.2.* pkg-config=1.8.* \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ledger-cli --bin ledger --features distributed \
 && install -D -m 0755 target/release/ledger /out/usr/local/bin/ledger \
 && install -d -m 0750 /out/var/lib/ledger

# glibc, libgcc and CA certificates, nothing else: no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="ledger" \
      org.opencontainers.image.description="Economy ledger of an avatar-item marketplace: embedded server and distributed services (Kafka + ScyllaDB)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/marketplace/ledger" \
      org.opencontainers.image.vendor="marketplace"
COPY --from=builder /out/usr/local/bin/ledger /usr/local/bin/ledger
COPY --from=builder --chown=10001:10001 /out/var/lib/ledger /var/lib/ledger
USER 10001:10001
# Embedded mode: the SQLite log, snapshots, read models and the signing
# secret. The distributed services keep no local state.
# MIMALLOC_ALLOW_THP=0: no transparent huge pages for the allocator's arenas
# even on hosts that set THP to `always` (less resident memory for the same
# throughput; BENCHMARKS.md, "Issue 8, ninth session").
ENV LEDGER_DATA_DIR=/var/lib/ledger \
    LEDGER_COMMAND_ADDR=0.0.0.0:8080 \
    LEDGER_QUERY_ADDR=0.0.0.0:8081 \
    MIMALLOC_ALLOW_THP=0 \
    RUST_LOG=info
VOLUME ["/var/lib/ledger"]
# 8080 commands (serve, command-api), 8081 queries (serve, query-api), 8082 projector metrics
EXPOSE 8080 8081 8082
# /healthz of the command API (serve, command-api); the projector and query
# API set LEDGER_HEALTH_ADDR. Kubernetes uses its own probes instead.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/ledger", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/ledger"]
CMD ["serve"]
