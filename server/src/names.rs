//! Display names in use, so that no two connections look alike.
//!
//! Names are compared case-insensitively. A requested name that is taken
//! gets the first free suffix (`alice`, `alice-2`, `alice-3`, ...). This is
//! touched on connect and disconnect only, never per message, so a plain
//! mutex is the right tool.
//!
//! Guests' names (`guest-<id>`, see [`protocol::v1::guest_name`]) are unique
//! by their connection's id and are not kept here: that saves a set entry
//! for every client that chose no name. So the guests' namespace is closed
//! to chosen names: asking for `guest-7` gives `guest-7-2`, and a taken
//! `guest` becomes `guest_2`, never a guest's `guest-2`.

use std::collections::HashSet;
use std::sync::Mutex;

use protocol::v1::{is_guest_name, MAX_NAME_CHARS};

#[derive(Debug, Default)]
pub(crate) struct Names {
    taken: Mutex<HashSet<String>>,
}

impl Names {
    /// Reserves `wanted` (already validated) or the first free suffixed
    /// variant, and returns the reserved name.
    pub(crate) fn claim(&self, wanted: &str) -> String {
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        if !is_guest_name(wanted) && taken.insert(wanted.to_lowercase()) {
            return wanted.to_owned();
        }
        for n in 2u64.. {
            let mut candidate = suffixed(wanted, '-', n);
            if is_guest_name(&candidate) {
                candidate = suffixed(wanted, '_', n);
            }
            if taken.insert(candidate.to_lowercase()) {
                return candidate;
            }
        }
        unreachable!("some suffix is always free")
    }

    /// Frees a name claimed earlier, or a guest's (which holds nothing).
    pub(crate) fn release(&self, name: &str) {
        if is_guest_name(name) {
            return;
        }
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        taken.remove(&name.to_lowercase());
    }
}

/// `wanted` with `{separator}{n}` appended, cut to fit the length limit.
fn suffixed(wanted: &str, separator: char, n: u64) -> String {
    let suffix = format!("{separator}{n}");
    let room = MAX_NAME_CHARS.saturating_sub(suffix.chars().count());
    let base: String = wanted.chars().take(room).collect();
    base + &suffix
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
    fn chosen_names_stay_out_of_the_guests_namespace() {
        let names = Names::default();
        assert_eq!(names.claim("guest-7"), "guest-7-2");
        assert_eq!(names.claim("GUEST-7"), "GUEST-7-3");
        assert_eq!(names.claim("guest"), "guest");
        assert_eq!(names.claim("Guest"), "Guest_2");
        assert_eq!(names.claim("guest"), "guest_3");
        // A guest's name is not kept, so releasing one frees nothing else.
        names.release("guest-2");
        assert_eq!(names.claim("guest"), "guest_4");
        names.release("guest_3");
        assert_eq!(names.claim("guest"), "guest_3");
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
