#!/usr/bin/env bash
# stalled-readers.sh: what a stalled reader costs the gateway. Fifty 20 MB
# downloads whose clients never read, as 50 streams of one HTTP/2
# connection and as 50 HTTP/1.1 connections; logs the gateway's RSS growth
# per stalled download (integration.TestStalledReaderMemory).
#
#   bench/stalled-readers.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TRELLIS_MEASURE=1 go test -count=1 -v -run '^TestStalledReaderMemory$' ./integration/ | grep -a 'per stalled download'
