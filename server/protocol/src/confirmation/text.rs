//! What text a customer may be shown: the characters refused outright, and
//! the payee names that get a warning (or a refusal) because they could be
//! taken for another.

use unicode_normalization::is_nfc;
use unicode_properties::{GeneralCategory as G, UnicodeGeneralCategory};
use unicode_security::{RestrictionLevel, RestrictionLevelDetection};

use crate::ProtocolError;

/// What the bank does with a payee name that [`PayeeCheck`] flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayeePolicy {
    /// Accept it; the message carries a visible warning.
    Flag,
    /// Refuse the transaction (`payee_confusable`).
    Refuse,
}

/// The verdict on a payee name (Unicode Technical Standard #39).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayeeCheck {
    /// Nothing to warn about.
    Plain,
    /// Letters of scripts that are not normally written together, such as
    /// Latin with Cyrillic or Greek (`Аcme` with a Cyrillic `А`): above UTS
    /// #39's "moderately restrictive" level, or a letter UTS #39 does not
    /// allow in identifiers (mathematical `𝐀`, for one).
    MixedScript,
    /// Not one of the bank's known payees, but has the same skeleton as one
    /// (`РayPal` in Cyrillic looks like `PayPal`).
    LooksLikeKnownPayee,
}

/// The UTS #39 skeleton of `s`: two strings a reader could take for each
/// other have the same skeleton (`paypal` and `pаypаl` with Cyrillic `а`).
/// Compare skeletons, never show them.
pub fn skeleton(s: &str) -> String {
    unicode_security::skeleton(s).collect()
}

/// Checks a payee name that [`check`] already accepted.
pub(crate) fn check_payee(name: &str, known: &[String]) -> PayeeCheck {
    // Only letters and digits carry a script; spaces and punctuation are
    // common to all and would make every name "unrestricted".
    let letters: String = name.chars().filter(|c| c.is_alphanumeric()).collect();
    if letters.as_str().detect_restriction_level() > RestrictionLevel::ModeratelyRestrictive {
        return PayeeCheck::MixedScript;
    }
    let s = skeleton(name);
    if known.iter().any(|k| k != name && skeleton(k) == s) {
        return PayeeCheck::LooksLikeKnownPayee;
    }
    PayeeCheck::Plain
}

/// Free text the customer will read (payee name, reference): 1 to
/// `max_chars` characters, no forbidden character ([`forbidden`]), no
/// leading or trailing space, and in Unicode normalization form C.
///
/// NFC is required, not applied: the device signs the bytes as sent, so the
/// server cannot normalise them, and a decomposed `é` (`e` + U+0301) looks
/// the same as the composed one while comparing, hashing and counting
/// differently. Requiring one form makes the parsed name the one a bank
/// compares with its payee lists, and closes the trick of stacking combining
/// marks that NFC would have composed.
pub(crate) fn check(s: &str, field: &'static str, max_chars: usize) -> Result<(), ProtocolError> {
    if s.chars().count() > max_chars {
        return Err(ProtocolError::FieldTooLong {
            field,
            max: max_chars,
        });
    }
    if let Some(c) = s.chars().find(|&c| forbidden(c)) {
        return Err(ProtocolError::ForbiddenCharacter {
            field,
            code_point: u32::from(c),
        });
    }
    if s.is_empty() || s.trim() != s {
        return Err(ProtocolError::FieldInvalid(field));
    }
    if !is_nfc(s) {
        return Err(ProtocolError::NotNfc(field));
    }
    Ok(())
}

/// Characters that can make a message show something other than what was
/// sent: every space but U+0020 (a no-break or ideographic space hides a
/// double space), and the [`invisible`] ones.
pub(crate) fn forbidden(c: char) -> bool {
    (c.general_category() == G::SpaceSeparator && c != ' ') || invisible(c)
}

/// Characters that render as nothing or reorder what is shown: controls (Cc:
/// new lines would let a reference forge lines of a message), format
/// characters (Cf: bidi embeddings, overrides, isolates and marks
/// U+202A–202E, U+2066–2069, U+200E/200F, U+061C, which reorder the digits a
/// reader sees; zero-width spaces and joiners; the BOM; soft hyphen), line
/// and paragraph separators, private-use, surrogate and unassigned code
/// points, and the default-ignorable characters that are not Cf (combining
/// grapheme joiner, Hangul fillers, variation selectors). The one rule for
/// names shown to people, here and in the CA's names.
pub fn invisible(c: char) -> bool {
    matches!(
        c.general_category(),
        G::Control
            | G::Format
            | G::LineSeparator
            | G::ParagraphSeparator
            | G::PrivateUse
            | G::Surrogate
            | G::Unassigned
    ) || matches!(
        c,
        '\u{034F}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FFA0}'
            | '\u{E0100}'..='\u{E01EF}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidi_zero_width_and_controls_are_forbidden() {
        let bidi = ('\u{202A}'..='\u{202E}')
            .chain('\u{2066}'..='\u{2069}')
            .chain(['\u{200E}', '\u{200F}', '\u{061C}']);
        let invisible = [
            '\u{200B}', '\u{200C}', '\u{200D}', '\u{2060}', '\u{FEFF}', '\u{00AD}', '\u{180E}',
            '\u{034F}', '\u{FE0F}', '\u{3164}',
        ];
        let spaces_and_controls = [
            '\u{00A0}', '\u{3000}', '\u{2028}', '\u{2029}', '\n', '\r', '\t', '\0', '\u{7F}',
            '\u{85}', '\u{E000}',
        ];
        for c in bidi.chain(invisible).chain(spaces_and_controls) {
            assert!(forbidden(c), "U+{:04X}", u32::from(c));
            let err = check(&format!("ACME{c}GmbH"), "payee_name", 70);
            assert_eq!(err.map_err(|e| e.code()), Err("text_forbidden_character"));
        }
        for c in ['A', 'é', 'Ж', '张', ' ', '-', '&', '€', '𠮷'] {
            assert!(!forbidden(c), "{c}");
        }
    }

    #[test]
    fn text_rules() {
        let code = |s: &str| check(s, "payee_name", 10).map_err(|e| e.code());
        assert_eq!(code("ACME GmbH"), Ok(()));
        assert_eq!(code("Zhang Wei"), Ok(()));
        assert_eq!(code("张伟"), Ok(()));
        assert_eq!(code(""), Err("field_invalid"));
        assert_eq!(code(" ACME"), Err("field_invalid"));
        assert_eq!(code("ACME "), Err("field_invalid"));
        assert_eq!(code("ACME GmbH 1"), Err("field_too_long"));
        assert_eq!(code("Cafe\u{301}"), Err("text_not_nfc"));
        assert_eq!(code("Caf\u{e9}"), Ok(()));
        // A character counts once, whatever its UTF-8 length.
        assert_eq!(code("张张张张张张张张张张"), Ok(()));
    }

    #[test]
    fn payee_names_that_mix_scripts_or_look_like_known_ones_are_flagged() {
        let known = ["PayPal".to_owned(), "ACME GmbH".to_owned()];
        let v = |s: &str| check_payee(s, &known);
        assert_eq!(v("ACME GmbH"), PayeeCheck::Plain);
        assert_eq!(v("Müller & Söhne AG"), PayeeCheck::Plain);
        assert_eq!(v("ООО Ромашка"), PayeeCheck::Plain);
        assert_eq!(v("北京科技有限公司"), PayeeCheck::Plain);
        // Han with Latin is a combination UTS #39 allows.
        assert_eq!(v("张伟 Zhang Wei"), PayeeCheck::Plain);
        // Cyrillic А (U+0410) in a Latin name.
        assert_eq!(v("\u{410}CME GmbH"), PayeeCheck::MixedScript);
        // Greek omicron.
        assert_eq!(v("G\u{3bf}ogle"), PayeeCheck::MixedScript);
        // Mathematical bold A: not allowed in identifiers.
        assert_eq!(v("\u{1D400}CME"), PayeeCheck::MixedScript);
        // All Cyrillic, one script, yet it reads PayPal.
        assert_eq!(
            v("\u{420}\u{430}\u{443}\u{420}\u{430}\u{04CF}"),
            PayeeCheck::LooksLikeKnownPayee
        );
        // Digit one and letter l.
        assert_eq!(v("PayPa1"), PayeeCheck::LooksLikeKnownPayee);
        assert_eq!(v("PayPal"), PayeeCheck::Plain);
        assert_eq!(skeleton("p\u{430}yp\u{430}l"), skeleton("paypal"));
        assert_ne!(skeleton("paypal"), skeleton("paybal"));
    }
}
