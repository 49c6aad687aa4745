#!/usr/bin/env bash
# Builds Troupe and runs every test (ctest runs each doctest case on its own).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
cd build
ctest --output-on-failure -j"$(nproc)" "$@"
