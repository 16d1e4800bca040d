# Container image of bb-container-expander.
#
#   docker build -t bb-container-expander .
#   docker run -v "$PWD/config:/config:ro" bb-container-expander            # /config/expander.jsonnet
#   docker run -v "$PWD/config:/config:ro" bb-container-expander /config/other.jsonnet
#
# Like every Buildbarn image, the entrypoint is the binary and the only argument is
# the configuration file. Its subcommands work too:
#   docker run ... bb-container-expander check-config /config/expander.jsonnet
#
# Works with the classic builder and with BuildKit (docker-compose v1 uses the former).

# Build stage: the toolchain and a C compiler (zstd and ring build C code). Protos are
# compiled with protox, so no protoc is needed.
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin bb-container-expander \
 && cp target/release/bb-container-expander /usr/local/bin/bb-container-expander

# Runtime stage: glibc of the same Debian release as the builder, and CA certificates
# for registries served over TLS (rustls verifies against the system's roots).
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 expander \
 && useradd --system --uid 65532 --gid expander --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin expander
COPY --from=builder /usr/local/bin/bb-container-expander /usr/local/bin/bb-container-expander
# Not root: the expander only needs the network and a spool directory ($TMPDIR,
# /tmp by default, or containerImages.spoolDirectory).
USER 65532:65532
# gRPC (Execution, Capabilities, ActionRouter, Health) and diagnostics
# (/-/healthy, /metrics), as in the shipped configurations.
EXPOSE 8985 9980
ENTRYPOINT ["/usr/local/bin/bb-container-expander"]
CMD ["/config/expander.jsonnet"]
