#!/usr/bin/env bash
# Runs each fuzz target for SECONDS (default 120) on one core, seeded with the project's own
# fixtures; new inputs go to fuzz/corpus/<target>, crashes to fuzz/artifacts/<target>.
# Targets are built with -O (optimised, debug assertions off); add -a to check overflows too,
# at the cost of a slower build. Needs cargo-fuzz (`cargo install cargo-fuzz`); the stable
# toolchain is enough with RUSTC_BOOTSTRAP=1, which lets it pass the sanitizer flags.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-120}
export RUSTC_BOOTSTRAP=1
fixtures=../fixtures
declare -A seeds=(
  [detect]="$fixtures/text $fixtures/media/images $fixtures/audio/speech $fixtures/bad"
  [image]="$fixtures/media/images $fixtures/media/bad $fixtures/media/ocr"
  [media]="$fixtures/audio/speech $fixtures/audio/video $fixtures/audio/bad"
  [frames]="$fixtures/audio/video $fixtures/audio/foreign"
)
for target in detect image media frames; do
  mkdir -p "corpus/$target"
  # shellcheck disable=SC2086 # the seed folders are words
  cargo fuzz run -O "$target" "corpus/$target" ${seeds[$target]} -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -max_len=1048576
done
