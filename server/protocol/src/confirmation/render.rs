//! The second-channel message, built from the parsed transaction only.

use std::fmt;

use sha2::{Digest, Sha256};

use super::{Code, PayeeCheck, Received};
use crate::ProtocolError;

/// The bank's host name, for the message's last line
/// (`@bank.example #12345678`, the WICG one-time-code format): a phone
/// offers to fill the code in only on that origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin(String);

impl Origin {
    /// A lower-case ASCII host name: labels of `a-z`, `0-9` and `-` (not
    /// first or last), joined by `.`; at most 253 characters. An
    /// internationalised name is given in its `xn--` form.
    pub fn new(host: &str) -> Result<Origin, ProtocolError> {
        let label_ok = |l: &str| {
            (1..=63).contains(&l.len())
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if host.len() <= 253 && host.split('.').all(label_ok) {
            Ok(Origin(host.to_owned()))
        } else {
            Err(ProtocolError::OriginInvalid)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The alphabet an SMS needs for a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmsEncoding {
    /// GSM 03.38 default alphabet (extension characters take two septets):
    /// 160 septets in one segment, 153 per segment of a longer message.
    Gsm7,
    /// UCS-2 (UTF-16 on handsets): 70 code units in one segment, 67 per
    /// segment of a longer message.
    Ucs2,
}

impl SmsEncoding {
    pub(super) fn single(self) -> usize {
        match self {
            SmsEncoding::Gsm7 => 160,
            SmsEncoding::Ucs2 => 70,
        }
    }

    pub(super) fn multi(self) -> usize {
        match self {
            SmsEncoding::Gsm7 => 153,
            SmsEncoding::Ucs2 => 67,
        }
    }
}

/// A message ready for the second channel.
#[derive(Clone, PartialEq, Eq)]
pub struct Rendered {
    text: String,
    encoding: SmsEncoding,
    segments: usize,
    reference_cut: bool,
}

/// The text holds the code and personal data: Debug shows its shape only.
impl fmt::Debug for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rendered")
            .field("encoding", &self.encoding)
            .field("segments", &self.segments)
            .field("reference_cut", &self.reference_cut)
            .finish_non_exhaustive()
    }
}

impl Rendered {
    /// The message, lines separated by `\n`. It contains the code.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn encoding(&self) -> SmsEncoding {
        self.encoding
    }

    /// SMS segments the text takes (a character is never split between
    /// two segments).
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// Whether the reference was shortened (or left out) to fit.
    pub fn reference_cut(&self) -> bool {
        self.reference_cut
    }

    /// SHA-256 of the text's UTF-8 bytes: what an evidence receipt names as
    /// the message shown.
    pub fn sha256(&self) -> [u8; 32] {
        Sha256::digest(self.text.as_bytes()).into()
    }
}

/// The warning line of a flagged payee, and the mark before the first line.
const WARNING_MARK: &str = "(!) ";
const WARNING_LINE: &str = "(!) Check the payee name: it has look-alike letters";
const CUT_MARK: &str = "...";

/// The second-channel message for a received transaction, built from its
/// parsed fields only (never from client text as such), in this order:
///
/// ```text
/// Pay EUR 1234.56 to ACME GmbH (DE89..3000)
/// Code 20481735
/// To DE89370400440532013000 from DE02..2051
/// Ref Invoice 2026-117
/// @bank.example #20481735
/// ```
///
/// The first two lines (amount, payee name, the payee account's first and
/// last four characters, the code) always lie inside the first SMS segment:
/// [`Transaction::parse`](super::Transaction::parse) refuses a transaction
/// whose first lines could not (`payee_line_too_long`). The third line gives
/// the payee's whole account and the payer's shortened. A flagged payee
/// ([`PayeeCheck`]) gets `(!) ` before the first line and a warning line
/// after the accounts line. Amounts have the currency's decimals, a `.` and no
/// thousands separator. Only the reference is ever cut (ending in `...`,
/// or left out): as much of it as keeps the first lines in the first
/// segment (one character outside GSM 03.38 turns the whole message into
/// UCS-2 and halves the segment) and the message within the rules'
/// `sms_max_segments`. The last line binds the code to the bank's origin.
pub fn render(received: &Received, code: &Code, origin: &Origin) -> Rendered {
    let head = head(received, code);
    let tx = received.transaction();
    let mut body = format!(
        "To {} from {}\n",
        tx.payee_account,
        short_account(&tx.payer_account)
    );
    if received.payee_check() != PayeeCheck::Plain {
        body.push_str(WARNING_LINE);
        body.push('\n');
    }
    let last = format!("@{} #{}", origin.as_str(), code.as_str());
    let reference: Vec<char> = tx.reference.as_deref().unwrap_or("").chars().collect();

    let compose = |keep: usize| {
        let mut text = format!("{head}\n{body}");
        if keep > 0 {
            text.push_str("Ref ");
            text.extend(&reference[..keep]);
            if keep < reference.len() {
                text.push_str(CUT_MARK);
            }
            text.push('\n');
        }
        text.push_str(&last);
        text
    };
    // Longest reference first (never more than the allowed segments could
    // hold); with none at all the head fits (checked at parse), so the loop
    // always ends with a message.
    let most = received.sms_max_segments() * SmsEncoding::Gsm7.single();
    let mut keep = reference.len().min(most);
    loop {
        let text = compose(keep);
        let (encoding, segments, head_fits) = measure(&text, head.chars().count());
        if keep == 0 || (head_fits && segments <= received.sms_max_segments()) {
            return Rendered {
                text,
                encoding,
                segments,
                reference_cut: keep < reference.len(),
            };
        }
        keep -= 1;
    }
}

/// The first lines: what must be in the first segment.
fn head(received: &Received, code: &Code) -> String {
    let tx = received.transaction();
    let mark = if received.payee_check() == PayeeCheck::Plain {
        ""
    } else {
        WARNING_MARK
    };
    format!(
        "{mark}Pay {} {} to {} ({})\nCode {}",
        tx.currency.code(),
        tx.amount.format(tx.currency.exponent()),
        tx.payee_name,
        short_account(&tx.payee_account),
        code.as_str(),
    )
}

/// An account of more than 10 characters as its first and last four
/// (`DE89..3000`); a shorter one whole.
fn short_account(account: &str) -> String {
    // Accounts are ASCII (checked at parse), so byte indices are characters.
    if account.len() <= 10 || !account.is_ascii() {
        account.to_owned()
    } else {
        format!("{}..{}", &account[..4], &account[account.len() - 4..])
    }
}

/// Refuses a transaction whose head cannot lie in the first segment, with
/// any code: the head alone decides its alphabet, and the rest of the
/// message (ASCII lines and a reference [`render`] cuts) never makes the
/// first segment smaller than a segment of a longer message.
pub(crate) fn check_first_segment(received: &Received) -> Result<(), ProtocolError> {
    let head = head(received, &Code([b'0'; Code::DIGITS]));
    let (encoding, units) = units(&head);
    if units <= encoding.multi() {
        Ok(())
    } else {
        Err(ProtocolError::PayeeLineTooLong)
    }
}

/// The text's alphabet, its segment count, and whether its first
/// `head_chars` characters lie inside the first segment.
fn measure(text: &str, head_chars: usize) -> (SmsEncoding, usize, bool) {
    let (encoding, total) = units(text);
    if total <= encoding.single() {
        return (encoding, 1, true);
    }
    let cap = encoding.multi();
    let (mut segments, mut used, mut head_fits) = (1, 0, true);
    for (i, c) in text.chars().enumerate() {
        let u = char_units(c, encoding);
        if used + u > cap {
            segments += 1;
            used = 0;
            if i < head_chars {
                head_fits = false;
            }
        }
        used += u;
    }
    (encoding, segments, head_fits)
}

/// The alphabet the text needs and its length in that alphabet's units.
pub(super) fn units(text: &str) -> (SmsEncoding, usize) {
    let encoding = if text.chars().all(|c| gsm7_septets(c).is_some()) {
        SmsEncoding::Gsm7
    } else {
        SmsEncoding::Ucs2
    };
    (
        encoding,
        text.chars().map(|c| char_units(c, encoding)).sum(),
    )
}

fn char_units(c: char, encoding: SmsEncoding) -> usize {
    match encoding {
        SmsEncoding::Gsm7 => gsm7_septets(c).unwrap_or(2),
        SmsEncoding::Ucs2 => c.len_utf16(),
    }
}

/// GSM 03.38 default alphabet, in table order (127 characters: the 128th
/// position is the escape to the extension table).
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
                          ¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// GSM 03.38 extension table (each sent as escape + character).
const GSM7_EXTENSION: &str = "\u{c}^{}\\[~]|€";

/// GSM 03.38 default alphabet: 1 septet; its extension table (escape +
/// character): 2; outside both: `None`.
fn gsm7_septets(c: char) -> Option<usize> {
    if GSM7_BASIC.contains(c) {
        Some(1)
    } else if GSM7_EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm7_alphabet() {
        assert_eq!(GSM7_BASIC.chars().count(), 127);
        assert_eq!(GSM7_EXTENSION.chars().count(), 10);
        assert_eq!(units("Pay EUR 1.00"), (SmsEncoding::Gsm7, 12));
        assert_eq!(units("€[]"), (SmsEncoding::Gsm7, 6));
        assert_eq!(units("Łódź"), (SmsEncoding::Ucs2, 4));
        assert_eq!(units("𠮷"), (SmsEncoding::Ucs2, 2));
        // ç (lower case) is not in the default alphabet; Ç is.
        assert_eq!(units("Ç").0, SmsEncoding::Gsm7);
        assert_eq!(units("ç").0, SmsEncoding::Ucs2);
    }

    #[test]
    fn segments_never_split_a_character() {
        let one = "a".repeat(160);
        assert_eq!(measure(&one, 0), (SmsEncoding::Gsm7, 1, true));
        let two = "a".repeat(161);
        assert_eq!(measure(&two, 153), (SmsEncoding::Gsm7, 2, true));
        assert_eq!(measure(&two, 154), (SmsEncoding::Gsm7, 2, false));
        // 152 septets, then a two-septet `€` that goes whole to segment 2.
        let euro = format!("{}€{}", "a".repeat(152), "a".repeat(10));
        assert_eq!(measure(&euro, 153), (SmsEncoding::Gsm7, 2, false));
        assert_eq!(measure(&"ж".repeat(70), 70), (SmsEncoding::Ucs2, 1, true));
        assert_eq!(measure(&"ж".repeat(135), 67), (SmsEncoding::Ucs2, 3, true));
    }

    #[test]
    fn origins() {
        assert!(Origin::new("bank.example").is_ok());
        assert!(Origin::new("xn--bcher-kva.example").is_ok());
        for bad in [
            "",
            "Bank.example",
            "bank..example",
            "-bank.example",
            "bank.example.",
            "bänk.example",
            "bank example",
            "bank.example #1",
        ] {
            assert_eq!(Origin::new(bad), Err(ProtocolError::OriginInvalid), "{bad}");
        }
    }

    #[test]
    fn short_accounts() {
        assert_eq!(short_account("DE89370400440532013000"), "DE89..3000");
        assert_eq!(short_account("1234567890"), "1234567890");
    }
}
