//! Reading a scenario line: lexical rules and the command set.

use alloc::vec::Vec;

use crate::arena::Policy;
use crate::constraint::Constraints;
use crate::error::{Error, ErrorKind, Result};

/// A line split into its handle, command word and arguments.
pub(super) struct Line<'a> {
    pub(super) handle: Option<&'a str>,
    pub(super) word: &'a str,
    args: Vec<&'a str>,
}

/// What `free`/`xfree` name: a handle, or an address and size.
pub(super) enum Target<'a> {
    Handle(&'a str),
    Range(u64, u64),
}

/// A parsed command.
pub(super) enum Command<'a> {
    Arena {
        name: &'a str,
        quantum: u64,
        span: Option<(u64, u64)>,
        source: Option<&'a str>,
        import: Option<u64>,
        qcache: Option<u64>,
    },
    Add {
        name: &'a str,
        base: u64,
        size: u64,
    },
    Alloc {
        name: &'a str,
        size: u64,
        policy: Policy,
    },
    Xalloc {
        name: &'a str,
        size: u64,
        constraints: Constraints,
        policy: Policy,
    },
    Free {
        name: &'a str,
        target: Target<'a>,
        x: bool,
    },
    Contains {
        name: &'a str,
        addr: u64,
        size: u64,
    },
    Walk {
        name: &'a str,
    },
    Size {
        name: &'a str,
    },
    Stats {
        name: &'a str,
    },
    Destroy {
        name: &'a str,
    },
    Check,
    Fail {
        name: &'a str,
        count: u64,
    },
    Cache {
        name: &'a str,
        size: u64,
        align: Option<u64>,
        arena: &'a str,
        magazine: Option<u32>,
    },
    CacheAlloc {
        name: &'a str,
    },
    CacheFree {
        name: &'a str,
        handle: &'a str,
    },
    Cpu {
        index: u64,
    },
    Reap,
    Reserve {
        name: &'a str,
        cache: &'a str,
        count: usize,
    },
    ReserveAlloc {
        name: &'a str,
    },
    ReserveFree {
        name: &'a str,
        handle: &'a str,
    },
}

impl Command<'_> {
    /// Whether the command's result may be named by a handle.
    pub(super) fn names_a_result(&self) -> bool {
        matches!(
            self,
            Command::Alloc { .. }
                | Command::Xalloc { .. }
                | Command::CacheAlloc { .. }
                | Command::ReserveAlloc { .. }
        )
    }
}

/// Most objects a scenario's reserve may hold (the same on every platform).
const MAX_RESERVE: u64 = 1 << 20;

fn parse_error(what: &'static str) -> Error {
    Error::new(ErrorKind::Parse, what)
}

/// Splits a line; `None` when it is blank or only a comment.
pub(super) fn line(text: &str) -> Option<Line<'_>> {
    let text = text.split('#').next().unwrap_or("");
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let first = *tokens.first()?;
    if tokens.get(1) == Some(&"=") {
        return Some(Line {
            handle: Some(first),
            word: tokens.get(2).copied().unwrap_or(""),
            args: tokens.iter().skip(3).copied().collect(),
        });
    }
    Some(Line {
        handle: None,
        word: first,
        args: tokens.iter().skip(1).copied().collect(),
    })
}

/// Whether `s` is a name: `[A-Za-z_][A-Za-z0-9_.-]*`.
fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn name(s: &str) -> Result<&str> {
    if is_name(s) {
        Ok(s)
    } else {
        Err(parse_error("not a valid name"))
    }
}

/// A number: decimal or `0x` hex, with an optional `K`, `M`, `G` or `T`.
pub(super) fn number(s: &str) -> Result<u64> {
    let bad = parse_error("not a number, or too large for 64 bits");
    let (digits, shift) = match s.as_bytes().last() {
        Some(b'K') => (&s[..s.len() - 1], 10),
        Some(b'M') => (&s[..s.len() - 1], 20),
        Some(b'G') => (&s[..s.len() - 1], 30),
        Some(b'T') => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    let value = match digits.strip_prefix("0x") {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u64::from_str_radix(hex, 16)
        }
        None if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => digits.parse(),
        _ => return Err(bad),
    }
    .map_err(|_| bad)?;
    value.checked_mul(1u64 << shift).ok_or(bad)
}

/// Positional arguments and `key=value` options, checked against the keys
/// a command allows.
struct Args<'a> {
    positional: Vec<&'a str>,
    options: Vec<(&'a str, &'a str)>,
    policy: Option<&'a str>,
}

impl<'a> Args<'a> {
    fn new(line: &Line<'a>, keys: &[&str]) -> Result<Self> {
        let mut positional = Vec::new();
        let mut options: Vec<(&str, &str)> = Vec::new();
        let mut policy = None;
        for &arg in &line.args {
            // The first argument is the arena's name, whatever it is.
            if matches!(line.word, "alloc" | "xalloc")
                && !positional.is_empty()
                && matches!(arg, "instant" | "best" | "next")
            {
                if policy.replace(arg).is_some() {
                    return Err(parse_error("policy given twice"));
                }
                continue;
            }
            match arg.split_once('=') {
                Some((key, value)) => {
                    if !keys.contains(&key) {
                        return Err(parse_error("unknown option for this command"));
                    }
                    if options.iter().any(|(k, _)| *k == key) {
                        return Err(parse_error("option given twice"));
                    }
                    options.push((key, value));
                }
                None if options.is_empty() => positional.push(arg),
                None => return Err(parse_error("positional argument after an option")),
            }
        }
        Ok(Args {
            positional,
            options,
            policy,
        })
    }

    fn option(&self, key: &str) -> Option<&'a str> {
        self.options
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }

    fn number(&self, key: &str) -> Result<Option<u64>> {
        self.option(key).map(number).transpose()
    }

    fn required(&self, key: &str) -> Result<u64> {
        self.number(key)?
            .ok_or(parse_error("a required option is missing"))
    }

    /// Exactly `n` positional arguments, with up to `extra` more allowed.
    fn count(&self, n: usize, extra: usize) -> Result<()> {
        if self.positional.len() < n {
            return Err(parse_error("too few arguments"));
        }
        if self.positional.len() > n + extra {
            return Err(parse_error("too many arguments"));
        }
        Ok(())
    }

    fn name(&self, i: usize) -> Result<&'a str> {
        name(self.positional.get(i).copied().unwrap_or(""))
    }

    fn number_at(&self, i: usize) -> Result<u64> {
        number(self.positional.get(i).copied().unwrap_or(""))
    }

    /// The policy word, wherever it stood (instant fit when none).
    fn policy(&self) -> Policy {
        match self.policy {
            Some("best") => Policy::BestFit,
            Some("next") => Policy::NextFit,
            _ => Policy::InstantFit,
        }
    }
}

/// Reads the command of a line.
pub(super) fn command<'a>(line: &Line<'a>) -> Result<Command<'a>> {
    if let Some(h) = line.handle {
        name(h)?;
    }
    let args = |keys: &[&str]| Args::new(line, keys);
    let command = match line.word {
        "arena" => {
            let a = args(&["quantum", "base", "size", "source", "import", "qcache"])?;
            a.count(1, 0)?;
            let span = match (a.number("base")?, a.number("size")?) {
                (Some(base), Some(size)) => Some((base, size)),
                (None, None) => None,
                _ => return Err(parse_error("base and size come together")),
            };
            let source = a.option("source").map(name).transpose()?;
            if a.option("import").is_some() && source.is_none() {
                return Err(parse_error("import needs a source"));
            }
            Command::Arena {
                name: a.name(0)?,
                quantum: a.required("quantum")?,
                span,
                source,
                import: a.number("import")?,
                qcache: a.number("qcache")?,
            }
        }
        "add" => {
            let a = args(&[])?;
            a.count(3, 0)?;
            Command::Add {
                name: a.name(0)?,
                base: a.number_at(1)?,
                size: a.number_at(2)?,
            }
        }
        "alloc" => {
            let a = args(&[])?;
            a.count(2, 0)?;
            Command::Alloc {
                name: a.name(0)?,
                size: a.number_at(1)?,
                policy: a.policy(),
            }
        }
        "xalloc" => {
            let a = args(&["align", "phase", "nocross", "min", "max"])?;
            a.count(2, 0)?;
            let constraints = Constraints {
                align: a.number("align")?.unwrap_or(0),
                phase: a.number("phase")?.unwrap_or(0),
                nocross: a.number("nocross")?.unwrap_or(0),
                min: a.number("min")?.unwrap_or(0),
                max: a.number("max")?.unwrap_or(0),
            };
            Command::Xalloc {
                name: a.name(0)?,
                size: a.number_at(1)?,
                constraints,
                policy: a.policy(),
            }
        }
        word @ ("free" | "xfree") => {
            let a = args(&[])?;
            a.count(2, 1)?;
            let target = if a.positional.len() == 2 {
                Target::Handle(a.name(1)?)
            } else {
                Target::Range(a.number_at(1)?, a.number_at(2)?)
            };
            Command::Free {
                name: a.name(0)?,
                target,
                x: word == "xfree",
            }
        }
        "contains" => {
            let a = args(&[])?;
            a.count(3, 0)?;
            Command::Contains {
                name: a.name(0)?,
                addr: a.number_at(1)?,
                size: a.number_at(2)?,
            }
        }
        word @ ("walk" | "size" | "stats" | "destroy" | "cache_alloc" | "reserve_alloc") => {
            let a = args(&[])?;
            a.count(1, 0)?;
            let name = a.name(0)?;
            match word {
                "walk" => Command::Walk { name },
                "size" => Command::Size { name },
                "stats" => Command::Stats { name },
                "destroy" => Command::Destroy { name },
                "cache_alloc" => Command::CacheAlloc { name },
                _ => Command::ReserveAlloc { name },
            }
        }
        word @ ("check" | "reap") => {
            args(&[])?.count(0, 0)?;
            if word == "check" {
                Command::Check
            } else {
                Command::Reap
            }
        }
        "fail" => {
            let a = args(&["count"])?;
            a.count(2, 0)?;
            if a.positional[1] != "import" {
                return Err(parse_error("fail takes the word import"));
            }
            Command::Fail {
                name: a.name(0)?,
                count: a.number("count")?.unwrap_or(1),
            }
        }
        "cache" => {
            let a = args(&["size", "align", "arena", "magazine"])?;
            a.count(1, 0)?;
            let magazine = match a.number("magazine")? {
                Some(m) => {
                    Some(u32::try_from(m).map_err(|_| parse_error("magazine size too large"))?)
                }
                None => None,
            };
            Command::Cache {
                name: a.name(0)?,
                size: a.required("size")?,
                align: a.number("align")?,
                arena: name(
                    a.option("arena")
                        .ok_or(parse_error("a required option is missing"))?,
                )?,
                magazine,
            }
        }
        word @ ("cache_free" | "reserve_free") => {
            let a = args(&[])?;
            a.count(2, 0)?;
            let (name, handle) = (a.name(0)?, a.name(1)?);
            if word == "cache_free" {
                Command::CacheFree { name, handle }
            } else {
                Command::ReserveFree { name, handle }
            }
        }
        "cpu" => {
            let a = args(&[])?;
            a.count(1, 0)?;
            Command::Cpu {
                index: a.number_at(0)?,
            }
        }
        "reserve" => {
            let a = args(&["cache", "count"])?;
            a.count(1, 0)?;
            let count = a.required("count")?;
            if count > MAX_RESERVE {
                return Err(parse_error("reserve count too large"));
            }
            let count = count as usize;
            Command::Reserve {
                name: a.name(0)?,
                cache: name(
                    a.option("cache")
                        .ok_or(parse_error("a required option is missing"))?,
                )?,
                count,
            }
        }
        _ => return Err(parse_error("unknown command")),
    };
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_follow_the_lexical_rules() {
        assert_eq!(number("4096").unwrap(), 4096);
        assert_eq!(number("0x1000").unwrap(), 4096);
        assert_eq!(number("4K").unwrap(), 4096);
        assert_eq!(number("2M").unwrap(), 2 << 20);
        assert_eq!(number("0x10G").unwrap(), 16 << 30);
        assert_eq!(number("16383T").unwrap(), 16383 << 40);
        for bad in [
            "",
            "0x",
            "12a",
            "-1",
            "16777216T",
            "18446744073709551616",
            "0x1_000",
            "K",
        ] {
            assert_eq!(number(bad).unwrap_err().kind(), ErrorKind::Parse, "{bad}");
        }
        assert_eq!(number("18446744073709551615").unwrap(), u64::MAX);
    }

    #[test]
    fn lines_split_into_handle_word_and_arguments() {
        assert!(line("   # only a comment").is_none());
        assert!(line("").is_none());
        let l = line("h1 = alloc heap 4K best # why").unwrap();
        assert_eq!((l.handle, l.word, l.args.len()), (Some("h1"), "alloc", 3));
        assert!(is_name("kmem_va.2-x") && !is_name("2x") && !is_name("a$"));
    }
}
