//! Display names in use, so that no two connections look alike.
//!
//! Names are compared case-insensitively. A requested name that is taken
//! gets the first free suffix (`alice`, `alice-2`, `alice-3`, ...). This is
//! touched on connect and disconnect only, never per message, so a plain
//! mutex is the right tool.

use std::collections::HashSet;
use std::sync::Mutex;

use protocol::v1::MAX_NAME_CHARS;

#[derive(Debug, Default)]
pub(crate) struct Names {
    taken: Mutex<HashSet<String>>,
}

impl Names {
    /// Reserves `wanted` (already validated) or the first free suffixed
    /// variant, and returns the reserved name.
    pub(crate) fn claim(&self, wanted: &str) -> String {
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        if taken.insert(wanted.to_lowercase()) {
            return wanted.to_owned();
        }
        for n in 2u64.. {
            let suffix = format!("-{n}");
            let room = MAX_NAME_CHARS.saturating_sub(suffix.chars().count());
            let base: String = wanted.chars().take(room).collect();
            let candidate = format!("{base}{suffix}");
            if taken.insert(candidate.to_lowercase()) {
                return candidate;
            }
        }
        unreachable!("some suffix is always free")
    }

    /// Frees a name claimed earlier.
    pub(crate) fn release(&self, name: &str) {
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        taken.remove(&name.to_lowercase());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_get_suffixes_case_insensitively() {
        let names = Names::default();
        assert_eq!(names.claim("alice"), "alice");
        assert_eq!(names.claim("Alice"), "Alice-2");
        assert_eq!(names.claim("alice"), "alice-3");
        names.release("ALICE-2");
        assert_eq!(names.claim("alice"), "alice-2");
    }

    #[test]
    fn suffixed_names_stay_within_the_limit() {
        let names = Names::default();
        let long = "x".repeat(MAX_NAME_CHARS);
        assert_eq!(names.claim(&long), long);
        let second = names.claim(&long);
        assert_eq!(second.chars().count(), MAX_NAME_CHARS);
        assert!(second.ends_with("-2"));
    }
}
