# One image for the four SSPM services and the `sspm` tool (health probe, certificates,
# tokens). Multi-stage: the build stage has the Rust toolchain, the runtime stage only the
# binaries. protoc is not needed (protox compiles the protos in Rust).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins \
      -p sspm-cli -p sspm-request -p sspm-authorization -p sspm-approval -p sspm-ticketing

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/sspm --create-home sspm
COPY --from=build /src/target/release/sspm /src/target/release/sspm-request \
     /src/target/release/sspm-authorization /src/target/release/sspm-approval \
     /src/target/release/sspm-ticketing /usr/local/bin/
USER sspm
WORKDIR /var/lib/sspm
# gRPC 50051-50054, admin (metrics) 9461-9464; which service runs is the command.
EXPOSE 50051 50052 50053 50054 9461 9462 9463 9464
CMD ["sspm", "--help"]
