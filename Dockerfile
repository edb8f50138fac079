# syntax=docker/dockerfile:1
# The ingestd image: `worker` by default, `sync` and the other commands too.
#
#   docker build -t ingestd .                                   # with ffmpeg and Tesseract
#   docker build --build-arg MEDIA_TOOLS=false -t ingestd:text .  # text and documents only
#   docker build --build-arg INGESTD_GIT_COMMIT=$(git rev-parse --short=12 HEAD) -t ingestd .
#
# Base images are build arguments (a mirror, a pinned digest). The builder caches the registry
# and the target directory between builds (BuildKit cache mounts), so a change to our code
# rebuilds our crate, not the dependencies.
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
ARG BINARY=builder

FROM ${RUST_IMAGE} AS builder
# What ingestd_build_info names; empty: the HEAD of the .git in the build context.
ARG INGESTD_GIT_COMMIT=
ENV INGESTD_GIT_COMMIT=${INGESTD_GIT_COMMIT}
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin ingestd \
    && objcopy --strip-debug target/release/ingestd /usr/local/bin/ingestd

# A binary built on the host instead (scripts/container-smoke.sh: no Rust image needed):
#   --build-arg BINARY=prebuilt, with the binary, its debug info stripped, at
#   target/container/ingestd.
FROM scratch AS prebuilt
COPY target/container/ingestd /usr/local/bin/ingestd

ARG BINARY=builder
FROM ${BINARY} AS binary

FROM ${RUNTIME_IMAGE} AS runtime
# ffmpeg (ffprobe describes, ffmpeg decodes for transcription what symphonia cannot) and
# Tesseract with English (OCR); false leaves them out: such files are then skipped or keep
# their metadata record, as docs/operations.md says. Poppler reads PDFs in both.
ARG MEDIA_TOOLS=true
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates poppler-utils tini \
    && if [ "$MEDIA_TOOLS" = "true" ]; then \
         apt-get install -y --no-install-recommends ffmpeg tesseract-ocr tesseract-ocr-eng; \
       fi \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/ingestd --create-home ingestd
COPY --from=binary /usr/local/bin/ingestd /usr/local/bin/ingestd
COPY pipeline.toml /etc/ingestd/pipeline.toml
USER 10001
WORKDIR /var/lib/ingestd
# /healthz, /readyz and /metrics (worker.listen).
EXPOSE 9464
# tini as PID 1 reaps the children of child processes that were killed (a document reader's
# pdftotext), which ingestd as PID 1 would leave as zombies.
ENTRYPOINT ["/usr/bin/tini", "--", "ingestd"]
CMD ["worker", "--config", "/etc/ingestd/pipeline.toml"]
