//! Names of the files in a store's directory (STORE.md, "The directory").

use std::ffi::OsStr;

const PREFIX: &str = "gen-";
const SUFFIX: &str = ".snap";
const TEMP_SUFFIX: &str = ".tmp";
/// Digits of a generation number in a name: enough for every u64.
const DIGITS: usize = 20;

/// What a directory entry is to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Name {
    /// `gen-<number>.snap`.
    Generation(u64),
    /// `gen-<number>.<pid>.<seq>.tmp`: a generation being (or once being)
    /// written.
    Temp,
    /// Not the store's.
    Other,
}

/// The file name of generation `number`.
pub(crate) fn generation(number: u64) -> String {
    format!("{PREFIX}{number:0DIGITS$}{SUFFIX}")
}

/// The temporary file name for generation `number` written by process `pid`
/// as its `seq`-th temporary file.
pub(crate) fn temp(number: u64, pid: u32, seq: u64) -> String {
    format!("{PREFIX}{number:0DIGITS$}.{pid}.{seq}{TEMP_SUFFIX}")
}

/// Classifies a directory entry's name.
pub(crate) fn classify(name: &OsStr) -> Name {
    let Some(name) = name.to_str() else {
        return Name::Other;
    };
    let Some(rest) = name.strip_prefix(PREFIX) else {
        return Name::Other;
    };
    if let Some(digits) = rest.strip_suffix(SUFFIX) {
        return match digits.parse::<u64>() {
            Ok(n) if n > 0 && is_number(digits) => Name::Generation(n),
            _ => Name::Other,
        };
    }
    let digits = rest.split('.').next().unwrap_or("");
    if rest.ends_with(TEMP_SUFFIX) && is_number(digits) {
        return Name::Temp;
    }
    Name::Other
}

fn is_number(digits: &str) -> bool {
    digits.len() == DIGITS && digits.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_classify_back() {
        assert_eq!(classify(generation(42).as_ref()), Name::Generation(42));
        assert_eq!(
            classify(generation(u64::MAX).as_ref()),
            Name::Generation(u64::MAX)
        );
        assert_eq!(classify(temp(42, 7, 3).as_ref()), Name::Temp);
        assert_eq!(generation(1), "gen-00000000000000000001.snap");
    }

    #[test]
    fn foreign_names_are_other() {
        for name in [
            "lock",
            "gen-1.snap",
            "gen-00000000000000000000.snap",
            "gen-99999999999999999999.snap",
            "gen-0000000000000000000a.snap",
            "gen-00000000000000000001.snap.bak",
            "notes.tmp",
            "gen-x.tmp",
        ] {
            assert_eq!(classify(name.as_ref()), Name::Other, "{name}");
        }
    }
}
