# Shared by the study scripts: run from the repository root, stop on the first error.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
[ -x "$BIN/mhaexp-train" ] || make install
# The run directory a finished single run printed ("run directory : <path>").
run_dir_of() { sed -n 's/^run directory : //p' "$1" | tail -1; }
