//! The fuzz targets' short form in every test run: each target of
//! `tests/fuzz` (the very functions AFL++ drives, compiled here without its
//! instrumentation) gets every input of its checked-in corpus, then seeded
//! mutations of them (bit flips, byte overwrites, cuts, repeats, splices),
//! for `KEYWARD_FUZZ_SECS` seconds per target (default 1). A panic names the
//! target and the input, in hex; the seed is printed and
//! `KEYWARD_FUZZ_SEED` replays a run. Coverage-guided runs of hours are
//! `ops/fuzz.sh` (its instrumented build takes too long for CI).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::path::Path;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One mutation of `input`, with `other` (another corpus input) for splices.
fn mutate(rng: &mut StdRng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        let len = out.len();
        match rng.gen_range(0..6) {
            0 if len > 0 => {
                let i = rng.gen_range(0..len);
                out[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.gen_range(0..len);
                out[i] = *[0u8, 0x7f, 0x80, 0xff, b'"', b'{', b'0']
                    .get(rng.gen_range(0..7))
                    .unwrap();
            }
            2 if len > 0 => out.truncate(rng.gen_range(0..len)),
            3 if len > 0 => {
                let (a, b) = (rng.gen_range(0..len), rng.gen_range(0..len));
                let (a, b) = (a.min(b), a.max(b));
                let piece = out[a..b].to_vec();
                let at = rng.gen_range(0..=len);
                out.splice(at..at, piece);
            }
            4 if !other.is_empty() => {
                let cut = rng.gen_range(0..=len);
                let from = rng.gen_range(0..other.len());
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            _ => {
                let at = rng.gen_range(0..=len);
                out.insert(at, rng.r#gen());
            }
        }
    }
    out
}

#[test]
fn every_target_takes_its_corpus_and_mutations_of_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let secs: f64 = std::env::var("KEYWARD_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let seed: u64 = std::env::var("KEYWARD_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().r#gen());
    println!("KEYWARD_FUZZ_SEED={seed}");
    // A panic is this test's finding: report it once, with its input, below.
    std::panic::set_hook(Box::new(|_| {}));
    for (n, &(name, run)) in targets::TARGETS.iter().enumerate() {
        let mut corpus: Vec<Vec<u8>> = std::fs::read_dir(root.join(name))
            .unwrap_or_else(|e| panic!("corpus of {name}: {e}"))
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        corpus.sort();
        assert!(!corpus.is_empty(), "{name}: empty corpus");
        let check = |input: &[u8]| {
            if std::panic::catch_unwind(|| run(input)).is_err() {
                let _ = std::panic::take_hook();
                panic!("target {name} panicked on input {}", hex::encode(input));
            }
        };
        for input in &corpus {
            check(input);
        }
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(n as u64));
        let until = Instant::now() + Duration::from_secs_f64(secs);
        let mut runs = corpus.len();
        while Instant::now() < until {
            for _ in 0..64 {
                let a = &corpus[rng.gen_range(0..corpus.len())];
                let b = &corpus[rng.gen_range(0..corpus.len())];
                check(&mutate(&mut rng, a, b));
            }
            runs += 64;
        }
        println!(
            "{name:<14} {runs:>9} inputs ({} from the corpus)",
            corpus.len()
        );
    }
    let _ = std::panic::take_hook();
}
