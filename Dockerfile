# syntax=docker/dockerfile:1

# Switchyard in one image: the proxy (`switchyard`), the example backend
# (`switchyard-backend`) and the reference strategy and admission plugins.
#
#   docker build -t switchyard .
#   docker run --rm -p 8080:8080 switchyard   # the demo: proxy + 3 backends in one container
#   docker compose up                          # proxy + 3 backend containers (compose.yaml)
#
# Needs BuildKit (Docker's default builder since 23.0) for the cache mounts.

FROM rust:1.99-bookworm AS build
WORKDIR /src

# The toolchain pinned in rust-toolchain.toml (installed if the image's
# differs) and the wasm32-wasip2 target the strategy plugins are built for.
COPY rust-toolchain.toml ./
RUN rustup toolchain install \
 && rustup target add wasm32-wasip2 \
 && rustup show

# The whole workspace minus .dockerignore: cargo needs the manifest of every
# member (plugins/*, host/tests/plugins/test-strategy, examples/*), and
# host/build.rs needs wit/ and the plugin sources.
COPY . .

# The README's release build; host/build.rs builds the reference plugins for
# wasm32-wasip2 on the way. target/ is a cache mount, so rebuilds are
# incremental, but a cache mount is gone when the step ends: the binaries and
# plugins are copied to /out inside the same RUN. The plugins come from the
# plugin build's output directory (target/plugins/, see host/build.rs), not
# from plugins/*.wasm: build.rs installs those only when it runs, and with a
# warm cache and unchanged sources cargo skips it.
RUN --mount=type=cache,id=switchyard-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=switchyard-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=switchyard-target,target=/src/target,sharing=locked \
    cargo build --release --locked -p switchyard -p switchyard-backend \
 && install -D -m 0755 -t /out/bin target/release/switchyard target/release/switchyard-backend \
 && for plugin in round-robin least-conn ip-hash rate-limit api-key; do \
        install -D -m 0644 "target/plugins/wasm32-wasip2/release/$(echo "$plugin" | tr - _).wasm" \
            "/out/plugins/$plugin.wasm" || exit 1; \
    done

FROM debian:bookworm-slim

# An unprivileged user. The binaries and default plugins stay root's, so the
# proxy cannot rewrite its own strategies; new ones arrive through a mount.
RUN useradd --system --uid 10001 --user-group --home-dir /nonexistent \
        --no-create-home --shell /usr/sbin/nologin switchyard

COPY --from=build /out/bin/ /usr/local/bin/
# The reference strategies. compose.yaml bind-mounts the repository's
# ./plugins over this directory for hot reload; see the note there.
COPY --from=build /out/plugins/ /etc/switchyard/plugins/

WORKDIR /etc/switchyard
USER 10001:10001
# 8080: the proxy; 9090: its admin listener; 8000: switchyard-backend.
EXPOSE 8080 9090 8000

# Without a command: the built-in demo (three backends inside this container
# behind round robin) on port 8080. compose.yaml runs `switchyard run` and
# `switchyard-backend` instead.
CMD ["switchyard", "demo", "--listen", "0.0.0.0:8080", "--plugins", "/etc/switchyard/plugins"]
