//! The malicious terminal: the terminal relays the card's records but
//! alters them at random — a bit flipped in the header, the length, the
//! ciphertext or the tag; a record dropped, duplicated, reordered, spliced
//! from another channel, truncated or extended. Every mutation is refused,
//! its channel is closed (the card's intact record that follows is refused
//! too), and the closing is audited before the answer; the other terminal's
//! channel lives on.
//!
//! Seeded: the seed is printed, `KEYWARD_ATTACK_SEED` replays it (the same
//! mutations per terminal; keys, randoms and the interleaving differ) and `KEYWARD_ATTACK_MUTATIONS` sets
//! how many (1,000 by default; ops/README.md has the long form).

use std::collections::BTreeMap;

use axum::http::StatusCode;
use keyward_protocol::channel::{HEADER_LEN, Record, TAG_LEN};
use keyward_tests::channel::Channel;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::channel::{Card, card, open, ping, ping_of, send};
use crate::harness::{Answer, App};

/// What the terminal does to the card's next record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mutation {
    /// One bit of the header (magic, version, channel id, type, sequence).
    FlipHeader,
    /// One bit of the ciphertext's length field.
    FlipLength,
    /// One bit of the ciphertext (the tag when the record carries nothing).
    FlipCiphertext,
    /// One bit of the GCM tag.
    FlipTag,
    /// One to three records never arrive; the next one does.
    Drop,
    /// A record the server took, again.
    Duplicate,
    /// The card's second record before its first.
    Reorder,
    /// The header of this channel's record over another channel's
    /// ciphertext at the same sequence number.
    Splice,
    /// Cut anywhere (no longer a record), or the ciphertext shortened with
    /// its length field kept consistent.
    Truncate,
    /// Bytes after the record, or inside its ciphertext with the length
    /// field kept consistent.
    Extend,
}

const MUTATIONS: [Mutation; 10] = [
    Mutation::FlipHeader,
    Mutation::FlipLength,
    Mutation::FlipCiphertext,
    Mutation::FlipTag,
    Mutation::Drop,
    Mutation::Duplicate,
    Mutation::Reorder,
    Mutation::Splice,
    Mutation::Truncate,
    Mutation::Extend,
];

pub(crate) fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The card's next record as the test chooses it: mostly data, sometimes a
/// key update or the close.
fn next_record(rng: &mut StdRng, ch: &mut Channel) -> Vec<u8> {
    match rng.gen_range(0..10) {
        0 => ch.update_key().unwrap(),
        1 => ch.close().unwrap(),
        _ => ch.seal(&ping_of(ch)).unwrap().remove(0),
    }
}

fn flip(rng: &mut StdRng, bytes: &mut [u8], from: usize, to: usize) {
    let i = rng.gen_range(from..to);
    bytes[i] ^= 1 << rng.gen_range(0..8);
}

/// `r` with its ciphertext replaced (the length field follows).
fn with_ciphertext(r: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut rec = Record::decode(r).unwrap();
    f(&mut rec.ciphertext);
    rec.encode()
}

/// The mutated record the terminal sends, and the card's intact record that
/// it sends after (which the closed channel must refuse too).
async fn mutate(
    rng: &mut StdRng,
    m: Mutation,
    c: &Card,
    app: &App,
    ch: &mut Channel,
    donor: &Channel,
) -> (Vec<u8>, Vec<u8>) {
    const LEN_AT: usize = HEADER_LEN;
    const BODY_AT: usize = HEADER_LEN + 4;
    match m {
        Mutation::FlipHeader
        | Mutation::FlipLength
        | Mutation::FlipCiphertext
        | Mutation::FlipTag => {
            let r = next_record(rng, ch);
            let mut bad = r.clone();
            let tag_at = r.len() - TAG_LEN;
            match m {
                Mutation::FlipHeader => flip(rng, &mut bad, 0, HEADER_LEN),
                Mutation::FlipLength => flip(rng, &mut bad, LEN_AT, BODY_AT),
                Mutation::FlipCiphertext if tag_at > BODY_AT => {
                    flip(rng, &mut bad, BODY_AT, tag_at)
                }
                _ => flip(rng, &mut bad, tag_at, r.len()),
            }
            (bad, r)
        }
        Mutation::Drop => {
            let dropped = rng.gen_range(1..=3);
            let mut rs: Vec<_> = (0..=dropped + 1)
                .map(|_| ch.seal(&ping_of(ch)).unwrap().remove(0))
                .collect();
            let later = rs.pop().unwrap();
            (rs.pop().unwrap(), later)
        }
        Mutation::Duplicate => {
            let r = ch.seal(&ping_of(ch)).unwrap().remove(0);
            send(&app.public, c, &r).await.expect(StatusCode::OK);
            let later = ch.seal(&ping_of(ch)).unwrap().remove(0);
            (r, later)
        }
        Mutation::Reorder => {
            let first = ch.seal(&ping_of(ch)).unwrap().remove(0);
            let second = ch.seal(&ping_of(ch)).unwrap().remove(0);
            (second, first)
        }
        Mutation::Splice => {
            let r = next_record(rng, ch);
            let own = Record::decode(&r).unwrap();
            // The other channel's record of the same number.
            let mut other = donor.clone();
            let mut theirs =
                Record::decode(&other.seal(&ping_of(&other)).unwrap().remove(0)).unwrap();
            while theirs.sequence < own.sequence {
                theirs = Record::decode(&other.seal(&ping_of(&other)).unwrap().remove(0)).unwrap();
            }
            let spliced = Record {
                ciphertext: theirs.ciphertext,
                ..own.clone()
            };
            (spliced.encode(), r)
        }
        Mutation::Truncate => {
            let r = next_record(rng, ch);
            let bad = if rng.gen_bool(0.5) && r.len() > BODY_AT + TAG_LEN {
                let keep = rng.gen_range(TAG_LEN..r.len() - BODY_AT);
                with_ciphertext(&r, |ct| ct.truncate(keep))
            } else {
                r[..rng.gen_range(0..r.len())].to_vec()
            };
            (bad, r)
        }
        Mutation::Extend => {
            let r = next_record(rng, ch);
            let mut extra = vec![0u8; rng.gen_range(1..=32)];
            rng.fill_bytes(&mut extra);
            let bad = if rng.gen_bool(0.5) {
                let at = rng.gen_range(0..=r.len() - BODY_AT);
                with_ciphertext(&r, |ct| {
                    ct.splice(at..at, extra);
                })
            } else {
                [r.as_slice(), &extra].concat()
            };
            (bad, r)
        }
    }
}

async fn debug_rows(app: &App, target: &str) -> String {
    use sqlx::Row;
    let pool = app.state.kms.db().pool();
    let staged = sqlx::query("SELECT action, outcome FROM audit_staged WHERE target = $1")
        .bind(target)
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| format!("{}/{}", r.get::<String, _>(0), r.get::<String, _>(1)))
        .collect::<Vec<_>>();
    let id = target.trim_start_matches("channel:");
    let row = sqlx::query("SELECT state, terminal_id, closed_at_ms FROM channels WHERE id = $1")
        .bind(id)
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} {} {:?}",
                r.get::<String, _>(0),
                r.get::<String, _>(1),
                r.get::<Option<i64>, _>(2)
            )
        })
        .collect::<Vec<_>>();
    format!("staged {staged:?}, channel {row:?}")
}

fn is_refusal(a: &Answer) -> bool {
    (a.status == StatusCode::FORBIDDEN && a.code() == "channel_closed")
        || (a.status == StatusCode::BAD_REQUEST && a.code() == "channel_malformed")
}

/// Terminals attacked at once (each relays its own card's channels), so
/// the run waits less on each commit.
const TERMINALS: u64 = 4;

#[tokio::test]
async fn a_malicious_terminal_is_refused_every_time_and_closes_the_channel() {
    let seed = env_u64("KEYWARD_ATTACK_SEED").unwrap_or_else(rand::random);
    let n = env_u64("KEYWARD_ATTACK_MUTATIONS").unwrap_or(1_000);
    println!("malicious terminal: seed {seed}, {n} mutations (KEYWARD_ATTACK_SEED={seed} replays)");
    let app = App::new().await;
    // Another card behind another terminal: its channel donates the
    // spliced ciphertexts and must outlive every refusal.
    let other = card(&app, 80).await;
    let mut donor = open(&app, &app.public, &app.public, &other).await;
    let mut cards = Vec::new();
    for t in 0..TERMINALS {
        cards.push(card(&app, 81 + t as u8).await);
    }
    let started = std::time::Instant::now();
    // Terminal t takes mutations t, t + TERMINALS, …, drawn from its own
    // generator seeded with seed + t.
    let share = |t: u64| (n + TERMINALS - 1 - t) / TERMINALS;
    let (a, b, c, d) = tokio::join!(
        attack(&app, &cards[0], &donor, seed, 0, share(0)),
        attack(&app, &cards[1], &donor, seed, 1, share(1)),
        attack(&app, &cards[2], &donor, seed, 2, share(2)),
        attack(&app, &cards[3], &donor, seed, 3, share(3)),
    );
    let mut seen = BTreeMap::<Mutation, u64>::new();
    for (m, k) in [a, b, c, d].into_iter().flatten() {
        *seen.entry(m).or_default() += k;
    }
    assert_eq!(seen.values().sum::<u64>(), n);
    println!(
        "malicious terminal: {n} mutations refused in {:.1} s: {seen:?}",
        started.elapsed().as_secs_f64()
    );
    // The other terminal's channel was never touched.
    ping(&app.public, &other, &mut donor).await;
}

/// `count` mutations by the terminal relaying `c`'s channels, each on a
/// new channel: refused, the channel closed, the closing audited.
async fn attack(
    app: &App,
    c: &Card,
    donor: &Channel,
    seed: u64,
    terminal: u64,
    count: u64,
) -> BTreeMap<Mutation, u64> {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(terminal));
    let mut seen = BTreeMap::new();
    for i in 0..count {
        let m = MUTATIONS[rng.gen_range(0..MUTATIONS.len())];
        let at = format!("terminal {terminal}, mutation {i} ({m:?}), seed {seed}");
        let mut ch = open(app, &app.public, &app.public, c).await;
        // Sometimes intact records first, so the sequence is not always 0.
        for _ in 0..rng.gen_range(0..=2) {
            if rng.gen_bool(0.5) {
                ping(&app.public, c, &mut ch).await;
            }
        }
        let (bad, later) = mutate(&mut rng, m, c, app, &mut ch, donor).await;
        let a = send(&app.public, c, &bad).await;
        assert!(is_refusal(&a), "{at}: not refused: {} {}", a.status, a.text);
        let a = send(&app.public, c, &later).await;
        assert!(
            a.status == StatusCode::FORBIDDEN && a.code() == "channel_closed",
            "{at}: the channel took a record after the refusal: {} {}",
            a.status,
            a.text
        );
        // The closing is in the trail, refused, for this channel: staged
        // with it (another terminal's flush may be chaining it just now).
        let target = format!("channel:{}", ch.id);
        app.state.audit.flush_staged().await.unwrap();
        let trail = app.state.audit.recent(64).await.unwrap();
        assert!(
            trail.iter().any(|r| r.action == "channel.close"
                && r.outcome == "refused"
                && r.target == target),
            "{at}: the closing is not audited: {:?} {}",
            app.state
                .audit
                .recent(1000)
                .await
                .unwrap()
                .iter()
                .filter(|r| r.target == target)
                .map(|r| (r.seq, &r.action, &r.outcome, &r.detail_json))
                .collect::<Vec<_>>(),
            debug_rows(app, &target).await
        );
        *seen.entry(m).or_default() += 1;
    }
    seen
}

/// The key-exchange classes the timing test interleaves: each is refused
/// with the same bytes, and must cost the same time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// A well-formed OAEP ciphertext whose plaintext is 48 bytes, not 32:
    /// the padding passes, the length check after it fails.
    ValidThenWrongLength,
    /// Random bytes below the modulus: the OAEP decoding fails.
    BadPadding,
    /// 255 bytes for a 256-byte modulus.
    WrongLength,
    /// All ones: not below the modulus.
    AboveModulus,
    /// A good ciphertext under a signature over another transcript.
    BadSignature,
    /// The card's key and serial certified by another CA.
    BadCertificate,
}

const CLASSES: [Class; 6] = [
    Class::ValidThenWrongLength,
    Class::BadPadding,
    Class::WrongLength,
    Class::AboveModulus,
    Class::BadSignature,
    Class::BadCertificate,
];

/// A refusal's bytes without its request id (which differs per request).
pub(crate) fn refusal_bytes(a: &Answer) -> String {
    let mut b = a.body.clone();
    if let Some(e) = b.get_mut("error").and_then(|e| e.as_object_mut()) {
        e.remove("request_id");
    }
    format!("{} {b}", a.status)
}

/// The Marvin/tlsfuzzer method: blocks of one handshake per class in a
/// random order, each key exchange timed from the client; per pair of
/// classes a Wilcoxon signed-rank test on the per-block differences, with a
/// Bonferroni correction. `KEYWARD_TIMING_N` handshakes per class (200 by
/// default; the long form is 20,000, where a significant difference fails
/// the test — below that the p-values are printed, not judged, so CI is not
/// flaky). Every refusal's bytes must be the same.
#[tokio::test]
async fn every_key_exchange_refusal_is_one_answer_in_one_time() {
    use keyward_protocol::channel::CardKeyExchange;
    use keyward_tests::channel::encrypt_to_server;
    use rand::seq::SliceRandom;

    use crate::channel::{forged, key_exchange, lookalike, random, say_hello};

    let seed = env_u64("KEYWARD_TIMING_SEED").unwrap_or_else(rand::random);
    let n = env_u64("KEYWARD_TIMING_N").unwrap_or(200) as usize;
    let warm_up = 10;
    println!("timing: seed {seed}, {n} key exchanges per class");
    let mut rng = StdRng::seed_from_u64(seed);
    let app = App::new().await;
    let c = card(&app, 83).await;
    let root = app.state.ca.root_pem().to_owned();
    let other_ca = lookalike(&c);
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(n); CLASSES.len()];
    let mut first: Option<String> = None;
    for block in 0..warm_up + n {
        let mut order: Vec<usize> = (0..CLASSES.len()).collect();
        order.shuffle(&mut rng);
        for k in order {
            let (hello, id, sh) = say_hello(&app.public, &c).await;
            let good = |plain: &[u8]| {
                encrypt_to_server(&sh, &root, plain, &mut rand::thread_rng()).unwrap()
            };
            let sign = |cert: Vec<u8>, epms: Vec<u8>, sig: Option<Vec<u8>>| {
                forged(&hello, &sh, &c.d, cert, epms, sig)
            };
            let cke = match CLASSES[k] {
                Class::ValidThenWrongLength => sign(c.cert.clone(), good(&random::<48>()), None),
                Class::BadPadding => {
                    let mut b = random::<256>();
                    b[0] = 0;
                    sign(c.cert.clone(), b.to_vec(), None)
                }
                Class::WrongLength => sign(c.cert.clone(), random::<255>().to_vec(), None),
                Class::AboveModulus => sign(c.cert.clone(), vec![0xff; 256], None),
                Class::BadSignature => sign(
                    c.cert.clone(),
                    good(&random::<32>()),
                    Some(c.d.sign_challenge(b"another transcript")),
                ),
                Class::BadCertificate => sign(other_ca.clone(), good(&random::<32>()), None),
            };
            debug_assert!(CardKeyExchange::decode(&cke).is_ok());
            let t = std::time::Instant::now();
            let a = key_exchange(&app.public, &c, &id, &cke).await;
            let took = t.elapsed().as_secs_f64() * 1e6;
            let bytes = refusal_bytes(&a);
            let first = first.get_or_insert_with(|| bytes.clone());
            assert_eq!(&bytes, first, "{:?} answers differently", CLASSES[k]);
            if block >= warm_up {
                samples[k].push(took);
            }
        }
    }
    assert!(first.is_some_and(|f| f.contains("channel_refused")));
    let report = stats::report(&CLASSES.map(|c| format!("{c:?}")), &samples);
    println!("{}", report.text);
    if n >= 20_000 {
        assert!(
            report.significant.is_empty(),
            "timing differs: {:?}",
            report.significant
        );
    }
}

/// The same method with PKCS#1 v1.5 key transport (`channel.padding =
/// "pkcs1v15"`): a good pre-master, bad padding, 31- and 34-byte
/// plaintexts, a wrong length and a value above the modulus are each
/// answered with a ServerFinished (implicit rejection) of the same shape,
/// and must cost the same time, the good one included.
#[tokio::test]
async fn every_pkcs1_v15_key_exchange_is_one_answer_in_one_time() {
    use rand::seq::SliceRandom;

    use crate::channel::{key_exchange, say_hello};
    use crate::channel_pkcs1::{V15_CLASSES, pkcs1_app, shape, v15_key_exchange};

    let seed = env_u64("KEYWARD_TIMING_SEED").unwrap_or_else(rand::random);
    let n = env_u64("KEYWARD_TIMING_N").unwrap_or(200) as usize;
    let warm_up = 10;
    println!("timing (PKCS#1 v1.5): seed {seed}, {n} key exchanges per class");
    let mut rng = StdRng::seed_from_u64(seed);
    let app = pkcs1_app().await;
    let c = card(&app, 84).await;
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(n); V15_CLASSES.len()];
    let mut first = None;
    for block in 0..warm_up + n {
        let mut order: Vec<usize> = (0..V15_CLASSES.len()).collect();
        order.shuffle(&mut rng);
        for k in order {
            let (hello, id, sh) = say_hello(&app.public, &c).await;
            let (_, cke) = v15_key_exchange(&app, &c, &hello, &sh, V15_CLASSES[k]);
            let t = std::time::Instant::now();
            let a = key_exchange(&app.public, &c, &id, &cke).await;
            let took = t.elapsed().as_secs_f64() * 1e6;
            let s = shape(&a);
            let first = first.get_or_insert_with(|| s.clone());
            assert_eq!(&s, first, "{:?} answers differently", V15_CLASSES[k]);
            if block >= warm_up {
                samples[k].push(took);
            }
        }
    }
    let report = stats::report(&V15_CLASSES.map(|c| format!("{c:?}")), &samples);
    println!("{}", report.text);
    if n >= 20_000 {
        assert!(
            report.significant.is_empty(),
            "timing differs: {:?}",
            report.significant
        );
    }
}

/// The Wilcoxon signed-rank test (normal approximation with the tie
/// correction, two-sided) and the table the timing test prints.
pub(crate) mod stats {
    /// The two-sided p-value that the paired differences `a[i] - b[i]`
    /// are centred on zero.
    pub fn wilcoxon(a: &[f64], b: &[f64]) -> f64 {
        let mut d: Vec<f64> = a
            .iter()
            .zip(b)
            .map(|(x, y)| x - y)
            .filter(|d| *d != 0.0)
            .collect();
        let n = d.len() as f64;
        if d.is_empty() {
            return 1.0;
        }
        d.sort_by(|x, y| x.abs().total_cmp(&y.abs()));
        let (mut w_plus, mut ties, mut i) = (0.0, 0.0, 0);
        while i < d.len() {
            let mut j = i;
            while j + 1 < d.len() && d[j + 1].abs() == d[i].abs() {
                j += 1;
            }
            let t = (j - i + 1) as f64;
            let rank = (i + j) as f64 / 2.0 + 1.0;
            w_plus += d[i..=j].iter().filter(|x| **x > 0.0).count() as f64 * rank;
            ties += t * t * t - t;
            i = j + 1;
        }
        let mean = n * (n + 1.0) / 4.0;
        let var = n * (n + 1.0) * (2.0 * n + 1.0) / 24.0 - ties / 48.0;
        if var <= 0.0 {
            return 1.0;
        }
        let z = (w_plus - mean) / var.sqrt();
        erfc(z.abs() / std::f64::consts::SQRT_2)
    }

    /// erfc with a fractional error below 1.2e-7 (Numerical Recipes'
    /// Chebyshev fit), so small p-values keep their magnitude.
    fn erfc(x: f64) -> f64 {
        let z = x.abs();
        let t = 1.0 / (1.0 + 0.5 * z);
        let poly = [
            -1.265_512_23,
            1.000_023_68,
            0.374_091_96,
            0.096_784_18,
            -0.186_288_06,
            0.278_868_07,
            -1.135_203_98,
            1.488_515_87,
            -0.822_152_23,
            0.170_872_77,
        ];
        let p = poly.iter().rev().fold(0.0, |acc, c| c + t * acc);
        let r = t * (-z * z + p).exp();
        if x >= 0.0 { r } else { 2.0 - r }
    }

    fn median(v: &[f64]) -> f64 {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        let m = v.len() / 2;
        if v.len().is_multiple_of(2) {
            (v[m - 1] + v[m]) / 2.0
        } else {
            v[m]
        }
    }

    pub struct Report {
        pub text: String,
        /// The pairs below the Bonferroni-corrected 0.05.
        pub significant: Vec<(String, String, f64)>,
    }

    pub fn report(names: &[String], samples: &[Vec<f64>]) -> Report {
        use std::fmt::Write;
        let pairs = names.len() * (names.len() - 1) / 2;
        let alpha = 0.05 / pairs as f64;
        let mut text = String::from("class                  n   median µs\n");
        for (name, s) in names.iter().zip(samples) {
            let _ = writeln!(text, "{name:<20} {:>5} {:>10.1}", s.len(), median(s));
        }
        let _ = writeln!(
            text,
            "Wilcoxon signed-rank, {pairs} pairs, Bonferroni threshold {alpha:.2e}:"
        );
        let mut significant = Vec::new();
        for i in 0..names.len() {
            for j in i + 1..names.len() {
                let p = wilcoxon(&samples[i], &samples[j]);
                let mark = if p < alpha { " significant" } else { "" };
                let _ = writeln!(text, "{:<20} {:<20} p = {p:.3e}{mark}", names[i], names[j]);
                if p < alpha {
                    significant.push((names[i].clone(), names[j].clone(), p));
                }
            }
        }
        Report { text, significant }
    }

    #[test]
    fn the_statistic_tells_a_shift_from_noise() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let a: Vec<f64> = (0..2000).map(|_| rng.gen_range(0.0..100.0)).collect();
        let b: Vec<f64> = (0..2000).map(|_| rng.gen_range(0.0..100.0)).collect();
        let shifted: Vec<f64> = b.iter().map(|x| x + 5.0).collect();
        assert!(wilcoxon(&a, &b) > 0.01);
        assert!(wilcoxon(&a, &shifted) < 1e-6);
        // Ten positive differences 1..=10: W+ = 55, mean 27.5, variance
        // 96.25, z = 2.803, two-sided p = 0.00506.
        let p = wilcoxon(&(1..=10).map(f64::from).collect::<Vec<_>>(), &[0.0; 10]);
        assert!((p - 0.005_062).abs() < 1e-5, "{p}");
    }
}
