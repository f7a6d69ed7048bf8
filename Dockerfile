# syntax=docker/dockerfile:1.7
#
# One image for every Meridian service:
#   docker run IMAGE serve ingest        (or identity, consent, audience;
#                                         none named = all in one process)
#   docker run IMAGE migrate
# Build:  docker build -t meridian .     (BuildKit; the cache mounts keep the
#                                         cargo registry and target/ between builds)
#
# The runtime is distroless (glibc, CA certificates, tzdata; no shell, no
# package manager), runs as uid/gid 65532, and works with a read-only root
# file system: the only writable paths it needs are /tmp and, in embedded
# mode, MERIDIAN_DATA_DIR (/var/lib/meridian: mount a volume there).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=trixie
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian13:nonroot

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# Protobuf is compiled with protox (pure Rust) and TLS/crypto is ring: the
# slim image's C toolchain is all the build needs.
# sqlx checks queries at compile time from the committed .sqlx/ data: no
# database is reachable while building.
ENV SQLX_OFFLINE=true
COPY . .
RUN --mount=type=cache,id=meridian-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=meridian-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=meridian-target,target=/src/target,sharing=locked \
    cargo build --release --locked -p meridian \
 && install -D -m 0755 target/release/meridian /out/usr/local/bin/meridian \
 && install -d -m 0750 /out/var/lib/meridian

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="meridian" \
      org.opencontainers.image.description="Meridian: privacy-first cross-border customer data platform (every service, one binary)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/usr/local/bin/meridian /usr/local/bin/meridian
COPY --from=builder --chown=65532:65532 /out/var/lib/meridian /var/lib/meridian
USER 65532:65532
ENV MERIDIAN_GRPC_ADDR=0.0.0.0:50051 \
    MERIDIAN_HTTP_ADDR=0.0.0.0:8080 \
    MERIDIAN_DATA_DIR=/var/lib/meridian \
    MERIDIAN_LOG=info
EXPOSE 50051 8080
# SIGTERM (the default stop signal) drains in-flight requests.
ENTRYPOINT ["/usr/local/bin/meridian"]
CMD ["serve"]
