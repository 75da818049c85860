#!/usr/bin/env bash
# The provisioning demo of the README, as a bank runs it: against the dev
# server (`./ops/run-dev.sh` running in another terminal), with software
# devices from `kwsim` as the devices on the provisioning station.
#
#   ./ops/demo.sh
#
# 1. two operators, alice and bob (role operator), certified by the admin;
# 2. the issuer bank-a (TDES master keys in the HSM), if missing;
# 3. the factory (kwsim) makes 3 devices and their manifest; a batch with a
#    forged CSR is refused row by row; the real batch is imported;
# 4. each device passes the genuine-device check and receives bank-a's
#    original keys (init package, KCVs confirmed);
# 5. alice registers a customer, cannot approve her own application, bob
#    approves; alice binds the first device's PSAM and ESAM: it is issued.
# Everything lands in the audit trail (`kwctl audit list`). Files go to
# var/demo/ (operator keys 0600, device state).
set -euo pipefail

# shellcheck source=ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$KW_ROOT"

demo=var/demo
mkdir -p "$demo/devices"
chmod 700 "$demo"
[[ -f var/operators/admin.pem ]] ||
    kw_die "no var/operators/admin.pem: start the server first with ./ops/run-dev.sh"
command -v openssl >/dev/null || kw_die "openssl is missing: apt-get install openssl"

kw_banner "building kwctl and kwsim"
cargo build --release -q -p keyward-server --bin kwctl -p keyward-tests --bin kwsim
kwctl=target/release/kwctl
kwsim=(target/release/kwsim --state "$demo/devices")
agent="target/release/kwsim --state $demo/devices"

# as WHO kwctl-args...: kwctl with WHO's operator certificate.
as() {
    local who=$1
    shift
    if [[ $who == admin ]]; then
        "$kwctl" "$@"
    else
        "$kwctl" --cert "$demo/$who.pem" --key "$demo/$who.key" "$@"
    fi
}
field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
"$kwctl" whoami >/dev/null || kw_die "the admin API does not answer: is ./ops/run-dev.sh running?"

kw_banner "operators alice and bob"
for who in alice bob; do
    if [[ ! -f $demo/$who.pem ]]; then
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout "$demo/$who.key" -subj "/CN=$who" -out "$demo/$who.csr" 2>/dev/null
        chmod 600 "$demo/$who.key"
        as admin operator issue --csr "$demo/$who.csr" --name "$who" --role operator \
            --out "$demo/$who.pem" >/dev/null
    fi
    as "$who" whoami
done

kw_banner "issuer bank-a"
as admin issuer show bank-a 2>/dev/null || as admin issuer create bank-a --family tdes

# Fresh device ids and batch id on every run.
run=$(date +%s)
first=$(printf '%016X' $((run * 16)))
batch="B-$run"
kw_banner "the factory makes 3 devices (batch $batch)"
"${kwsim[@]}" make --count 3 --first-id "$first" --manifest "$demo/$batch.csv"
mapfile -t ids < <(tail -n +2 "$demo/$batch.csv" | cut -d, -f1)

kw_banner "a batch with a forged CSR is refused, row by row"
{
    head -2 "$demo/$batch.csv"
    "${kwsim[@]}" forge-csr --signer "${ids[0]}" --victim "${ids[1]}"
} >"$demo/$batch-forged.csv"
as alice device import --batch-id "$batch-FORGED" "$demo/$batch-forged.csv" || true

kw_banner "the real batch"
as alice device import --batch-id "$batch" "$demo/$batch.csv"

kw_banner "genuine-device check and original keys for bank-a"
for id in "${ids[@]}"; do
    as alice device check "$id" --agent "$agent"
    as alice device init "$id" --issuer bank-a --agent "$agent"
done

kw_banner "a customer applies (alice), alice may not approve, bob approves"
app=$(as alice -o json customer apply --name "Li Lei" --national-id "ID$run" \
    --account 6222020200112233 --contact-kind sms --contact +8613800138000)
app_id=$(field application_id <<<"$app")
customer=$(field customer_id <<<"$app")
as alice customer approve "$app_id" || true
as bob customer approve "$app_id"

kw_banner "bind ${ids[0]} (PSAM and ESAM) to $customer for bank-a"
as alice bind "${ids[0]}" --customer "$customer" --issuer bank-a --element both \
    --account 6222020200112233
as alice device show "${ids[0]}"
as alice device list --batch-id "$batch"
kw_banner "the audit trail (newest first)"
as admin audit list --limit 12
