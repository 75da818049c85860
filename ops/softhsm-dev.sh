#!/usr/bin/env bash
# Creates the local development SoftHSM token used by config/dev.toml, once.
#
#   var/softhsm/softhsm2.conf   SoftHSM config (tokens in var/softhsm/tokens)
#   var/softhsm/user.pin        user PIN, 8 random digits, mode 0600
#   var/softhsm/so.pin          security officer PIN, mode 0600
#
# Idempotent: when the token `keyward-dev` exists nothing is changed.
# Progress goes to stderr; stdout gets only the line to use, so
#   eval "$(./ops/softhsm-dev.sh)"
# sets SOFTHSM2_CONF in the calling shell.
# Start over: rm -rf var/softhsm (destroys every key in the dev token).
set -euo pipefail

# shellcheck source=ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

label=keyward-dev
dir="$KW_ROOT/var/softhsm"

kw_ensure_packages "${KW_HSM_PACKAGES[@]}"

# var/ is Keyward's data dir too (config/dev.toml), which `keyward` refuses
# to use when others can read it: make it, and everything under it, 0700.
(umask 077 && mkdir -p "$dir")
chmod 700 "$KW_ROOT/var"
conf="$(kw_write_softhsm_conf "$dir")"
export SOFTHSM2_CONF="$conf"

# `--show-slots` prints "Label: <label>" (padded) for each initialised token.
slots="$(softhsm2-util --show-slots)" || kw_die "softhsm2-util --show-slots failed (SOFTHSM2_CONF=$conf)"
if grep -Eq "^[[:space:]]*Label:[[:space:]]+${label}[[:space:]]*$" <<<"$slots"; then
    [[ -s "$dir/user.pin" ]] ||
        kw_die "token $label exists but $dir/user.pin is missing: rm -rf $dir and run this again"
    kw_info "SoftHSM token $label already exists in $dir/tokens"
else
    kw_info "creating SoftHSM token $label in $dir/tokens"
    user_pin="$(kw_random_digits 8)"
    so_pin="$(kw_random_digits 8)"
    # PIN files first: if the token creation fails they are simply rewritten
    # next time, while a token without its PIN file could not be used.
    (
        umask 077
        printf '%s\n' "$user_pin" >"$dir/user.pin"
        printf '%s\n' "$so_pin" >"$dir/so.pin"
    )
    chmod 0600 "$dir/user.pin" "$dir/so.pin"
    softhsm2-util --init-token --free --label "$label" \
        --pin "$user_pin" --so-pin "$so_pin" >/dev/null
    kw_info "user PIN in $dir/user.pin, SO PIN in $dir/so.pin"
fi

printf 'export SOFTHSM2_CONF=%q\n' "$conf"
