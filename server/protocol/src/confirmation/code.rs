//! The one-time code: 8 decimal digits, drawn without modulo bias.

use std::fmt;

use subtle::ConstantTimeEq;

use crate::ProtocolError;

/// An 8-digit one-time code. Its `Debug` is redacted and it has no
/// `Display`; equality is constant-time.
#[derive(Clone)]
pub struct Code(pub(super) [u8; Code::DIGITS]);

impl Code {
    /// Digits in a code.
    pub const DIGITS: usize = 8;

    /// Codes in the space: 10^8.
    const SPACE: u32 = 100_000_000;

    /// Candidates at or above this bound are rejected: 42 × 10^8, the
    /// largest multiple of 10^8 not above 2^32. Below it each code is the
    /// remainder of exactly 42 candidates, so a uniform candidate gives a
    /// uniform code.
    pub const CANDIDATE_BOUND: u32 = 42 * Code::SPACE;

    /// Random bytes to ask the HSM for: four candidates. Each candidate is
    /// rejected with probability (2^32 − 42·10^8) / 2^32 ≈ 2.21 %, so a
    /// draw takes 1.023 candidates on average, and all four are rejected
    /// with probability ≈ 2.4·10^-7 (then [`from_random`](Self::from_random)
    /// answers `None` and the caller draws again).
    pub const RANDOM_BYTES: usize = 16;

    /// The code from uniformly random 32-bit candidates: the first below
    /// [`CANDIDATE_BOUND`](Self::CANDIDATE_BOUND), reduced modulo 10^8
    /// (rejection sampling). `None` when every candidate was rejected.
    pub fn from_u32_candidates(candidates: impl IntoIterator<Item = u32>) -> Option<Code> {
        let c = candidates
            .into_iter()
            .find(|&c| c < Self::CANDIDATE_BOUND)?;
        let mut n = c % Self::SPACE;
        let mut digits = [b'0'; Self::DIGITS];
        for d in digits.iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
        Some(Code(digits))
    }

    /// The code from random bytes (HSM RNG): each whole 4 bytes, big-endian,
    /// is a candidate for [`from_u32_candidates`](Self::from_u32_candidates);
    /// bytes past the last whole 4 are unused. `None`: draw more bytes.
    pub fn from_random(bytes: &[u8]) -> Option<Code> {
        Self::from_u32_candidates(
            bytes
                .chunks_exact(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])),
        )
    }

    /// A code as a device sends it: exactly 8 ASCII digits.
    pub fn parse(s: &str) -> Result<Code, ProtocolError> {
        let digits: [u8; Self::DIGITS] = s
            .as_bytes()
            .try_into()
            .map_err(|_| ProtocolError::CodeMalformed)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(ProtocolError::CodeMalformed);
        }
        Ok(Code(digits))
    }

    /// The 8 ASCII digits, as signed in `tx || code`.
    pub fn as_bytes(&self) -> &[u8; Self::DIGITS] {
        &self.0
    }

    /// The digits as text, for the message to the customer (and nowhere
    /// else: never a log, error or answer).
    pub fn as_str(&self) -> &str {
        // Only ASCII digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl PartialEq for Code {
    fn eq(&self, other: &Code) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for Code {}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Code(********)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_the_largest_multiple_of_the_space() {
        let bound = u64::from(Code::CANDIDATE_BOUND);
        assert_eq!(bound % u64::from(Code::SPACE), 0);
        assert!(bound <= 1 << 32);
        assert!(bound + u64::from(Code::SPACE) > 1 << 32);
    }

    #[test]
    fn candidates_at_or_above_the_bound_are_never_used() {
        let c =
            |v: &[u32]| Code::from_u32_candidates(v.iter().copied()).map(|c| c.as_str().to_owned());
        assert_eq!(c(&[Code::CANDIDATE_BOUND, 7]).as_deref(), Some("00000007"));
        assert_eq!(
            c(&[u32::MAX, Code::CANDIDATE_BOUND - 1]).as_deref(),
            Some("99999999")
        );
        assert_eq!(c(&[Code::CANDIDATE_BOUND, u32::MAX]), None);
        assert_eq!(c(&[]), None);
        assert_eq!(c(&[123_456_789]).as_deref(), Some("23456789"));
    }

    #[test]
    fn from_random_reads_big_endian_words() {
        let code = Code::from_random(&[0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x01, 0x00, 0xAA]);
        assert_eq!(code.as_ref().map(Code::as_str), Some("00000256"));
        assert!(Code::from_random(&[1, 2, 3]).is_none());
    }

    #[test]
    fn parse_takes_exactly_eight_ascii_digits() {
        assert!(Code::parse("01234567").is_ok());
        for bad in [
            "1234567",
            "123456789",
            "1234567a",
            " 1234567",
            "１２３４５６７８",
            "-1234567",
            "",
        ] {
            assert_eq!(
                Code::parse(bad).map(|_| ()),
                Err(ProtocolError::CodeMalformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn debug_is_redacted_and_equality_compares_digits() {
        let (a, b) = (Code::parse("12345678"), Code::parse("12345679"));
        assert_eq!(format!("{a:?}"), "Ok(Code(********))");
        assert!(a == Code::parse("12345678"));
        assert!(a != b);
        assert_eq!(a.map(|c| *c.as_bytes()), Ok(*b"12345678"));
    }
}
