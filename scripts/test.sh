#!/usr/bin/env bash
# The default test suite (what `make test` and CI run): lint, then pytest without the
# slow marker. Tests needing root, namespaces or BPF fail rather than skip when CI is set.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
