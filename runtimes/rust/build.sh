#!/bin/sh
# Builds a knative-lambda Rust function: the platform's program (main/, rendered for this
# function) depending on the function's crate (../function) and on klambda-function, which
# [patch.crates-io] resolves to the platform's copy for every crate that asks for it, into
# bin/function: one static binary. Cargo's JSON diagnostics go to stdout, for build.failed.
# The same script runs in the local builder and in the Dockerfile's build stage.
set -eu
runtime=$(cd "$(dirname "$0")" && pwd)
cd "$runtime/main"
# The host's target named explicitly, so RUSTFLAGS' +crt-static (a static binary) applies to the
# function and not to build scripts and proc-macros.
target=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --target "$target" --message-format=json-diagnostic-short
mkdir -p "$runtime/bin"
cp "${CARGO_TARGET_DIR:-target}/$target/release/function" "$runtime/bin/function"
