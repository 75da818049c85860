# shellcheck shell=bash
# Shared helpers for the ops/*.sh scripts and .ci/run. Source it, don't run it.
#
# Sets KW_ROOT (the repository root, absolute) and defines kw_* functions.
# Messages go to stderr so that scripts can keep stdout for machine-readable
# output (ops/softhsm-dev.sh prints only its `export` line there).

# shellcheck disable=SC2034 # used by the scripts that source this file
KW_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Debian's SoftHSM PKCS#11 module (what config/dev.toml and the tests load).
KW_SOFTHSM_MODULE=/usr/lib/softhsm/libsofthsm2.so
# The packages every script here needs: SoftHSM and pkcs11-tool.
# shellcheck disable=SC2034
KW_HSM_PACKAGES=(softhsm2 opensc)
# What the end-to-end tests drive as a user would: curl, openssl, promtool.
# shellcheck disable=SC2034
KW_TEST_PACKAGES=(curl openssl prometheus)
# Cargo features of every test build: the fault points the crash tests
# trigger (server/src/fault.rs). Never in a build that ships.
# shellcheck disable=SC2034
KW_TEST_FEATURES=(--features keyward-server/faults)
# What the OpenAPI check needs: Python 3 with venv and pip (ensurepip).
# shellcheck disable=SC2034
KW_PYTHON_PACKAGES=(python3 python3-venv)
# The OpenAPI validator ops/test.sh runs on docs/openapi.json (PyPI).
# shellcheck disable=SC2034
KW_OPENAPI_VALIDATOR="openapi-spec-validator==0.9.0"
# The API fuzzer server/tests/server_schemathesis.rs drives (PyPI).
# shellcheck disable=SC2034
KW_SCHEMATHESIS="schemathesis==4.32.5"
# The supply-chain check ops/test.sh runs over Cargo.lock (deny.toml), from
# crates.io; built from source when missing (about 6 minutes on 2 cores).
# shellcheck disable=SC2034
KW_CARGO_DENY_VERSION="0.20.2"

kw_banner() { printf '\n==> %s\n' "$*" >&2; }
kw_info() { printf '    %s\n' "$*" >&2; }
kw_warn() { printf 'WARNING: %s\n' "$*" >&2; }
kw_die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

kw_is_root() { [[ "$(id -u)" == 0 ]]; }

# kw_has_package NAME: true when the package's files are there. Checks the
# files the scripts use rather than dpkg, so a source build counts too.
kw_has_package() {
    case "$1" in
        softhsm2) command -v softhsm2-util >/dev/null && [[ -e "$KW_SOFTHSM_MODULE" ]] ;;
        opensc) command -v pkcs11-tool >/dev/null ;;
        curl) command -v curl >/dev/null ;;
        openssl) command -v openssl >/dev/null ;;
        prometheus) command -v promtool >/dev/null ;;
        python3) command -v python3 >/dev/null ;;
        # Any python3 that can make a venv with pip (Debian splits it out).
        python3-venv) command -v python3 >/dev/null && python3 -c 'import ensurepip, venv' 2>/dev/null ;;
        *) dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed' ;;
    esac
}

# kw_ensure_packages NAME...: installs the missing ones with apt-get when root;
# otherwise says what to install and returns 1. `apt-get update` runs at most
# once per process tree (KW_APT_UPDATED is exported to child scripts).
kw_ensure_packages() {
    local missing=() p
    for p in "$@"; do
        kw_has_package "$p" || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    if ! kw_is_root; then
        printf 'ERROR: missing packages: %s\n' "${missing[*]}" >&2
        printf '       install them with: sudo apt-get update && sudo apt-get install -y %s\n' \
            "${missing[*]}" >&2
        return 1
    fi
    command -v apt-get >/dev/null ||
        kw_die "missing packages (${missing[*]}) and no apt-get: install them by hand"
    if [[ "${KW_APT_UPDATED:-}" != 1 ]]; then
        kw_info "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null >&2
        export KW_APT_UPDATED=1
    fi
    kw_info "apt-get install ${missing[*]}"
    # stdout is dpkg's progress; errors still reach stderr.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" </dev/null >/dev/null
    for p in "${missing[@]}"; do
        kw_has_package "$p" || kw_die "package $p still missing after apt-get install"
    done
}

# kw_python_venv DIR REQUIREMENT...: makes a Python venv in DIR (once) and
# installs the requirements into it (pip does nothing for one already
# satisfied, so a rerun stays offline). Prints DIR/bin/python on stdout.
kw_python_venv() {
    local dir="$1"
    shift
    kw_ensure_packages "${KW_PYTHON_PACKAGES[@]}" || return 1
    if [[ ! -x "$dir/bin/python" ]] || ! "$dir/bin/python" -m pip --version >/dev/null 2>&1; then
        kw_info "python3 -m venv $dir"
        rm -rf -- "$dir"
        python3 -m venv "$dir" >&2 || return 1
    fi
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "$@" </dev/null >&2 || return 1
    printf '%s\n' "$dir/bin/python"
}

# kw_write_softhsm_conf DIR: writes DIR/softhsm2.conf with its tokens in
# DIR/tokens (absolute paths). Leaves an identical file untouched. Prints the
# config path on stdout.
kw_write_softhsm_conf() {
    local dir conf content
    dir="$(cd "$1" && pwd)"
    conf="$dir/softhsm2.conf"
    mkdir -p "$dir/tokens"
    content="directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false"
    if [[ ! -f "$conf" || "$(<"$conf")" != "$content" ]]; then
        printf '%s\n' "$content" >"$conf"
    fi
    printf '%s\n' "$conf"
}

# kw_random_digits N: N uniformly random decimal digits from /dev/urandom.
kw_random_digits() {
    local n="$1" out="" b
    while ((${#out} < n)); do
        for b in $(od -An -N16 -tu1 /dev/urandom); do
            if ((b < 250)); then out+=$((b % 10)); fi
        done
    done
    printf '%s' "${out:0:n}"
}
