# Build stage: compile the release binary.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
RUN cargo build --release --locked --bin threadsync

# Run stage: just the binary and its default config.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 threadsync
COPY --from=build /src/target/release/threadsync /usr/local/bin/threadsync
COPY jobs.toml /etc/threadsync/jobs.toml
USER threadsync
ENV THREADSYNC_CONFIG=/etc/threadsync/jobs.toml
# DATABASE_URL and the provider tokens named in jobs.toml come from the environment.
ENTRYPOINT ["threadsync"]
CMD ["worker"]
