#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine. Installs and starts what the tests need first:
# the Rust toolchain must be there (rustup's stable with rustfmt and clippy); RabbitMQ is
# installed from Debian's packages and started when nothing answers on 127.0.0.1:5672, and
# Tesseract (tesseract-ocr) and ffprobe (ffmpeg) when they are missing. The S3-compatible server and the embedding
# provider are started by the tests themselves. Poppler (poppler-utils) is installed when
# pdftotext is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust with rustup (https://rustup.rs)" >&2
    exit 1
fi

broker_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

if ! broker_up; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    if ! command -v rabbitmq-server >/dev/null && [ ! -x /usr/sbin/rabbitmq-server ]; then
        echo "test.sh: installing rabbitmq-server for the worker tests" >&2
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq rabbitmq-server >/dev/null
    fi
    if ! broker_up; then
        echo "test.sh: starting rabbitmq-server" >&2
        $sudo service rabbitmq-server start >/dev/null 2>&1 \
            || $sudo env PATH="$PATH:/usr/sbin" rabbitmq-server -detached
    fi
    for _ in $(seq 1 60); do
        broker_up && break
        sleep 1
    done
    if ! broker_up; then
        echo "test.sh: RabbitMQ does not answer on 127.0.0.1:5672; the worker tests need it" >&2
        exit 1
    fi
fi

# The OCR tests run the real Tesseract with its English data; the media tests the real
# ffprobe for the containers symphonia does not read.
install() {
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    echo "test.sh: installing $1 for the tests" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$1" >/dev/null
}
command -v tesseract >/dev/null || install tesseract-ocr
command -v ffprobe >/dev/null || install ffmpeg
# The document tests read PDFs with Poppler's pdftotext and render scans with pdftoppm.
command -v pdftotext >/dev/null || install poppler-utils

# Benchmarks are run on purpose (cargo bench), not as tests.
cargo test --locked --lib --bins --tests
