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
#    approves; alice binds the first device's PSAM and ESAM: it is issued
#    (and the second device, for the intrusion step);
# 6. the device logs in over mutual TLS (kwsim login) and takes its first
#    working keys; alice forces a rotation (kwctl key rotate), the device logs
#    in again and confirms the new keys (kwctl key list);
#    then sends a transaction whose MAC the server verifies in the HSM, and
#    a batch of its MACs is verified in bulk (kwctl mac verify);
# 7. transaction confirmation over the second channel (kwsim confirm reads
#    the code from the file sender's output, var/outbox.jsonl): an honest one
#    is executed and its signed evidence checked with openssl; one whose
#    amount the PC altered is refused as tampered; a look-alike payee is
#    flagged in the message; a wrong code is refused;
#    then a device with tampered keys logs in: the KCV mismatch is an
#    intrusion event, the offered version is rejected;
# 8. ten wrong answers lock the first device's credential and revoke its
#    certificate: `openssl ocsp` says revoked;
# 9. the e-purse load (kwsim keeps the third device's purse): the account is
#    opened in the ledger and credited; a completed load; a failure report
#    reversed; a permit never answered, reversed by the sweeper after
#    `[load] report_timeout_secs` (config/dev.toml: 5 s) and closed at the
#    device's next contact; a load whose report is lost, reversed by the
#    sweeper, then proven applied by the purse at the next login
#    (late_applied: debited again, no money created); `kwctl ledger verify`.
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
# A fresh account number too: the ledger opens it for this run's customer.
account=$(printf '62220202%08d' $((run % 100000000)))
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
    --account "$account" --contact-kind sms --contact +8613800138000)
app_id=$(field application_id <<<"$app")
customer=$(field customer_id <<<"$app")
as alice customer approve "$app_id" || true
as bob customer approve "$app_id"

kw_banner "bind ${ids[0]} and ${ids[1]} (PSAM and ESAM) to $customer for bank-a"
for id in "${ids[0]}" "${ids[1]}"; do
    as alice bind "$id" --customer "$customer" --issuer bank-a --element both \
        --account "$account"
done
as alice device show "${ids[0]}"
as alice device list --batch-id "$batch"

# The device's certificate and chain, as its terminal presents them; the
# issuing CA alone, for openssl ocsp.
json_field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]], end="")' "$1"; }
device_pem() {
    local serial cert
    serial=$(as alice -o json device show "$1" | json_field cert_serial)
    cert=$(as alice -o json ca show "$serial")
    { json_field certificate_pem <<<"$cert"; json_field chain_pem <<<"$cert"; } >"$demo/$1.pem"
    json_field chain_pem <<<"$cert" >"$demo/chain.pem"
}
for id in "${ids[0]}" "${ids[1]}"; do
    device_pem "$id"
done
openssl x509 -in "$demo/chain.pem" -out "$demo/issuing.pem"
public=${KEYWARD_DEMO_PUBLIC:-https://127.0.0.1:8443}
admin_url=${KWCTL_SERVER:-https://127.0.0.1:9443}
login() {
    local id=$1
    shift
    "${kwsim[@]}" login "$id" --issuer bank-a --server "$public" \
        --ca var/operators/ca.pem --cert "$demo/$id.pem" "$@"
}

kw_banner "${ids[0]} logs in over mutual TLS: its first working keys"
login "${ids[0]}"
kw_banner "alice forces a rotation; the next login takes and confirms version 2"
as alice key rotate --issuer bank-a --device "${ids[0]}"
as alice key pending --issuer bank-a
login "${ids[0]}"
as alice key list --device "${ids[0]}" --issuer bank-a

kw_banner "${ids[0]} sends a transaction over its session: the MAC is verified in the HSM"
login "${ids[0]}" --transaction "0200|$account|000000012345|$run"

kw_banner "the switch verifies a batch of the terminal's MACs in bulk (every tenth is wrong)"
"${kwsim[@]}" macs "${ids[0]}" --issuer bank-a --count 1000 --out "$demo/macs.csv"
as admin mac verify --file "$demo/macs.csv"

# confirm TX-FILE [kwsim confirm args...]: the customer confirms with ${ids[0]}.
outbox=${KEYWARD_DEMO_OUTBOX:-var/outbox.jsonl}
confirm() {
    local tx=$1
    shift
    "${kwsim[@]}" confirm "${ids[0]}" --issuer bank-a --server "$public" \
        --ca var/operators/ca.pem --cert "$demo/${ids[0]}.pem" \
        --outbox "$outbox" --transaction "$tx" "$@"
}
transaction() { # PAYEE-NAME AMOUNT
    printf '{"payer_account":"6222020200112233","payee_account":"DE89370400440532013000","payee_name":"%s","amount":%s,"currency":"EUR","reference":"Invoice %s"}' \
        "$1" "$2" "$run"
}
transaction "ACME GmbH" 123456 >"$demo/tx.json"
transaction "ACME GmbH" 9999999 >"$demo/tx-altered.json"
transaction "АCME GmbH" 123456 >"$demo/tx-lookalike.json" # a Cyrillic А

kw_banner "an honest confirmation: the code read from the customer's message, tx ‖ code signed"
confirm "$demo/tx.json" | tee "$demo/confirm.jsonl"
honest=$(head -1 "$demo/confirm.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["answer"]["confirmation_id"])')
as admin confirmation show "$honest"
kw_banner "its evidence receipt, exported and checked outside Keyward"
rm -rf "$demo/evidence"
as admin confirmation evidence "$honest" --out "$demo/evidence"
(
    cd "$demo/evidence"
    openssl verify -CAfile ../../operators/ca.pem -untrusted evidence-chain.pem evidence-chain.pem
    openssl x509 -in evidence-chain.pem -pubkey -noout >evidence-pub.pem
    openssl dgst -sha256 -verify evidence-pub.pem -signature receipt.sig receipt.txt
)
kw_banner "the PC altered the amount it handed the device: refused as tampered"
confirm "$demo/tx.json" --device-sees "$demo/tx-altered.json" || true
kw_banner "a look-alike payee (Cyrillic А): flagged in the customer's message"
confirm "$demo/tx-lookalike.json" || true
kw_banner "a wrong code: refused, one attempt counted"
confirm "$demo/tx.json" --wrong-code || true

kw_banner "${ids[1]} has tampered keys: its key update is an intrusion event"
"${kwsim[@]}" tamper "${ids[1]}" --issuer bank-a
login "${ids[1]}" || true
as alice key list --device "${ids[1]}" --issuer bank-a

kw_banner "ten wrong answers: ${ids[0]} is locked and its certificate revoked"
login "${ids[0]}" --wrong-response --times 10 || true
as alice device credential "${ids[0]}" --issuer bank-a
openssl ocsp -issuer "$demo/issuing.pem" -cert "$demo/${ids[0]}.pem" \
    -CAfile "$demo/chain.pem" -url "$admin_url/ocsp" -timeout 10 2>&1 |
    grep -E "${ids[0]}|: (good|revoked|unknown)|Reason" || true
kw_banner "the e-purse load: ${ids[2]} bound too; the account opened in the ledger and credited"
as alice bind "${ids[2]}" --customer "$customer" --issuer bank-a --element both \
    --account "$account"
device_pem "${ids[2]}"
as alice account create "$account" --customer "$customer" --currency CNY
as alice account credit "$account" --amount 100000 --reference "opening deposit"
# load ARGS...: kwsim logs in as the third device, sends its purse's status,
# asks for a load, checks the permit up to the Keyward root, applies it and
# reports (or not, by ARGS); its JSON lines go to stderr, the load id to
# stdout.
load() {
    local lines
    lines=$("${kwsim[@]}" load "${ids[2]}" --issuer bank-a --server "$public" \
        --ca var/operators/ca.pem --cert "$demo/${ids[2]}.pem" "$@") ||
        { printf '%s\n' "$lines" >&2; kw_die "kwsim load $* was refused"; }
    printf '%s\n' "$lines" >&2
    python3 -c 'import json,sys
for l in sys.stdin:
    v = json.loads(l)
    if v.get("step") == "permit": print(v["load_id"])' <<<"$lines"
}
# doubtful ID: waits until the sweeper has reversed load ID (the timeout).
doubtful() {
    for _ in $(seq 60); do
        [[ $(as alice -o json load show "$1" | field state) == doubtful ]] && return 0
        sleep 0.5
    done
    kw_die "load $1 was not reversed by the sweeper in 30 s"
}

kw_banner "a completed load: the account pays 100.00, the float receives it, the purse holds it"
load --amount 10000 --customer "$customer" --account "$account" >/dev/null
as alice account show "$account"

kw_banner "the purse cannot load: its failure report reverses the debit"
load --amount 5000 --fail 3 >/dev/null
as alice account show "$account"

kw_banner "a permit the purse never answers: reversed by the sweeper (doubtful)"
unanswered=$(load --amount 7000 --no-apply)
doubtful "$unanswered"
as alice load doubtful

kw_banner "the next load first closes it (the purse never applied it); this one's report is lost"
lost=$(load --amount 20000 --lose-report)
as alice load show "$unanswered"
doubtful "$lost"
kw_banner "reversed by the sweeper, though the purse holds the money: money created, for now"
as alice load doubtful
as alice account show "$account"
"${kwsim[@]}" purse "${ids[2]}"

kw_banner "the next login: the purse proves the load applied; late_applied, debited again"
login "${ids[2]}"
as alice load show "$lost"
as alice account show "$account"
as alice account show sys:float:CNY
kw_banner "the ledger verifies: every balance recomputed, the chain and its checkpoints"
as alice ledger verify

kw_banner "the audit trail (newest first)"
as admin audit list --limit 12
