#!/usr/bin/env bash
# Runs Keyward locally on the dev SoftHSM token and SQLite (config/dev.toml).
#
#   ./ops/run-dev.sh                 keyward init, then keyward check
#   ./ops/run-dev.sh issuer list     any other keyward command, passed through
#   ./ops/run-dev.sh check           probe the HSM and the database
#
# Creates the dev token first if needed (ops/softhsm-dev.sh).
set -euo pipefail

# shellcheck source=ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$KW_ROOT"

eval "$(./ops/softhsm-dev.sh)"
export SOFTHSM2_CONF

keyward=(cargo run --release -p keyward-server --bin keyward -- --config config/dev.toml)

if (($# == 0)); then
    kw_banner "keyward init"
    "${keyward[@]}" init
    kw_banner "keyward check"
    exec "${keyward[@]}" check
fi
exec "${keyward[@]}" "$@"
