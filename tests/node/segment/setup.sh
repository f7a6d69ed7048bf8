#!/usr/bin/env bash
# Installs the pinned official Segment Node SDK (@segment/analytics-node) that the
# end-to-end test `ingest::segment_sdk_events_are_stored` drives against the binary.
# Idempotent: `npm ci` recreates node_modules exactly from package-lock.json.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
