#!/usr/bin/env bash
# The default job: builds Troupe, then trains the byte-level GPT on Debian's fortunes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
exec build/troupe train apps/jobs/fortunes_gpt.json "$@"
