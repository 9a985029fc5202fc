//! Validated identifiers and texts. Each is built through `parse`, so an invalid value
//! cannot exist past the edge of a service.

use std::fmt;

use crate::violation::{Rule, Violation};

/// Why a raw value was refused; attach the field with [`InvalidValue::at`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

/// A raw value as an error message quotes it: at most 64 characters (an error never echoes
/// a megabyte of input back to the caller, nor into logs).
pub fn quoted(raw: &str) -> String {
    const MAX: usize = 64;
    match raw.char_indices().nth(MAX) {
        None => format!("{raw:?}"),
        Some((cut, _)) => format!("{:?}… ({} characters)", &raw[..cut], raw.chars().count()),
    }
}

impl InvalidValue {
    /// The violation of plain input rules on `field`.
    pub fn at(self, field: impl Into<String>) -> Violation {
        Violation::new(Rule::Input, field, self.0)
    }
}

fn check_token(raw: &str, what: &str, max: usize, extra: &[char]) -> Result<(), InvalidValue> {
    if raw.is_empty() {
        return Err(InvalidValue(format!("{what} is required")));
    }
    if raw.chars().count() > max {
        return Err(InvalidValue(format!("{what} is longer than {max} characters")));
    }
    if let Some(c) = raw.chars().find(|c| !(c.is_ascii_alphanumeric() || extra.contains(c))) {
        return Err(InvalidValue(format!(
            "{what} contains {c:?}; allowed are letters, digits and {}",
            extra.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(" ")
        )));
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:literal, $extra:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Longest accepted value, in characters.
            pub const MAX_LEN: usize = $max;

            /// Validates a raw value.
            pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
                check_token(raw, $what, $max, $extra)?;
                Ok(Self(raw.to_owned()))
            }

            /// The value.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// A business unit id such as `bu-1042`: 1-64 of `[A-Za-z0-9._-]`.
    BusinessUnitId,
    "business unit id",
    64,
    &['.', '_', '-']
);
string_id!(
    /// A client-chosen port change request id (a UUID works): 1-64 of `[A-Za-z0-9._-]`.
    RequestId,
    "request id",
    64,
    &['.', '_', '-']
);
string_id!(
    /// A principal id such as `alice@classics.example`: 1-128 of `[A-Za-z0-9._@+-]`.
    PrincipalId,
    "principal id",
    128,
    &['.', '_', '-', '@', '+']
);

/// A cluster name such as `C14`: an uppercase letter, then 1-15 uppercase letters or digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterName(String);

impl ClusterName {
    /// Validates a raw cluster name.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let ok = (2..=16).contains(&raw.len())
            && raw.starts_with(|c: char| c.is_ascii_uppercase())
            && raw.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
        if ok {
            Ok(Self(raw.to_owned()))
        } else if raw.is_empty() {
            Err(InvalidValue("cluster is required".into()))
        } else {
            Err(InvalidValue(format!(
                "cluster {} is not a cluster name like \"C14\" (an uppercase letter, then uppercase letters or digits, 2-16 in all)",
                quoted(raw)
            )))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The Unicode `Bidi_Control` characters: marks, embeddings, overrides and isolates. In
/// text shown to someone deciding ("Approve: U+202E TCEJER") they reorder what is read.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Free text written by a person (a justification, a reason, a comment): trimmed, 1 to
/// `max` characters, no control characters other than newline and tab, and no
/// bidirectional formatting characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Text(String);

impl Text {
    /// Longest justification or reason, in characters.
    pub const MAX_LEN: usize = 4000;

    /// Validates text of at most [`Text::MAX_LEN`] characters.
    pub fn parse(raw: &str, what: &str) -> Result<Self, InvalidValue> {
        Self::parse_max(raw, what, Self::MAX_LEN)
    }

    /// Validates text of at most `max` characters.
    pub fn parse_max(raw: &str, what: &str, max: usize) -> Result<Self, InvalidValue> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(InvalidValue(format!("{what} is required")));
        }
        if trimmed.chars().count() > max {
            return Err(InvalidValue(format!("{what} is longer than {max} characters")));
        }
        if trimmed.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
            return Err(InvalidValue(format!("{what} contains control characters")));
        }
        if let Some(c) = trimmed.chars().find(|c| is_bidi_control(*c)) {
            return Err(InvalidValue(format!(
                "{what} contains the bidirectional formatting character U+{:04X}, which can make text read differently from what it says",
                u32::from(c)
            )));
        }
        Ok(Self(trimmed.to_owned()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Salesforce-style case number: at least eight digits, zero-padded (`00001027`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CaseNumber(String);

impl CaseNumber {
    /// The case number of the `n`th case (1-based).
    pub fn from_sequence(n: u64) -> Self {
        Self(format!("{n:08}"))
    }

    /// Validates a raw case number.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        if (8..=20).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidValue(format!(
                "case number {} is not 8 or more digits like \"00001027\"",
                quoted(raw)
            )))
        }
    }

    /// The case number.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CaseNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_refuses_controls_and_bidirectional_formatting() {
        assert!(Text::parse("Holiday campaign\n\tline two — ok ✓", "justification").is_ok());
        for bad in [
            "Approve: \u{202E}TCEJER\u{202C}",
            "a\u{2066}b\u{2069}",
            "left\u{200F}",
            "bell\u{7}",
            "c1\u{85}next",
            "nul\u{0}",
        ] {
            let e = Text::parse(bad, "justification").unwrap_err();
            assert!(e.0.starts_with("justification contains"), "{bad:?}: {e}");
        }
        let e = Text::parse("x\u{202E}", "reason").unwrap_err();
        assert!(e.0.contains("U+202E"), "{e}");
    }

    #[test]
    fn errors_quote_at_most_64_characters_of_the_input() {
        assert_eq!(quoted("C1 4"), "\"C1 4\"");
        let long = "é".repeat(1 << 20);
        let shown = quoted(&long);
        assert!(shown.starts_with(&format!("\"{}\"…", "é".repeat(64))), "{shown}");
        assert!(shown.ends_with("(1048576 characters)"), "{shown}");
        let e = CaseNumber::parse(&long).unwrap_err();
        assert!(e.0.len() < 300, "{}", e.0);
    }

    #[test]
    fn ids_accept_the_documented_alphabet_and_length() {
        assert!(BusinessUnitId::parse("bu-1042").is_ok());
        assert!(BusinessUnitId::parse(&"a".repeat(64)).is_ok());
        assert!(BusinessUnitId::parse(&"a".repeat(65)).is_err());
        assert!(BusinessUnitId::parse("").is_err());
        assert!(BusinessUnitId::parse("bu 1").is_err());
        assert!(BusinessUnitId::parse("bu/1").is_err());
        assert!(RequestId::parse("3f2c9a1e-6c1b-4b7a-9d9e-2b1f0c8e7a55").is_ok());
        assert!(PrincipalId::parse("alice@classics.example").is_ok());
        assert!(PrincipalId::parse("alice smith").is_err());
    }

    #[test]
    fn errors_name_the_field() {
        let v = BusinessUnitId::parse("").unwrap_err().at("business_unit_id");
        assert_eq!(v.field, "business_unit_id");
        assert_eq!(v.rule, Rule::Input);
        assert_eq!(v.message, "business unit id is required");
    }

    #[test]
    fn cluster_names_look_like_c14() {
        for ok in ["C14", "E39", "M33", "SO1"] {
            assert!(ClusterName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "c14", "14", "C", "C-14", "C14 "] {
            assert!(ClusterName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn text_is_trimmed_and_bounded() {
        assert_eq!(
            Text::parse("  peak season \n", "justification").unwrap().as_str(),
            "peak season"
        );
        assert!(Text::parse("   ", "justification").is_err());
        assert!(Text::parse(&"x".repeat(4000), "justification").is_ok());
        assert!(Text::parse(&"x".repeat(4001), "justification").is_err());
        assert!(Text::parse("line\u{0}", "justification").is_err());
        assert!(Text::parse("two\nlines\tok", "justification").is_ok());
    }

    #[test]
    fn case_numbers_are_zero_padded_like_salesforce() {
        assert_eq!(CaseNumber::from_sequence(1027).as_str(), "00001027");
        assert_eq!(CaseNumber::from_sequence(123_456_789).as_str(), "123456789");
        assert!(CaseNumber::parse("00001027").is_ok());
        assert!(CaseNumber::parse("1027").is_err());
        assert!(CaseNumber::parse("0000102a").is_err());
    }
}
