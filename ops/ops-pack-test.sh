#!/usr/bin/env bash
# Checks the operations pack (ops/prometheus, ops/grafana, ops/systemd,
# ops/runbooks); ops/test.sh runs it. A few seconds, no build.
#
#   promtool check rules + promtool test rules (every alert has a test where
#   it fires and one where it stays quiet); every alert's runbook_url names a
#   file under ops/runbooks/; the dashboard is valid JSON; when systemd-analyze
#   is installed, `systemd-analyze verify` of every unit (in a scratch root
#   with stub binaries, nothing is installed or started) and each service's
#   `systemd-analyze security` exposure at most 2.0.
# That every metric the rules and the dashboard query is one the server
# exports is a Rust test: metrics::tests::ops_pack_queries_only_exported_metrics.
set -euo pipefail

# shellcheck source=ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$KW_ROOT/ops"

rules=prometheus/keyward-rules.yml
command -v promtool >/dev/null || kw_die "promtool missing: apt-get install prometheus"

kw_banner "promtool check rules $rules"
promtool check rules "$rules"

kw_banner "promtool test rules prometheus/tests/*.yml"
promtool test rules prometheus/tests/*.yml

kw_banner "every alert: a test where it fires, one where it is quiet, a runbook"
failed=0
mapfile -t alerts < <(sed -n 's/^ *- alert: *//p' "$rules" | sort -u)
((${#alerts[@]} > 0)) || kw_die "no alert found in $rules"
for alert in "${alerts[@]}"; do
    tests="$(grep -h -A1 "alertname: $alert\$" prometheus/tests/*.yml || true)"
    grep -q 'exp_alerts:$' <<<"$tests" || { kw_warn "$alert: no test where it fires"; failed=1; }
    grep -q 'exp_alerts: \[\]' <<<"$tests" || { kw_warn "$alert: no test where it stays quiet"; failed=1; }
    [[ -f "runbooks/$alert.md" ]] || { kw_warn "$alert: no runbooks/$alert.md"; failed=1; }
done
while read -r url; do
    [[ -f "$KW_ROOT/$url" ]] || { kw_warn "runbook_url $url: no such file"; failed=1; }
done < <(sed -n 's/^ *runbook_url: *//p' "$rules" | sort -u)
((failed == 0)) || kw_die "the alert rules are not all tested and documented"
kw_info "${#alerts[@]} alerts"

kw_banner "grafana/keyward.json: valid JSON, every query valid PromQL"
# Each panel query, with Grafana's variables filled in, becomes a recording
# rule of a scratch file for promtool to parse.
scratch="$(mktemp -d "${TMPDIR:-/tmp}/keyward-ops.XXXXXX")"
trap 'rm -rf -- "$scratch"' EXIT
python3 - grafana/keyward.json "$scratch/dashboard-rules.yml" <<'PY'
import json, sys
dash = json.load(open(sys.argv[1]))
exprs = []
def walk(v):
    if isinstance(v, dict):
        for k, x in v.items():
            if k == "expr" and isinstance(x, str):
                exprs.append(x)
            else:
                walk(x)
    elif isinstance(v, list):
        for x in v:
            walk(x)
walk(dash["panels"])
fill = {"$__rate_interval": "5m", "$job": "keyward", "$instance": ".*"}
with open(sys.argv[2], "w") as out:
    out.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, e in enumerate(exprs):
        for k, v in fill.items():
            e = e.replace(k, v)
        out.write("      - record: dashboard:query_%d\n        expr: %s\n" % (i, json.dumps(e)))
print("    %d panels, %d queries" % (sum(p["type"] != "row" for p in dash["panels"]), len(exprs)))
PY
promtool check rules "$scratch/dashboard-rules.yml" >/dev/null

if ! command -v systemd-analyze >/dev/null; then
    kw_warn "systemd-analyze not installed (Debian package systemd): the unit checks are SKIPPED"
    exit 0
fi
kw_banner "systemd-analyze verify ops/systemd/*"
root="$scratch/root"
# The host's own units (targets the units name), the units under test, and
# stub executables where the units expect the binaries.
mkdir -p "$root/usr/lib/systemd" "$root/etc/systemd/system" "$root/usr/local/bin"
cp -r /usr/lib/systemd/system "$root/usr/lib/systemd/"
cp systemd/*.service systemd/*.timer "$root/etc/systemd/system/"
for bin in keyward kwctl; do
    printf '#!/bin/sh\nexit 0\n' >"$root/usr/local/bin/$bin"
    chmod 755 "$root/usr/local/bin/$bin"
done
units=()
for f in systemd/*.service systemd/*.timer; do units+=("$(basename "$f")"); done
systemd-analyze verify --root="$root" "${units[@]}"
kw_info "verified: ${units[*]}"

kw_banner "systemd-analyze security (exposure at most 2.0)"
for f in systemd/*.service; do
    unit="$(basename "$f")"
    # --threshold is on the 0-100 scale the summary shows divided by 10.
    systemd-analyze security --offline=true --root="$root" --threshold=20 "$unit" |
        tail -n 1 | sed 's/^/    /'
done
