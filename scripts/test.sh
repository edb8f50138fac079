#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine. Installs and starts what the tests need first:
# the Rust toolchain must be there (rustup's stable with rustfmt and clippy); RabbitMQ is
# installed from Debian's packages and started when nothing answers on 127.0.0.1:5672, and
# Tesseract (tesseract-ocr) and ffprobe (ffmpeg) when they are missing. The S3-compatible server and the embedding
# provider are started by the tests themselves. Poppler (poppler-utils) is installed when
# pdftotext is missing. PostgreSQL (postgresql) is installed and started when nothing answers
# on 127.0.0.1:5432 and INGESTD_TEST_POSTGRES is unset; the state tests connect to
# INGESTD_TEST_POSTGRES (default postgres://postgres@127.0.0.1:5432/postgres). A server this
# script starts is set to trust TCP connections from this machine (127.0.0.1/32 and ::1/128
# in pg_hba.conf), so user postgres needs no password; a server already running is left as it is.
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

# The state store tests need PostgreSQL. A server already answering is used as it is.
postgres_up() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }

if [ -z "${INGESTD_TEST_POSTGRES:-}" ] && ! postgres_up; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
        echo "test.sh: installing postgresql for the state tests" >&2
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
    fi
    if ! ls /etc/postgresql/*/*/pg_hba.conf >/dev/null 2>&1; then
        # The package makes a cluster "main" unless told not to.
        version="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
        echo "test.sh: creating PostgreSQL cluster $version/main" >&2
        $sudo pg_createcluster "$version" main >/dev/null
    fi
    # This server is ours: local TCP connections are trusted (Debian's default asks for a
    # scram password), so the tests connect as postgres without one.
    for hba in /etc/postgresql/*/*/pg_hba.conf; do
        [ -e "$hba" ] || continue
        $sudo sed -i -E \
            's#^(host[[:space:]]+[^[:space:]]+[[:space:]]+[^[:space:]]+[[:space:]]+(127\.0\.0\.1/32|::1/128)[[:space:]]+)[^[:space:]]+#\1trust#' \
            "$hba"
    done
    clusters() { pg_lsclusters -h | awk '{print $1, $2}'; }
    if postgres_up; then
        # Started by the package's installation: read pg_hba.conf again.
        clusters | while read -r version name; do
            $sudo pg_ctlcluster "$version" "$name" reload || true
        done
    else
        echo "test.sh: starting postgresql" >&2
        $sudo service postgresql start >/dev/null 2>&1 || true
        sleep 1
        if ! postgres_up; then
            # No init system here: start the clusters directly.
            clusters | while read -r version name; do
                $sudo pg_ctlcluster "$version" "$name" start || true
            done
        fi
    fi
    for _ in $(seq 1 60); do
        postgres_up && break
        sleep 1
    done
    if ! postgres_up; then
        echo "test.sh: PostgreSQL does not answer on 127.0.0.1:5432; the state tests need it" >&2
        exit 1
    fi
    # Reloaded or just started: give the new pg_hba.conf a moment, then check the login.
    for _ in $(seq 1 10); do
        psql -w -h 127.0.0.1 -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1 && break
        sleep 1
    done
    if ! psql -w -h 127.0.0.1 -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null; then
        echo "test.sh: PostgreSQL on 127.0.0.1:5432 refuses user postgres without a password" >&2
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
