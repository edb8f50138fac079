#!/usr/bin/env bash
# The document benchmark: installs what it reads (Poppler's pdftotext and the R manuals of
# Debian's r-doc-pdf, real PDFs of 40 to 3,700 pages) when missing, then runs
# `cargo bench --bench documents`, which prints pages/s against pdftotext, Office MB/s and peak
# memory. Set INGESTD_BENCH_PDFS to a folder of other PDFs to measure those instead.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
need=()
command -v pdftotext >/dev/null || need+=(poppler-utils)
if [ -z "${INGESTD_BENCH_PDFS:-}" ] && [ ! -d /usr/share/R/doc/manual ]; then need+=(r-doc-pdf); fi
if [ ${#need[@]} -gt 0 ]; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
cargo bench --bench documents
