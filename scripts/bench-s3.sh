#!/usr/bin/env bash
# The S3 benchmark: ingestd sync against a local S3 server, its aws-sdk-s3 download floor and
# a Python peer (boto3 + LangChain), in one run. Installs the peer's packages first.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check boto3 tiktoken langchain-text-splitters
cargo bench --locked --bench s3
