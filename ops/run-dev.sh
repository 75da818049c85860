#!/usr/bin/env bash
# Runs Keyward locally on the dev SoftHSM token and SQLite (config/dev.toml).
#
#   ./ops/run-dev.sh                 keyward init, then keyward serve (ctrl-c stops it)
#   ./ops/run-dev.sh issuer list     any other keyward command, passed through
#   ./ops/run-dev.sh check           probe the HSM and the database
#   ./ops/run-dev.sh audit verify    check the audit trail's hash chain
#
# Creates the dev token first if needed (ops/softhsm-dev.sh). `init` prints
# what it created (a second run: nothing); the first admin's certificate and
# key land in var/operators/, e.g.
#   curl --cacert var/operators/ca.pem --cert var/operators/admin.pem \
#        --key var/operators/admin.key https://127.0.0.1:9443/admin/v1/ca/certificates
set -euo pipefail

# shellcheck source=ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$KW_ROOT"

eval "$(./ops/softhsm-dev.sh)"
export SOFTHSM2_CONF

# `cargo run` execs the binary, so ctrl-c / SIGTERM reach keyward directly.
keyward=(cargo run --release -q -p keyward-server --bin keyward -- --config config/dev.toml)

if (($# == 0)); then
    kw_banner "keyward init"
    "${keyward[@]}" init
    kw_banner "keyward serve (public 127.0.0.1:8443, admin 127.0.0.1:9443; ctrl-c to stop)"
    exec "${keyward[@]}" serve
fi
exec "${keyward[@]}" "$@"
