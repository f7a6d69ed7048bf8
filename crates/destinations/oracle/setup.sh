#!/usr/bin/env bash
# Creates oracle/.venv with the pinned official SDKs (requirements.txt) that
# tests/oracle.rs compares Meridian's normalization against. Idempotent.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
