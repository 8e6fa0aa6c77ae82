//! Arbitrary bytes as a scenario script, through the one interpreter every
//! front end uses.
//!
//! For every input: nothing panics; every output line is one well-formed
//! JSON object whose `"line"` numbers rise; running the script a second
//! time (line by line this time) gives the same bytes and the same
//! rendered state; a line that fails leaves the rendered state (every
//! arena's segments, caches' objects and slabs, reserves' counts) as it
//! was; `check` passes afterwards; and dropping the interpreter gives every
//! static boundary tag back.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmem_core::scenario::Interpreter;
use vmem_core::static_tags_available;

fuzz_target!(|data: &[u8]| {
    let script = String::from_utf8_lossy(data);
    let tags = static_tags_available();
    let whole = {
        let mut interpreter = Interpreter::new();
        let out = interpreter.run(&script);
        finish(&mut interpreter, &script, out)
    };
    assert_eq!(
        static_tags_available(),
        tags,
        "an interpreter kept static tags"
    );
    let by_line = {
        let mut interpreter = Interpreter::new();
        let mut out = String::new();
        for (i, line) in script.lines().enumerate() {
            let before = interpreter.render();
            if let Some(json) = interpreter.run_line(i + 1, line) {
                // The rendering shows every arena's segments, every cache's
                // objects in use and slabs, and every reserve's count.
                if json.contains(",\"ok\":false,") {
                    let after = interpreter.render();
                    assert!(
                        after == before,
                        "failed line {} changed the state: {line}\n{json}\nbefore:\n{before}\nafter:\n{after}",
                        i + 1
                    );
                }
                out.push_str(&json);
                out.push('\n');
            }
        }
        finish(&mut interpreter, &script, out)
    };
    assert!(whole == by_line, "two runs of the same script differ");
    for (n, line) in whole.0.lines().enumerate() {
        assert!(
            json::is_object(line),
            "output line {n} is not a JSON object: {line}"
        );
    }
    check_line_numbers(&whole.0);
});

/// Runs `check` after the script and renders the state; returns the
/// output with the check's line, and the rendering.
fn finish(interpreter: &mut Interpreter, script: &str, mut out: String) -> (String, String) {
    let line_no = script.lines().count() + 1;
    let check = interpreter.run_line(line_no, "check").unwrap_or_default();
    assert!(
        check.starts_with(&format!(
            "{{\"line\":{line_no},\"cmd\":\"check\",\"ok\":true"
        )),
        "check failed after the script: {check}"
    );
    out.push_str(&check);
    out.push('\n');
    let state = interpreter.render();
    (out, state)
}

/// Every output line starts with its source line number, and they rise.
fn check_line_numbers(out: &str) {
    let mut last = 0u64;
    for line in out.lines() {
        let digits: String = line
            .strip_prefix("{\"line\":")
            .unwrap_or_default()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let n: u64 = digits.parse().unwrap_or(0);
        assert!(n > last, "line numbers do not rise: {line}");
        last = n;
    }
}

/// A small JSON syntax checker (RFC 8259), enough to tell that the
/// interpreter's hand-written JSON parses.
mod json {
    pub fn is_object(text: &str) -> bool {
        let b = text.as_bytes();
        matches!(value(b, 0), Some(end) if end == b.len()) && b.first() == Some(&b'{')
    }

    fn ws(b: &[u8], mut i: usize) -> usize {
        while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            i += 1;
        }
        i
    }

    fn value(b: &[u8], i: usize) -> Option<usize> {
        let i = ws(b, i);
        let end = match *b.get(i)? {
            b'{' => object(b, i + 1)?,
            b'[' => array(b, i + 1)?,
            b'"' => string(b, i + 1)?,
            b't' => literal(b, i, b"true")?,
            b'f' => literal(b, i, b"false")?,
            b'n' => literal(b, i, b"null")?,
            _ => number(b, i)?,
        };
        Some(ws(b, end))
    }

    fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
        b.get(i..i + word.len()).filter(|s| *s == word)?;
        Some(i + word.len())
    }

    fn object(b: &[u8], i: usize) -> Option<usize> {
        let mut i = ws(b, i);
        if b.get(i) == Some(&b'}') {
            return Some(i + 1);
        }
        loop {
            if b.get(i) != Some(&b'"') {
                return None;
            }
            i = ws(b, string(b, i + 1)?);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i = value(b, i + 1)?;
            match b.get(i)? {
                b',' => i = ws(b, i + 1),
                b'}' => return Some(i + 1),
                _ => return None,
            }
        }
    }

    fn array(b: &[u8], i: usize) -> Option<usize> {
        let mut i = ws(b, i);
        if b.get(i) == Some(&b']') {
            return Some(i + 1);
        }
        loop {
            i = value(b, i)?;
            match b.get(i)? {
                b',' => i += 1,
                b']' => return Some(i + 1),
                _ => return None,
            }
        }
    }

    /// `i` is just past the opening quote.
    fn string(b: &[u8], mut i: usize) -> Option<usize> {
        loop {
            match *b.get(i)? {
                b'"' => return Some(i + 1),
                b'\\' => match *b.get(i + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                    b'u' => {
                        let hex = b.get(i + 2..i + 6)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        i += 6;
                    }
                    _ => return None,
                },
                c if c < 0x20 => return None,
                _ => i += 1,
            }
        }
    }

    fn number(b: &[u8], mut i: usize) -> Option<usize> {
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        let digits = |b: &[u8], mut i: usize| {
            let start = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            (i > start).then_some(i)
        };
        if b.get(i) == Some(&b'0') {
            i += 1;
        } else {
            i = digits(b, i)?;
        }
        if b.get(i) == Some(&b'.') {
            i = digits(b, i + 1)?;
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            i = digits(b, i)?;
        }
        Some(i)
    }
}
