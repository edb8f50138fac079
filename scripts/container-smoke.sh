#!/usr/bin/env bash
# Builds the image's runtime stage around a binary built here (no Rust image is pulled), runs
# `ingestd sync` on the fixtures inside it, then runs the worker container against this
# machine's RabbitMQ for one job. Not part of .ci/run (it downloads Debian packages into the
# image). Needs podman (or docker: CONTAINER=docker), debootstrap when no Debian image can be
# pulled, and RabbitMQ on 127.0.0.1:5672 (scripts/test.sh starts one).
#
#   scripts/container-smoke.sh              # full image (ffmpeg, Tesseract)
#   MEDIA_TOOLS=false scripts/container-smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
engine=${CONTAINER:-podman}
media=${MEDIA_TOOLS:-true}
tag=localhost/ingestd-smoke:$([ "$media" = true ] && echo full || echo text)
base=${RUNTIME_IMAGE:-localhost/debian-bookworm-minbase}

if ! "$engine" image inspect "$base" >/dev/null 2>&1 && [ "$base" = localhost/debian-bookworm-minbase ]; then
    echo "container-smoke: making $base with debootstrap" >&2
    root=$(mktemp -d)
    debootstrap --variant=minbase bookworm "$root" >/dev/null
    tar -C "$root" -c . | "$engine" import - "$base" >/dev/null
    rm -rf "$root"
fi

cargo build --release --locked --bin ingestd
mkdir -p target/container
objcopy --strip-debug target/release/ingestd target/container/ingestd
"$engine" build --network host --build-arg BINARY=prebuilt --build-arg RUNTIME_IMAGE="$base" \
    --build-arg MEDIA_TOOLS="$media" --target runtime -t "$tag" .
"$engine" image inspect "$tag" --format 'image size: {{.Size}} bytes'

echo "== ingestd sync on the fixtures, inside the image"
"$engine" run --rm -v "$PWD/fixtures:/fixtures:ro" "$tag" \
    sync /fixtures/text --out /dev/null --summary

echo "== the worker container against the host's RabbitMQ, one job"
queue=smoke-$$
name=ingestd-smoke-$$
"$engine" run -d --rm --name "$name" --network host \
    -e INGESTD_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f \
    -e INGESTD__WORKER__JOBS_QUEUE="$queue.jobs" -e INGESTD__WORKER__JOBS_EXCHANGE="$queue.jobs" \
    -e INGESTD__WORKER__CHUNKS_EXCHANGE="$queue.chunks" -e INGESTD__WORKER__EVENTS_EXCHANGE="$queue.events" \
    -e INGESTD__WORKER__DEAD_LETTER_QUEUE="$queue.dead" -e INGESTD__WORKER__LISTEN=127.0.0.1:19464 \
    -e INGESTD__S3__ALLOW_PRIVATE_ENDPOINTS=true -e INGESTD__S3__ALLOWED_HOSTS='["127.0.0.1"]' \
    "$tag" >/dev/null
trap '"$engine" stop "$name" >/dev/null 2>&1 || true' EXIT
for _ in $(seq 1 60); do
    curl -fsS http://127.0.0.1:19464/readyz >/dev/null 2>&1 && break
    sleep 1
done
curl -fsS http://127.0.0.1:19464/readyz
# A job against a store nobody listens on: it ends, its file errors classified (no S3 server
# is needed to see the worker consume, publish and ack).
job='{"schema_version": 1, "type": "sync_files", "skip_embedding_generation": true,
 "data_source": {"access_key": "smoke", "access_key_secret": "smoke", "endpoint_url": "http://127.0.0.1:1"},
 "ids": [{"bucket": "none", "prefix": ""}]}'
echo "$job" | "$engine" run --rm -i --network host \
    -e INGESTD_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f \
    -e INGESTD__WORKER__JOBS_EXCHANGE="$queue.jobs" "$tag" enqueue -
for _ in $(seq 1 30); do
    curl -fsS http://127.0.0.1:19464/metrics | grep -q '^ingestd_jobs_total' && break
    sleep 1
done
curl -fsS http://127.0.0.1:19464/metrics | grep -E '^ingestd_(jobs_total|build_info)'
