#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of outside input (tests/fuzz):
# cargo-afl (AFL++) on the stable toolchain, one target after the other,
# each started from its checked-in corpus (tests/fuzz/corpus/TARGET).
#
#   ./ops/fuzz.sh --short [TARGET...]        25 s a target (CI)
#   ./ops/fuzz.sh --seconds N [TARGET...]    N seconds a target
#   ./ops/fuzz.sh --execs N [TARGET...]      N executions a target
#   ./ops/fuzz.sh --long [TARGET...]         10 000 000 executions a target
#
# Installs cargo-afl from crates.io (and builds its AFL++) when missing.
# Builds the targets with AFL's instrumentation in tests/fuzz/target (its own
# lock file and target dir; the workspace's builds are not touched). Findings
# go to tests/fuzz/findings/TARGET (not checked in). Prints each target's
# executions, corpus size, crashes and hangs; exits 1 if any target crashed
# or hung, naming the inputs (replay one: tests/fuzz/target/release/TARGET
# < FILE).
set -euo pipefail

# shellcheck source=ops/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,17s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

seconds=""
execs=""
targets=()
while (($#)); do
    case "$1" in
        --short) seconds=25 ;;
        --long) execs=10000000 ;;
        --seconds) seconds="${2:?--seconds N}" && shift ;;
        --execs) execs="${2:?--execs N}" && shift ;;
        -h | --help) usage && exit 0 ;;
        -*) echo "unknown option: $1" >&2 && usage >&2 && exit 2 ;;
        *) targets+=("$1") ;;
    esac
    shift
done
[[ -n "$seconds$execs" ]] || { usage >&2 && exit 2; }

fuzz_dir="$KW_ROOT/tests/fuzz"
cd "$fuzz_dir"
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(find corpus -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort)
fi

kw_banner "cargo-afl"
if ! cargo afl --version >/dev/null 2>&1; then
    kw_info "cargo install cargo-afl --locked"
    cargo install cargo-afl --locked
fi
# Builds AFL++ and its runtime for this rustc once; says so when it is there.
cargo afl config --build >/dev/null 2>&1 || true
# (afl-fuzz -h prints its usage and exits 1.)
[[ "$(cargo afl fuzz -h 2>&1)" == *afl-fuzz* ]] ||
    kw_die "cargo afl fuzz does not run (cargo afl config --build --force)"

kw_banner "cargo afl build --release (tests/fuzz)"
export CARGO_TARGET_DIR="$fuzz_dir/target"
unset RUSTFLAGS
cargo afl build --release --bins

# Not interactive, no core-dump handler or CPU governor to insist on, and no
# CPU pinning (the machine is shared).
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1

stat_of() { awk -F' *: *' -v k="$2" '$1 == k { print $2 }' "$1"; }

failed=0
summary=()
for t in "${targets[@]}"; do
    [[ -d "corpus/$t" && -x "target/release/$t" ]] || kw_die "no target $t"
    out="findings/$t"
    rm -rf -- "$out"
    mkdir -p "$out"
    limit=()
    [[ -n "$seconds" ]] && limit+=(-V "$seconds")
    [[ -n "$execs" ]] && limit+=(-E "$execs")
    kw_banner "fuzz $t (${limit[*]})"
    # -t: a hang is an input that takes over 5 s (an execution takes
    # microseconds; the margin is for a shared, loaded machine).
    cargo afl fuzz -i "corpus/$t" -o "$out" -t 5000 "${limit[@]}" -- "target/release/$t" \
        >"$out/afl.log" 2>&1 || {
        tail -n 30 "$out/afl.log" >&2
        kw_die "afl-fuzz failed on $t (log: $out/afl.log)"
    }
    stats="$out/default/fuzzer_stats"
    execs_done="$(stat_of "$stats" execs_done)"
    crashes="$(stat_of "$stats" saved_crashes)"
    hangs="$(stat_of "$stats" saved_hangs)"
    summary+=("$(printf '%-14s %12s execs %6s s %5s paths %3s crashes %3s hangs' "$t" \
        "$execs_done" "$(stat_of "$stats" run_time)" "$(stat_of "$stats" corpus_count)" \
        "$crashes" "$hangs")")
    if ((crashes + hangs > 0)); then
        failed=1
        find "$out/default/crashes" "$out/default/hangs" -type f -name 'id:*' -printf '    %p\n' >&2
    fi
done

kw_banner "fuzzing summary"
printf '%s\n' "${summary[@]}"
((failed == 0)) || kw_die "crashes or hangs found: see the inputs above"
