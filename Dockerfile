# syntax=docker/dockerfile:1
# clonelb's container image: `docker build -t clonelb .` (BuildKit, Docker 23 and later).
# Run: the image runs `clonelb run --config /etc/clonelb/lb.toml`; mount a directory
# holding lb.toml there (deploy/kubernetes/ does it with a ConfigMap).

# --- build ---------------------------------------------------------------------------
FROM rust:1-bookworm AS build
# TLS is rustls with the aws-lc-rs provider, so aws-lc-sys (0.47 in Cargo.lock) compiles
# AWS-LC from source. On x86_64 and aarch64 Linux (glibc) it uses its pregenerated
# bindings and the `cc` crate: it needs a C compiler (gcc, already in this image) and
# neither cmake nor clang/bindgen. (Another target may: then add
# `RUN apt-get update && apt-get install -y --no-install-recommends cmake clang`.)
# AWS_LC_SYS_USE_SYSTEM=0: always build the bundled AWS-LC, never look for a system
# libcrypto through pkg-config (this image has Debian's OpenSSL, which is not AWS-LC).
ENV AWS_LC_SYS_USE_SYSTEM=0
WORKDIR /src
COPY . .
# The registry and target folders are BuildKit caches, so a rebuild after a source change
# does not rebuild every dependency. The binary is copied out of the cache in the same
# step. No debug info in the image's binary (the release profile's `debug = 1` is for
# profiling on a workstation); symbols stay, so backtraces keep their names.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    CARGO_PROFILE_RELEASE_DEBUG=0 cargo build --release --locked \
    && install -D -m 0755 target/release/clonelb /out/clonelb

# --- run -----------------------------------------------------------------------------
# Distroless: glibc and libgcc_s, no shell, no package manager, no toolchain. clonelb
# links only libc, libm and libgcc_s dynamically (AWS-LC is linked in statically).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/clonelb /usr/local/bin/clonelb
# So `kubectl exec POD -- clonelb status` (or check, reload) finds ./lb.toml, and with it
# the admin address and token file.
WORKDIR /etc/clonelb
# Numeric, so Kubernetes' runAsNonRoot can verify it (distroless' "nonroot" user).
USER 65532:65532
# 8080: [listen] http; 9901: [admin] listen (probes, status page, admin commands).
EXPOSE 8080 9901
# clonelb stops gracefully on SIGTERM: listeners closed at once, requests in flight get
# [proxy] shutdown_timeout, then it exits 0. It handles its signals itself (as PID 1 too).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/clonelb"]
CMD ["run", "--config", "/etc/clonelb/lb.toml"]
