//! The JSON the output is made of, written by hand: key order is the order
//! of the calls, and every address and size is a lowercase hex string so
//! 64-bit values survive JavaScript.

use alloc::format;
use alloc::string::String;

use crate::arena::Stats;
use crate::cache::CacheStats;

/// A JSON object, array, or run of object fields being written.
pub(super) struct Json {
    buf: String,
    empty: bool,
    close: Option<char>,
}

impl Json {
    pub(super) fn object() -> Self {
        Json {
            buf: String::from("{"),
            empty: true,
            close: Some('}'),
        }
    }

    pub(super) fn array() -> Self {
        Json {
            buf: String::from("["),
            empty: true,
            close: Some(']'),
        }
    }

    /// Fields to be appended to an object later.
    pub(super) fn fields() -> Self {
        Json {
            buf: String::new(),
            empty: true,
            close: None,
        }
    }

    fn separate(&mut self) {
        if !self.empty {
            self.buf.push(',');
        }
        self.empty = false;
    }

    fn key(&mut self, key: &str) {
        self.separate();
        escape_into(&mut self.buf, key);
        self.buf.push(':');
    }

    pub(super) fn raw(&mut self, key: &str, value: &str) {
        self.key(key);
        self.buf.push_str(value);
    }

    pub(super) fn number(&mut self, key: &str, value: u64) {
        self.raw(key, &format!("{value}"));
    }

    pub(super) fn hex(&mut self, key: &str, value: u64) {
        self.raw(key, &format!("\"{value:#x}\""));
    }

    pub(super) fn bool(&mut self, key: &str, value: bool) {
        self.raw(key, if value { "true" } else { "false" });
    }

    pub(super) fn string(&mut self, key: &str, value: &str) {
        self.key(key);
        escape_into(&mut self.buf, value);
    }

    /// Adds an element to an array.
    pub(super) fn push(&mut self, value: &str) {
        self.separate();
        self.buf.push_str(value);
    }

    /// Adds the fields of `other` (made with [`Json::fields`]).
    pub(super) fn append(&mut self, other: Json) {
        if !other.empty {
            self.separate();
            self.buf.push_str(&other.buf);
        }
    }

    pub(super) fn finish(mut self) -> String {
        if let Some(c) = self.close {
            self.buf.push(c);
        }
        self.buf
    }
}

fn escape_into(buf: &mut String, s: &str) {
    buf.push('"');
    for c in s.chars() {
        match c {
            '"' => buf.push_str("\\\""),
            '\\' => buf.push_str("\\\\"),
            '\n' => buf.push_str("\\n"),
            '\r' => buf.push_str("\\r"),
            '\t' => buf.push_str("\\t"),
            c if (c as u32) < 0x20 => buf.push_str(&format!("\\u{:04x}", c as u32)),
            c => buf.push(c),
        }
    }
    buf.push('"');
}

/// An arena's counters, only those that are the same on every platform
/// (tag and hash-table sizes depend on the pointer width).
pub(super) fn arena_stats(s: &Stats) -> String {
    let mut o = Json::object();
    for (key, value) in [
        ("allocs", s.allocs),
        ("frees", s.frees),
        ("alloc_fails", s.alloc_fails),
        ("imports", s.imports),
        ("import_fails", s.import_fails),
        ("releases", s.releases),
        ("spans", s.spans),
        ("alloc_segments", s.alloc_segments),
        ("free_segments", s.free_segments),
        ("children", s.children),
    ] {
        o.number(key, value);
    }
    o.finish()
}

/// A cache's counters.
pub(super) fn cache_stats(s: &CacheStats) -> String {
    let mut o = Json::object();
    for (key, value) in [
        ("allocs", s.allocs),
        ("frees", s.frees),
        ("alloc_fails", s.alloc_fails),
        ("in_use", s.in_use),
        ("slabs", s.slabs),
        ("slabs_empty", s.slabs_empty),
        ("slabs_created", s.slabs_created),
        ("slabs_destroyed", s.slabs_destroyed),
        ("objects_per_slab", s.objects_per_slab),
        ("magazine_hits", s.magazine_hits),
        ("magazine_misses", s.magazine_misses),
        ("free_magazine_hits", s.free_magazine_hits),
        ("free_magazine_misses", s.free_magazine_misses),
        ("magazine_size", s.magazine_size),
        ("magazines", s.magazines),
        ("depot_full", s.depot_full),
        ("depot_empty", s.depot_empty),
        ("depot_contention", s.depot_contention),
        ("reaps", s.reaps),
    ] {
        o.number(key, value);
    }
    o.hex("chunk", s.chunk);
    o.hex("slab_size", s.slab_size);
    o.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_compact_json_with_escapes() {
        let mut o = Json::object();
        o.number("line", 3);
        o.string("cmd", "a\"b\\c\u{1}");
        o.hex("addr", 0x3000);
        let mut a = Json::array();
        a.push("1");
        a.push("2");
        o.raw("list", &a.finish());
        let mut f = Json::fields();
        f.bool("ok", true);
        o.append(f);
        o.append(Json::fields());
        assert_eq!(
            o.finish(),
            r#"{"line":3,"cmd":"a\"b\\c\u0001","addr":"0x3000","list":[1,2],"ok":true}"#
        );
    }
}
