//! The malicious terminal: the terminal relays the card's records but
//! alters them at random — a bit flipped in the header, the length, the
//! ciphertext or the tag; a record dropped, duplicated, reordered, spliced
//! from another channel, truncated or extended. Every mutation is refused,
//! its channel is closed (the card's intact record that follows is refused
//! too), and the closing is audited before the answer; the other terminal's
//! channel lives on.
//!
//! Seeded: the seed is printed, `KEYWARD_ATTACK_SEED` replays it (the same
//! mutations; keys and randoms differ) and `KEYWARD_ATTACK_MUTATIONS` sets
//! how many (1,000 by default; ops/README.md has the long form).

use std::collections::BTreeMap;

use axum::http::StatusCode;
use keyward_protocol::channel::{HEADER_LEN, Record, TAG_LEN};
use keyward_tests::channel::Channel;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::channel::{Card, PING, card, open, ping, send};
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

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The card's next record as the test chooses it: mostly data, sometimes a
/// key update or the close.
fn next_record(rng: &mut StdRng, ch: &mut Channel) -> Vec<u8> {
    match rng.gen_range(0..10) {
        0 => ch.update_key().unwrap(),
        1 => ch.close().unwrap(),
        _ => ch.seal(PING).unwrap().remove(0),
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
                .map(|_| ch.seal(PING).unwrap().remove(0))
                .collect();
            let later = rs.pop().unwrap();
            (rs.pop().unwrap(), later)
        }
        Mutation::Duplicate => {
            let r = ch.seal(PING).unwrap().remove(0);
            send(&app.public, c, &r).await.expect(StatusCode::OK);
            let later = ch.seal(PING).unwrap().remove(0);
            (r, later)
        }
        Mutation::Reorder => {
            let first = ch.seal(PING).unwrap().remove(0);
            let second = ch.seal(PING).unwrap().remove(0);
            (second, first)
        }
        Mutation::Splice => {
            let r = next_record(rng, ch);
            let own = Record::decode(&r).unwrap();
            // The other channel's record of the same number.
            let mut other = donor.clone();
            let mut theirs = Record::decode(&other.seal(PING).unwrap().remove(0)).unwrap();
            while theirs.sequence < own.sequence {
                theirs = Record::decode(&other.seal(PING).unwrap().remove(0)).unwrap();
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

fn is_refusal(a: &Answer) -> bool {
    (a.status == StatusCode::FORBIDDEN && a.code() == "channel_closed")
        || (a.status == StatusCode::BAD_REQUEST && a.code() == "channel_malformed")
}

#[tokio::test]
async fn a_malicious_terminal_is_refused_every_time_and_closes_the_channel() {
    let seed = env_u64("KEYWARD_ATTACK_SEED").unwrap_or_else(rand::random);
    let n = env_u64("KEYWARD_ATTACK_MUTATIONS").unwrap_or(1_000);
    println!("malicious terminal: seed {seed}, {n} mutations (KEYWARD_ATTACK_SEED={seed} replays)");
    let mut rng = StdRng::seed_from_u64(seed);
    let app = App::new().await;
    let c = card(&app, 81).await;
    // Another card behind another terminal: its channel donates the
    // spliced ciphertexts and must outlive every refusal.
    let other = card(&app, 82).await;
    let mut donor = open(&app, &app.public, &app.public, &other).await;
    let started = std::time::Instant::now();
    let mut seen = BTreeMap::<Mutation, u64>::new();
    for i in 0..n {
        let m = MUTATIONS[rng.gen_range(0..MUTATIONS.len())];
        let at = format!("mutation {i} ({m:?}), seed {seed}");
        let mut ch = open(&app, &app.public, &app.public, &c).await;
        // Sometimes intact records first, so the sequence is not always 0.
        for _ in 0..rng.gen_range(0..=2) {
            if rng.gen_bool(0.5) {
                ping(&app.public, &c, &mut ch).await;
            }
        }
        let (bad, later) = mutate(&mut rng, m, &c, &app, &mut ch, &donor).await;
        let a = send(&app.public, &c, &bad).await;
        assert!(is_refusal(&a), "{at}: not refused: {} {}", a.status, a.text);
        let a = send(&app.public, &c, &later).await;
        assert!(
            a.status == StatusCode::FORBIDDEN && a.code() == "channel_closed",
            "{at}: the channel took a record after the refusal: {} {}",
            a.status,
            a.text
        );
        // The closing is in the trail, refused, for this channel.
        let target = format!("channel:{}", ch.id);
        let trail = app.state.audit.recent(8).await.unwrap();
        assert!(
            trail.iter().any(|r| r.action == "channel.close"
                && r.outcome == "refused"
                && r.target == target),
            "{at}: the closing is not audited"
        );
        *seen.entry(m).or_default() += 1;
    }
    println!(
        "malicious terminal: {n} mutations refused in {:.1} s: {seen:?}",
        started.elapsed().as_secs_f64()
    );
    // The other terminal's channel was never touched.
    ping(&app.public, &other, &mut donor).await;
}
