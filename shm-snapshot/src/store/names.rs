//! Names of the files in a store's directory (STORE.md, "The directory").

use std::ffi::OsStr;

const SEGMENT_PREFIX: &str = "seg-";
const SEGMENT_SUFFIX: &str = ".log";
const BASE_PREFIX: &str = "base-";
const BASE_SUFFIX: &str = ".snap";
const LEGACY_PREFIX: &str = "gen-";
const LEGACY_SUFFIX: &str = ".snap";
const TEMP_SUFFIX: &str = ".tmp";
/// Digits of a number in a name: enough for every u64.
const DIGITS: usize = 20;

/// What a directory entry is to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Name {
    /// `seg-<seq>.log`.
    Segment(u64),
    /// `base-<number>.snap`.
    Base(u64),
    /// `gen-<number>.snap`, written by version 2.
    Legacy(u64),
    /// `seg-<seq>.<pid>.<n>.tmp`, `base-<number>.<pid>.<n>.tmp` or version
    /// 2's `gen-<number>.<pid>.<n>.tmp`: a file being (or once being)
    /// written.
    Temp,
    /// Not the store's.
    Other,
}

/// The file name of segment `seq`.
pub(crate) fn segment(seq: u64) -> String {
    format!("{SEGMENT_PREFIX}{seq:0DIGITS$}{SEGMENT_SUFFIX}")
}

/// The file name of the base of generation `number`.
pub(crate) fn base(number: u64) -> String {
    format!("{BASE_PREFIX}{number:0DIGITS$}{BASE_SUFFIX}")
}

/// The file name of version 2's generation `number`.
#[cfg(test)]
pub(crate) fn legacy(number: u64) -> String {
    format!("{LEGACY_PREFIX}{number:0DIGITS$}{LEGACY_SUFFIX}")
}

/// The temporary name of segment `seq` made by process `pid` as its `n`-th
/// temporary file.
pub(crate) fn segment_temp(seq: u64, pid: u32, n: u64) -> String {
    format!("{SEGMENT_PREFIX}{seq:0DIGITS$}.{pid}.{n}{TEMP_SUFFIX}")
}

/// The temporary name of the base of generation `number` made by process
/// `pid` as its `n`-th temporary file.
pub(crate) fn base_temp(number: u64, pid: u32, n: u64) -> String {
    format!("{BASE_PREFIX}{number:0DIGITS$}.{pid}.{n}{TEMP_SUFFIX}")
}

/// A kind of numbered name: its prefix, its suffix, and what it is.
type Kind = (&'static str, &'static str, fn(u64) -> Name);

/// Classifies a directory entry's name.
pub(crate) fn classify(name: &OsStr) -> Name {
    let Some(name) = name.to_str() else {
        return Name::Other;
    };
    let kinds: [Kind; 3] = [
        (SEGMENT_PREFIX, SEGMENT_SUFFIX, Name::Segment),
        (BASE_PREFIX, BASE_SUFFIX, Name::Base),
        (LEGACY_PREFIX, LEGACY_SUFFIX, Name::Legacy),
    ];
    for (prefix, suffix, kind) in kinds {
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        if let Some(digits) = rest.strip_suffix(suffix) {
            return match digits.parse::<u64>() {
                Ok(n) if n > 0 && is_number(digits) => kind(n),
                _ => Name::Other,
            };
        }
        let digits = rest.split('.').next().unwrap_or("");
        if rest.ends_with(TEMP_SUFFIX) && is_number(digits) {
            return Name::Temp;
        }
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
        assert_eq!(classify(segment(42).as_ref()), Name::Segment(42));
        assert_eq!(classify(base(u64::MAX).as_ref()), Name::Base(u64::MAX));
        assert_eq!(classify(legacy(7).as_ref()), Name::Legacy(7));
        assert_eq!(classify(segment_temp(42, 7, 3).as_ref()), Name::Temp);
        assert_eq!(classify(base_temp(42, 7, 3).as_ref()), Name::Temp);
        assert_eq!(classify("gen-00000000000000000042.7.3.tmp".as_ref()), Name::Temp);
        assert_eq!(segment(1), "seg-00000000000000000001.log");
        assert_eq!(base(1), "base-00000000000000000001.snap");
    }

    #[test]
    fn foreign_names_are_other() {
        for name in [
            "lock",
            "gen-1.snap",
            "seg-1.log",
            "base-00000000000000000000.snap",
            "gen-99999999999999999999.snap",
            "seg-0000000000000000000a.log",
            "base-00000000000000000001.snap.bak",
            "seg-00000000000000000001.snap",
            "notes.tmp",
            "gen-x.tmp",
        ] {
            assert_eq!(classify(name.as_ref()), Name::Other, "{name}");
        }
    }
}
