#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine. Installs what the tests need first.
# Today the tests need only the Rust toolchain (rustup's stable with rustfmt and clippy);
# services (RabbitMQ, an S3-compatible server) are started here as the issues that use them land.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust with rustup (https://rustup.rs)" >&2
    exit 1
fi

# Benchmarks are run on purpose (cargo bench), not as tests.
cargo test --locked --lib --bins --tests
