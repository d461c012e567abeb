# Build stage: compile the release binary.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
RUN cargo build --release --locked --bin threadsync

# Run stage: just the binary and a config with no accounts and no schedules (the shipped
# jobs.toml's example accounts would run live schedules): mount your own over it.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 threadsync \
    && mkdir -p /etc/threadsync \
    && printf '%s\n' '# No accounts: mount your jobs.toml here (see the README).' > /etc/threadsync/jobs.toml
COPY --from=build /src/target/release/threadsync /usr/local/bin/threadsync
USER threadsync
ENV THREADSYNC_CONFIG=/etc/threadsync/jobs.toml
# DATABASE_URL and the provider tokens named in jobs.toml come from the environment.
ENTRYPOINT ["threadsync"]
CMD ["worker"]
