#!/usr/bin/env bash
# Keyward's test command: lint, then the whole workspace's tests on SQLite and
# again on PostgreSQL, each test in its own process (cargo-nextest), against
# SoftHSM tokens made in a temp dir for this run. The tests' binaries are
# built with the fault points (feature keyward-server/faults), which the
# crash tests trigger; a production build has none (ops/run-dev.sh).
#
#   ./ops/test.sh                 everything
#   ./ops/test.sh --no-lint       skip cargo fmt --check, clippy, the OpenAPI check, cargo deny
#   ./ops/test.sh --sqlite-only   skip PostgreSQL
#
# Installs what it needs when run as root (softhsm2, opensc, cargo-nextest,
# cargo-deny, python3-venv; openapi-spec-validator from PyPI into a venv under the target
# dir), starts the local PostgreSQL 15 cluster and creates the role `keyward`
# and the database `keyward_test` in it. Idempotent. With CI=true a missing PostgreSQL
# is an error; otherwise the PostgreSQL run is skipped with a warning.
# KEYWARD_TEST_DATABASE_URL, if set, names another PostgreSQL database to use
# (then nothing is set up locally).
set -euo pipefail

# shellcheck source=ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$KW_ROOT"

usage() { sed -n '2,16s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

lint=1
postgres=1
for arg in "$@"; do
    case "$arg" in
        --no-lint) lint=0 ;;
        --sqlite-only) postgres=0 ;;
        -h | --help) usage && exit 0 ;;
        *) echo "unknown option: $arg" >&2 && usage >&2 && exit 2 ;;
    esac
done
ci=0
[[ "${CI:-}" == true ]] && ci=1
# A CI build is always cold: incremental caches would only cost time and disk.
((ci)) && export CARGO_INCREMENTAL=0

PG_VERSION=15
PG_CLUSTER=main
PG_ROLE=keyward
PG_DB=keyward_test
pg_url_given="${KEYWARD_TEST_DATABASE_URL:-}"
unset KEYWARD_TEST_DATABASE_URL

# --- 1. prerequisites --------------------------------------------------------
kw_banner "prerequisites: softhsm2, opensc, curl, openssl, promtool, cargo, cargo-nextest"
kw_ensure_packages "${KW_HSM_PACKAGES[@]}" "${KW_TEST_PACKAGES[@]}"
command -v cargo >/dev/null || kw_die "cargo not found: install Rust stable (rustup)"
if ! cargo nextest --version >/dev/null 2>&1; then
    kw_info "cargo-nextest missing: cargo install cargo-nextest --locked"
    cargo install cargo-nextest --locked
fi
if ((lint)); then
    cargo fmt --version >/dev/null 2>&1 || kw_die "rustfmt missing: rustup component add rustfmt"
    cargo clippy --version >/dev/null 2>&1 || kw_die "clippy missing: rustup component add clippy"
    if ! cargo deny --version >/dev/null 2>&1; then
        kw_info "cargo-deny missing: cargo install cargo-deny --locked --version $KW_CARGO_DENY_VERSION"
        cargo install cargo-deny --locked --version "$KW_CARGO_DENY_VERSION"
    fi
fi
kw_info "$(cargo --version); $(cargo nextest --version | head -n1); SoftHSM $(softhsm2-util --version)"

# --- 2. PostgreSQL -----------------------------------------------------------
# Runs a command as the cluster owner (peer auth on the local socket).
as_postgres() {
    if kw_is_root; then
        (cd / && runuser -u postgres -- "$@")
    elif [[ "$(id -un)" == postgres ]]; then
        (cd / && "$@")
    else
        return 1
    fi
}

# A database URL without its password, for printing.
redact() { sed -E 's#^([a-z]+://[^:/@]*):[^@]*@#\1:***@#' <<<"$1"; }

pg_can_connect() {
    PGCONNECT_TIMEOUT=5 psql "$1" -X -q -t -A -c 'SELECT 1' >/dev/null 2>&1
}

# Sets pg_url and returns 0 when the test database is reachable; otherwise
# prints why (with the fix) and returns 1.
setup_postgres() {
    command -v psql >/dev/null || {
        kw_warn "psql not found: PostgreSQL client/server is not installed (apt-get install postgresql)"
        return 1
    }
    if [[ -n "$pg_url_given" ]]; then
        pg_url="$pg_url_given"
        pg_can_connect "$pg_url" && return 0
        kw_warn "cannot connect to KEYWARD_TEST_DATABASE_URL"
        return 1
    fi
    local line port status
    line="$(pg_lsclusters -h 2>/dev/null | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" '$1 == v && $2 == c')" || true
    if [[ -z "$line" ]]; then
        kw_warn "PostgreSQL $PG_VERSION cluster '$PG_CLUSTER' not found (pg_lsclusters); install postgresql-$PG_VERSION"
        return 1
    fi
    read -r _ _ port status _ <<<"$line"
    pg_url="postgres://$PG_ROLE:$PG_ROLE@127.0.0.1:$port/$PG_DB"
    if [[ "$status" != online* ]]; then
        if ! kw_is_root; then
            kw_warn "PostgreSQL $PG_VERSION/$PG_CLUSTER is $status: sudo pg_ctlcluster $PG_VERSION $PG_CLUSTER start"
            return 1
        fi
        kw_info "pg_ctlcluster $PG_VERSION $PG_CLUSTER start"
        pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start || {
            kw_warn "pg_ctlcluster $PG_VERSION $PG_CLUSTER start failed"
            return 1
        }
    fi
    local i
    for ((i = 0; i < 30; i++)); do
        pg_isready -q -h 127.0.0.1 -p "$port" && break
        sleep 1
    done
    pg_isready -q -h 127.0.0.1 -p "$port" || {
        kw_warn "PostgreSQL on 127.0.0.1:$port is not accepting connections"
        return 1
    }
    if as_postgres true 2>/dev/null; then
        # The role is made if missing and (re)given its test password and
        # attributes (an earlier run or person may have made it otherwise);
        # CREATEDB lets tests make their own databases.
        as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$port" -d postgres <<SQL || return 1
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_ROLE') THEN
    CREATE ROLE $PG_ROLE;
  END IF;
END \$\$;
ALTER ROLE $PG_ROLE LOGIN CREATEDB PASSWORD '$PG_ROLE';
SQL
        if [[ -z "$(as_postgres psql -X -t -A -p "$port" -d postgres \
            -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" ]]; then
            kw_info "createdb -O $PG_ROLE $PG_DB"
            as_postgres createdb -p "$port" -O "$PG_ROLE" "$PG_DB" || return 1
        fi
    fi
    pg_can_connect "$pg_url" && return 0
    kw_warn "cannot connect to $pg_url. As the postgres user run:"
    kw_warn "  psql -c \"CREATE ROLE $PG_ROLE LOGIN CREATEDB PASSWORD '$PG_ROLE'\"; createdb -O $PG_ROLE $PG_DB"
    return 1
}

pg_url=""
if ((postgres)); then
    kw_banner "PostgreSQL: $PG_VERSION/$PG_CLUSTER, role $PG_ROLE, database $PG_DB"
    if setup_postgres; then
        kw_info "ready: $(redact "$pg_url")"
    elif ((ci)); then
        kw_die "PostgreSQL is required in CI (CI=true)"
    else
        kw_warn "PostgreSQL is not available: the PostgreSQL test run will be SKIPPED"
        postgres=0
    fi
fi

# --- 3. SoftHSM --------------------------------------------------------------
kw_banner "SoftHSM: config and token dir for this run"
tmpdir="$(mktemp -d "${TMPDIR:-/tmp}/keyward-test.XXXXXX")"
trap 'rm -rf -- "$tmpdir"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
SOFTHSM2_CONF="$(kw_write_softhsm_conf "$tmpdir")"
export SOFTHSM2_CONF
# Smoke test before the long build: make and delete a token.
softhsm2-util --init-token --free --label kw-smoke --pin 1234 --so-pin 5678 >/dev/null
softhsm2-util --delete-token --token kw-smoke >/dev/null
kw_info "SOFTHSM2_CONF=$SOFTHSM2_CONF"

# --- 4. lint -----------------------------------------------------------------
if ((lint)); then
    kw_banner "cargo fmt --all -- --check"
    cargo fmt --all -- --check
    kw_banner "cargo clippy --workspace --all-targets -- -D warnings"
    cargo clippy --workspace --all-targets -- -D warnings
    kw_banner "cargo clippy --workspace --all-targets ${KW_TEST_FEATURES[*]} -- -D warnings"
    cargo clippy --workspace --all-targets "${KW_TEST_FEATURES[@]}" -- -D warnings
    # The API description the admin listener serves (GET /openapi.json),
    # checked by a real OpenAPI 3.1 validator; the route tests compare it
    # with the routers and live answers.
    kw_banner "openapi-spec-validator docs/openapi.json"
    openapi_venv="${CARGO_TARGET_DIR:-$KW_ROOT/target}/openapi-venv"
    openapi_python="$(kw_python_venv "$openapi_venv" "$KW_OPENAPI_VALIDATOR")" ||
        kw_die "cannot set up $KW_OPENAPI_VALIDATOR in $openapi_venv"
    "$openapi_python" -m openapi_spec_validator docs/openapi.json
    # The supply chain (deny.toml): licences, banned crates and sources need
    # no network; advisories need RustSec's database, fetched when reachable,
    # else the local copy (its date said), else skipped with a warning.
    kw_banner "cargo deny check (bans, licenses, sources, advisories)"
    cargo deny --offline check bans licenses sources
    if ! cargo deny check advisories; then
        advisory_db="$(find "${CARGO_HOME:-$HOME/.cargo}/advisory-dbs" -mindepth 1 -maxdepth 1 \
            -type d -name 'advisory-db-*' 2>/dev/null | head -n1)"
        if [[ -n "$advisory_db" ]]; then
            kw_warn "RustSec's database not fetched (above): checking against the local copy of $(git -C "$advisory_db" log -1 --format=%cs)"
            cargo deny --offline check advisories
        else
            kw_warn "advisories NOT checked: RustSec's database is neither reachable nor copied here"
        fi
    fi
fi

# --- 4b. operations pack ------------------------------------------------------
# Alert rules and their promtool tests, runbook links, the dashboard's JSON,
# the systemd units (ops/README.md, "Operations pack"). A few seconds.
kw_banner "operations pack: ops/ops-pack-test.sh"
./ops/ops-pack-test.sh

# --- 5. tests ----------------------------------------------------------------
# The end-to-end tests run binaries of other packages too (kwsim, the device
# simulator, drives provisioning next to keyward and kwctl).
kw_banner "cargo build --workspace --bins ${KW_TEST_FEATURES[*]}"
cargo build --workspace --bins "${KW_TEST_FEATURES[@]}"

# The API fuzzing test (server/tests/server_schemathesis.rs) runs
# schemathesis from a venv under the target dir; without it, it is skipped.
kw_banner "schemathesis (API fuzzing) into a venv"
st_venv="${CARGO_TARGET_DIR:-$KW_ROOT/target}/schemathesis-venv"
if st_python="$(kw_python_venv "$st_venv" "$KW_SCHEMATHESIS")"; then
    export KEYWARD_SCHEMATHESIS="${st_python%/python}/schemathesis"
else
    ((ci)) && kw_die "cannot set up $KW_SCHEMATHESIS in $st_venv"
    kw_warn "schemathesis not installed: the API fuzzing test will be skipped"
fi

nextest=(cargo nextest run --workspace "${KW_TEST_FEATURES[@]}")
((ci)) && nextest+=(--profile ci)

# Everything below runs with the fault points; this shows the build that
# ships has none (server/src/fault.rs's tests, without the feature).
kw_banner "without fault points: cargo nextest run -p keyward-server --lib fault::"
cargo nextest run -p keyward-server --lib fault::

kw_banner "tests on SQLite: ${nextest[*]}"
sqlite_rc=0
"${nextest[@]}" || sqlite_rc=$?

pg_rc=0
# nextest exits 101 when the build failed: a second run would only fail the same way.
if ((postgres && sqlite_rc == 101)); then
    kw_warn "the build failed: PostgreSQL test run not attempted"
    pg_rc=$sqlite_rc
elif ((postgres)); then
    kw_banner "tests on PostgreSQL: KEYWARD_TEST_DATABASE_URL=$(redact "$pg_url") ${nextest[*]}"
    KEYWARD_TEST_DATABASE_URL="$pg_url" "${nextest[@]}" || pg_rc=$?
fi

# The soak's short form (tests/benches/soak.rs): two minutes per backend of
# the device protocols at 80 % of the capacity it measures first, in the
# test profile; no error, flat memory, the token's objects unchanged.
soak_rc=0
if ((sqlite_rc != 101)); then
    soak=(cargo test -p keyward-tests "${KW_TEST_FEATURES[@]}" --bench soak)
    kw_banner "soak, short form: KW_SOAK_SECS=${KW_SOAK_SECS:-120} ${soak[*]}"
    if ((postgres)); then
        KEYWARD_BENCH_DATABASE_URL="$pg_url" "${soak[@]}" || soak_rc=$?
    else
        "${soak[@]}" || soak_rc=$?
    fi
fi

# Coverage-guided fuzzing, short form (tests/fuzz, ops/fuzz.sh), with
# KW_FUZZ=1: its instrumented build of the server's dependency tree takes
# 15-35 minutes on two cores, past this run's budget; it needs cargo-afl,
# which ops/fuzz.sh installs when run as root.
fuzz_rc=0
if [[ "${KW_FUZZ:-0}" == 1 ]]; then
    kw_banner "fuzzing: ops/fuzz.sh --short"
    "$KW_ROOT/ops/fuzz.sh" --short || fuzz_rc=$?
else
    kw_info "fuzzing not run (KW_FUZZ=1 ./ops/test.sh, or ./ops/fuzz.sh --short)"
fi

((sqlite_rc == 0)) || kw_warn "the SQLite test run FAILED (exit $sqlite_rc)"
((pg_rc == 0 || sqlite_rc == 101)) || kw_warn "the PostgreSQL test run FAILED (exit $pg_rc)"
((soak_rc == 0)) || kw_warn "the soak FAILED (exit $soak_rc)"
((fuzz_rc == 0)) || kw_warn "the short fuzzing run FAILED (exit $fuzz_rc)"
((sqlite_rc == 0 && pg_rc == 0 && soak_rc == 0 && fuzz_rc == 0))
