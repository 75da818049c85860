//! Names and identifiers typed by people, in the one form they are stored
//! and compared in, and the look-alike rules of Unicode UTS #39 that keep
//! one person (or one national id) from passing for two:
//!
//! - [`normal_name`]: NFKC, no invisible characters;
//! - [`person_name`]: that, and not mixed-script (`аlice` with a Cyrillic
//!   `а` is refused; Latin with Han, Kana or Hangul is allowed);
//! - [`skeleton`]: the confusable skeleton maker-checker compares, so a
//!   whole-script look-alike (`соре` in Cyrillic for `cope`) is the same
//!   person;
//! - [`decimal_digit`]: the value of a digit of any script, so `١٢٣` is
//!   `123`.

use keyward_protocol::invisible;
use unicode_normalization::UnicodeNormalization;
use unicode_security::mixed_script::AugmentedScriptSet;

/// A name or identifier typed by a person, in the one form it is compared
/// in: NFKC (fullwidth `ａｌｉｃｅ` and `１２３` become `alice` and `123`),
/// 1 to `max_chars` characters, no leading or trailing space, and none of the
/// characters that make two different strings look the same ([`invisible`]).
/// `None` when `s` cannot be such a name.
pub fn normal_name(s: &str, max_chars: usize) -> Option<String> {
    if s.chars().any(invisible) {
        return None;
    }
    let n: String = s.nfkc().collect();
    let count = n.chars().count();
    let ok = (1..=max_chars).contains(&count) && n.trim() == n && !n.chars().any(invisible);
    ok.then_some(n)
}

/// The name of a person (an operator's certificate CN, a customer's name):
/// [`normal_name`] and not [`mixed_script`].
pub fn person_name(s: &str, max_chars: usize) -> Option<String> {
    normal_name(s, max_chars).filter(|n| !mixed_script(n))
}

/// Whether `s` mixes scripts beyond UTS #39's "highly restrictive" level:
/// its letters are not all of one script, and not Latin with Han, Kana or
/// Hangul (as in `Zhang Wei 张伟`). Digits, spaces and punctuation belong to
/// every script.
pub fn mixed_script(s: &str) -> bool {
    let latin = AugmentedScriptSet::for_char('a');
    let mut all = AugmentedScriptSet::default();
    let mut not_latin = AugmentedScriptSet::default();
    for c in s.chars() {
        let set = AugmentedScriptSet::for_char(c);
        all.intersect_with(set);
        let mut with_latin = set;
        with_latin.intersect_with(latin);
        if with_latin.base.is_empty() {
            not_latin.intersect_with(set);
        }
    }
    all.is_empty() && !(not_latin.hanb || not_latin.jpan || not_latin.kore)
}

/// Whether `s` is in a script written without spaces between words (Han,
/// Kana, Hangul): a name in it is found inside a longer word.
pub fn written_without_spaces(s: &str) -> bool {
    let set = AugmentedScriptSet::for_str(s);
    !set.is_all() && (set.hanb || set.jpan || set.kore)
}

/// The UTS #39 confusable skeleton of `s` in lower case: two names with
/// one skeleton look the same (`alice` and `аlice`, `cope` and Cyrillic
/// `соре`, `rn` and `m`), so maker-checker takes them for one person.
pub fn skeleton(s: &str) -> String {
    let lower = s.nfkc().collect::<String>().to_lowercase();
    unicode_security::skeleton(&lower).collect()
}

/// Whether `c`, not an ASCII character, looks like an ASCII letter or
/// digit (its UTS #39 skeleton is one): Cyrillic `Х` or Greek `Χ` for `X`.
pub fn looks_ascii(c: char) -> bool {
    !c.is_ascii()
        && unicode_security::skeleton(c.encode_utf8(&mut [0; 4])).all(|k| k.is_ascii_alphanumeric())
}

/// The value of a decimal digit of any script (`7`, Arabic-Indic `٧`,
/// Devanagari `७`), or `None`. Unicode encodes every script's digits as one
/// run `0..=9`, so the value is the distance from the start of the run.
pub fn decimal_digit(c: char) -> Option<u32> {
    use unicode_properties::{GeneralCategory as G, UnicodeGeneralCategory};
    if c.is_ascii_digit() {
        return c.to_digit(10);
    }
    if c.general_category() != G::DecimalNumber {
        return None;
    }
    let mut first = c as u32;
    while let Some(p) = first.checked_sub(1).and_then(char::from_u32) {
        if p.general_category() != G::DecimalNumber {
            break;
        }
        first -= 1;
    }
    Some((c as u32 - first) % 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_scripts_are_refused_cjk_with_latin_is_not() {
        for ok in [
            "alice",
            "Li Lei",
            "Zhang Wei 张伟",
            "Сергей Петров",
            "山田 太郎 Yamada",
            "O'Brien-Smith 2",
        ] {
            assert_eq!(person_name(ok, 64).as_deref(), Some(ok), "{ok:?}");
        }
        // A Cyrillic а, е or і in a Latin name; Greek ο in a Latin name.
        for bad in ["\u{430}lice", "alic\u{435}", "al\u{456}ce", "b\u{3bf}b"] {
            assert!(mixed_script(bad), "{bad:?}");
            assert_eq!(person_name(bad, 64), None, "{bad:?}");
        }
        assert_eq!(person_name("alice\u{200B}", 64), None);
    }

    #[test]
    fn look_alikes_share_a_skeleton() {
        let alice = skeleton("alice");
        for same in ["\u{430}lice", "alic\u{435}", "ａｌｉｃｅ", "Alice", "ALICE"] {
            assert_eq!(skeleton(same), alice, "{same:?}");
        }
        // Whole-script Cyrillic `соре` passes the mixed-script rule; its
        // skeleton is still `cope`'s.
        assert!(!mixed_script("\u{441}\u{43e}\u{440}\u{435}"));
        assert_eq!(skeleton("\u{441}\u{43e}\u{440}\u{435}"), skeleton("cope"));
        assert_eq!(skeleton("rnary"), skeleton("mary"));
        assert_ne!(skeleton("alice"), skeleton("bob"));
        assert!(written_without_spaces("\u{5f20}\u{4f1f}"));
        assert!(!written_without_spaces("Han"));
        assert!(!written_without_spaces("123"));
        for c in ['\u{425}', '\u{445}', '\u{3A7}', '\u{41E}'] {
            assert!(looks_ascii(c), "{c:?}");
        }
        assert!(!looks_ascii('X') && !looks_ascii('\u{416}'));
    }

    #[test]
    fn digits_of_every_script_have_their_value() {
        for (c, v) in [
            ('0', 0),
            ('9', 9),
            ('\u{660}', 0),
            ('\u{663}', 3),
            ('\u{6F9}', 9),
            ('\u{967}', 1),
            ('\u{FF15}', 5),
            ('\u{1D7D9}', 1),
        ] {
            assert_eq!(decimal_digit(c), Some(v), "{c:?}");
        }
        for c in ['X', 'Х', '½', '²', '-'] {
            assert_eq!(decimal_digit(c), None, "{c:?}");
        }
    }
}
