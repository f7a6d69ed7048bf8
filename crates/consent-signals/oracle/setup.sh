#!/usr/bin/env bash
# Installs the pinned IAB reference implementations (@iabtcf/core,
# @iabgpp/cmpapi) that the oracle tests use. Idempotent: `npm ci` always
# recreates node_modules exactly from package-lock.json.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
