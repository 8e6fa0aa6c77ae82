//! Names of arenas and caches: kept inline, at most [`NAME_MAX`] bytes, so
//! naming one needs no heap.

use arrayvec::ArrayString;

/// Longest arena or cache name kept, in bytes; longer names are cut at a
/// character boundary.
pub const NAME_MAX: usize = 32;

/// A name as arenas and caches keep it.
pub(crate) type Name = ArrayString<NAME_MAX>;

/// `name`, cut after the last whole character that fits in [`NAME_MAX`]
/// bytes.
pub(crate) fn keep(name: &str) -> Name {
    let mut kept = Name::new();
    for c in name.chars() {
        if kept.try_push(c).is_err() {
            break;
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_cut_at_a_character_boundary() {
        assert_eq!(keep("phys").as_str(), "phys");
        let long = "é".repeat(NAME_MAX);
        let kept = keep(&long);
        assert_eq!(kept.len(), NAME_MAX);
        assert!(kept.chars().all(|c| c == 'é'));
        let odd = format!("a{long}");
        assert_eq!(keep(&odd).len(), NAME_MAX - 1);
    }
}
