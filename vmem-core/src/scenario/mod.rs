//! The scenario language (`docs/src/scenario-language.md`): one
//! interpreter that every front end calls (native tests, the Wasm module,
//! the command-line tool, the playground), so the output is the same bytes
//! everywhere.
//!
//! Every command line gives one JSON object. A failed line changes nothing:
//! arguments are checked before anything is created, and the library calls
//! themselves leave arenas and caches as they were when they refuse.

mod json;
mod parse;
mod render;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::arena::{Arena, ArenaConfig, SegmentKind};
use crate::cache::{CacheConfig, ObjectCache};
use crate::constraint::round_up;
use crate::cpu::{FixedCpu, MAX_CPUS};
use crate::error::{Error, ErrorKind, Result};
use crate::heap_meta::HeapMeta;
use crate::qcache::QuantumCaches;
use crate::reserve::Reserve;

use json::Json;
use parse::{Command, Line};

/// Runs a whole scenario and returns its JSON Lines output (one object per
/// command line, each followed by `\n`).
pub fn run(script: &str) -> String {
    let mut interpreter = Interpreter::new();
    interpreter.run(script)
}

/// What a handle names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum HandleKind {
    Alloc,
    Xalloc,
    Cache,
    Reserve,
}

#[derive(Clone, Copy, Debug)]
struct Handle {
    kind: HandleKind,
    owner: usize,
    addr: u64,
    size: u64,
}

/// An arena and the quantum caches it points to (dropped after it).
struct ArenaSlot {
    arena: Box<Arena<'static>>,
    _qcache: Option<Box<QuantumCaches<'static>>>,
}

enum Object {
    Arena(ArenaSlot),
    Cache(Box<ObjectCache<'static>>, usize),
    Reserve(Box<Reserve<'static>>, usize),
}

/// A scenario interpreter: its arenas, caches, reserves and handles.
///
/// Objects refer to each other (a child arena to its source, a cache to its
/// arena, a reserve to its cache), so each lives in a box whose address
/// never changes, and the interpreter never drops an object another still
/// refers to: destroying one that others use is `InUse`, and everything
/// else is dropped newest first.
pub struct Interpreter {
    objects: Vec<Option<(String, Object)>>,
    names: BTreeMap<String, usize>,
    handles: BTreeMap<String, Handle>,
    /// The handle naming each live allocation, to forget it when the
    /// allocation is freed by address.
    named: BTreeMap<(usize, u64, HandleKind), String>,
    cpu: Box<FixedCpu>,
}

/// Extends a reference into a box the interpreter owns to `'static`.
///
/// # Safety
/// The box outlives every use of the reference: the interpreter drops
/// objects only when nothing refers to them, and newest first.
unsafe fn forever<T: ?Sized>(value: &T) -> &'static T {
    // SAFETY: per the function's contract.
    unsafe { &*(value as *const T) }
}

fn err(kind: ErrorKind, what: &'static str) -> Error {
    Error::new(kind, what)
}

impl Interpreter {
    /// An interpreter with nothing created yet, on CPU 0.
    pub fn new() -> Self {
        Interpreter {
            objects: Vec::new(),
            names: BTreeMap::new(),
            handles: BTreeMap::new(),
            named: BTreeMap::new(),
            cpu: Box::new(FixedCpu::new(0)),
        }
    }

    /// Runs every line of `script`, returning the JSON Lines output.
    pub fn run(&mut self, script: &str) -> String {
        let mut out = String::new();
        for (i, line) in script.lines().enumerate() {
            if let Some(json) = self.run_line(i + 1, line) {
                out.push_str(&json);
                out.push('\n');
            }
        }
        out
    }

    /// Runs one line (`line_no` is 1-based) and returns its JSON object, or
    /// `None` for a blank or comment-only line.
    pub fn run_line(&mut self, line_no: usize, text: &str) -> Option<String> {
        let line = parse::line(text)?;
        let mut json = Json::object();
        json.number("line", line_no as u64);
        json.string("cmd", line.word);
        let mut result = Json::fields();
        match self.execute(&line, &mut result) {
            Ok(()) => {
                json.bool("ok", true);
                json.append(result);
            }
            Err(e) => {
                json.bool("ok", false);
                let mut error = Json::object();
                error.string("kind", e.kind().name());
                error.string("message", &message(&e));
                json.raw("error", &error.finish());
            }
        }
        Some(json.finish())
    }

    /// A readable view of the current state: every arena with a map of its
    /// segments, and every cache's and reserve's counters.
    pub fn render(&self) -> String {
        render::render(self)
    }

    fn slot(&self, name: &str) -> Option<(usize, &Object)> {
        let &i = self.names.get(name)?;
        self.objects.get(i)?.as_ref().map(|(_, o)| (i, o))
    }

    fn arena(&self, name: &str) -> Result<(usize, &'static Arena<'static>)> {
        match self.slot(name) {
            // SAFETY: the box lives until the arena is destroyed, which is
            // refused while anything refers to it.
            Some((i, Object::Arena(a))) => Ok((i, unsafe { forever(&*a.arena) })),
            _ => Err(err(ErrorKind::UnknownArena, "no arena has that name")),
        }
    }

    fn cache(&self, name: &str) -> Result<(usize, &'static ObjectCache<'static>)> {
        match self.slot(name) {
            // SAFETY: as for arenas.
            Some((i, Object::Cache(c, _))) => Ok((i, unsafe { forever(&**c) })),
            _ => Err(err(ErrorKind::UnknownCache, "no cache has that name")),
        }
    }

    fn reserve(&self, name: &str) -> Result<(usize, &Reserve<'static>)> {
        match self.slot(name) {
            Some((i, Object::Reserve(r, _))) => Ok((i, &**r)),
            _ => Err(err(ErrorKind::UnknownCache, "no reserve has that name")),
        }
    }

    fn fresh_name(&self, name: &str) -> Result<()> {
        if self.names.contains_key(name) {
            return Err(err(ErrorKind::DuplicateName, "the name is taken"));
        }
        Ok(())
    }

    fn fresh_handle(&self, line: &Line<'_>) -> Result<()> {
        match line.handle {
            Some(h) if self.handles.contains_key(h) => Err(err(
                ErrorKind::DuplicateName,
                "the handle names a live allocation",
            )),
            _ => Ok(()),
        }
    }

    fn insert(&mut self, name: &str, object: Object) {
        self.names.insert(name.to_string(), self.objects.len());
        self.objects.push(Some((name.to_string(), object)));
    }

    /// Whether any object other than `index` refers to `index`.
    fn referenced(&self, index: usize) -> bool {
        self.objects.iter().flatten().any(|(_, o)| match o {
            Object::Cache(_, over) | Object::Reserve(_, over) => *over == index,
            Object::Arena(_) => false,
        })
    }

    fn record(&mut self, line: &Line<'_>, handle: Handle, out: &mut Json) {
        out.hex("addr", handle.addr);
        out.hex("size", handle.size);
        if let Some(h) = line.handle {
            out.string("handle", h);
            self.handles.insert(h.to_string(), handle);
            self.named
                .insert((handle.owner, handle.addr, handle.kind), h.to_string());
        }
    }

    /// Forgets the handle (if any) naming the allocation just freed.
    fn forget(&mut self, owner: usize, addr: u64, kind: HandleKind) {
        if let Some(name) = self.named.remove(&(owner, addr, kind)) {
            self.handles.remove(&name);
        }
    }

    fn handle(&self, name: &str) -> Result<Handle> {
        self.handles.get(name).copied().ok_or(err(
            ErrorKind::UnknownHandle,
            "no live allocation has that handle",
        ))
    }

    fn execute(&mut self, line: &Line<'_>, out: &mut Json) -> Result<()> {
        let command = parse::command(line)?;
        if line.handle.is_some() && !command.names_a_result() {
            return Err(err(ErrorKind::Parse, "only allocations take a handle"));
        }
        self.fresh_handle(line)?;
        match command {
            Command::Arena {
                name,
                quantum,
                span,
                source,
                import,
                qcache,
            } => {
                self.fresh_name(name)?;
                let parent = match source {
                    Some(p) => Some(self.arena(p)?.1),
                    None => None,
                };
                // SAFETY: the CPU box lives as long as the interpreter.
                let cpu = unsafe { forever(&*self.cpu) };
                let qc = match qcache {
                    Some(max) => Some(Box::new(QuantumCaches::new(quantum, max, &HeapMeta, cpu)?)),
                    None => None,
                };
                let mut config = ArenaConfig::new(name, quantum).meta(&HeapMeta);
                if let Some((base, size)) = span {
                    config = config.span(base, size);
                }
                if let Some(parent) = parent {
                    config = config.source(parent, import.unwrap_or(0));
                }
                if let Some(qc) = &qc {
                    // SAFETY: the caches' box is dropped after the arena (see ArenaSlot).
                    config = config.qcache(unsafe { forever(&**qc) });
                }
                let arena = Box::new(Arena::create(config)?);
                self.insert(name, Object::Arena(ArenaSlot { arena, _qcache: qc }));
            }
            Command::Add { name, base, size } => self.arena(name)?.1.add_span(base, size)?,
            Command::Alloc { name, size, policy } => {
                let (owner, arena) = self.arena(name)?;
                let addr = arena.alloc(size, policy)?;
                let size = round_up(size, arena.quantum())?;
                self.record(
                    line,
                    Handle {
                        kind: HandleKind::Alloc,
                        owner,
                        addr,
                        size,
                    },
                    out,
                );
            }
            Command::Xalloc {
                name,
                size,
                constraints,
                policy,
            } => {
                let (owner, arena) = self.arena(name)?;
                let addr = arena.xalloc(size, &constraints, policy)?;
                let size = round_up(size, arena.quantum())?;
                self.record(
                    line,
                    Handle {
                        kind: HandleKind::Xalloc,
                        owner,
                        addr,
                        size,
                    },
                    out,
                );
            }
            Command::Free { name, target, x } => {
                let (owner, arena) = self.arena(name)?;
                let (addr, size) = match target {
                    parse::Target::Handle(h) => {
                        let handle = self.handle(h)?;
                        if handle.owner != owner {
                            return Err(err(
                                ErrorKind::BadFree,
                                "the handle is an allocation of another arena or cache",
                            ));
                        }
                        if handle.kind
                            != if x {
                                HandleKind::Xalloc
                            } else {
                                HandleKind::Alloc
                            }
                        {
                            return Err(err(
                                ErrorKind::BadFree,
                                "the handle was allocated by the other call (alloc/free, xalloc/xfree)",
                            ));
                        }
                        (handle.addr, handle.size)
                    }
                    parse::Target::Range(addr, size) => (addr, size),
                };
                if x {
                    arena.xfree(addr, size)?;
                    self.forget(owner, addr, HandleKind::Xalloc);
                } else {
                    arena.free(addr, size)?;
                    self.forget(owner, addr, HandleKind::Alloc);
                }
            }
            Command::Contains { name, addr, size } => {
                let contains = self.arena(name)?.1.contains(addr, size)?;
                out.bool("contains", contains);
            }
            Command::Walk { name } => {
                let arena = self.arena(name)?.1;
                let mut segments = Json::array();
                arena.walk(|s| {
                    let mut seg = Json::object();
                    seg.hex("start", s.start);
                    seg.hex("size", s.size);
                    match s.kind {
                        SegmentKind::Span { imported } => {
                            seg.string("type", "span");
                            seg.bool("imported", imported);
                        }
                        SegmentKind::Free => seg.string("type", "free"),
                        SegmentKind::Alloc => seg.string("type", "alloc"),
                    }
                    segments.push(&seg.finish());
                });
                out.raw("segments", &segments.finish());
            }
            Command::Size { name } => {
                let size = self.arena(name)?.1.size();
                out.hex("alloc", size.alloc);
                out.hex("free", size.free);
                out.hex("total", size.total);
            }
            Command::Stats { name } => {
                let stats = match self.slot(name) {
                    Some((_, Object::Arena(a))) => json::arena_stats(&a.arena.stats()),
                    Some((_, Object::Cache(c, _))) => json::cache_stats(&c.stats()),
                    Some((_, Object::Reserve(r, _))) => {
                        let mut o = Json::object();
                        o.number("available", r.available() as u64);
                        o.number("capacity", r.capacity() as u64);
                        o.finish()
                    }
                    None => {
                        return Err(err(
                            ErrorKind::UnknownArena,
                            "no arena, cache or reserve has that name",
                        ));
                    }
                };
                out.raw("stats", &stats);
            }
            Command::Destroy { name } => self.destroy(name)?,
            Command::Check => {
                for (_, object) in self.objects.iter().flatten() {
                    match object {
                        Object::Arena(a) => a.arena.check()?,
                        Object::Cache(c, _) => c.check()?,
                        Object::Reserve(..) => {}
                    }
                }
            }
            Command::Fail { name, count } => self.arena(name)?.1.fail_imports(count),
            Command::Cache {
                name,
                size,
                align,
                arena,
                magazine,
            } => {
                self.fresh_name(name)?;
                let (over, arena) = self.arena(arena)?;
                // SAFETY: the CPU box lives as long as the interpreter.
                let cpu = unsafe { forever(&*self.cpu) };
                let mut config = CacheConfig::new(name, size, &HeapMeta, cpu).debug(true);
                if let Some(align) = align {
                    config = config.align(align);
                }
                if let Some(magazine) = magazine {
                    config = config.magazine(magazine);
                }
                let cache = Box::new(ObjectCache::new(config, arena)?);
                self.insert(name, Object::Cache(cache, over));
            }
            Command::CacheAlloc { name } => {
                let (owner, cache) = self.cache(name)?;
                let addr = cache.alloc()?;
                let size = cache.object_size();
                self.record(
                    line,
                    Handle {
                        kind: HandleKind::Cache,
                        owner,
                        addr,
                        size,
                    },
                    out,
                );
            }
            Command::CacheFree { name, handle } => {
                let (owner, cache) = self.cache(name)?;
                let h = self.handle(handle)?;
                if h.kind != HandleKind::Cache || h.owner != owner {
                    return Err(err(
                        ErrorKind::BadFree,
                        "the handle is not an allocation of this cache",
                    ));
                }
                cache.free(h.addr)?;
                self.forget(owner, h.addr, HandleKind::Cache);
            }
            // Caches use the index modulo MAX_CPUS, so this is the same CPU on
            // every platform, whatever the width of usize.
            Command::Cpu { index } => self.cpu.set((index % MAX_CPUS as u64) as usize),
            Command::Reap => {
                for (_, object) in self.objects.iter().flatten() {
                    match object {
                        Object::Arena(a) => a.arena.reap()?,
                        Object::Cache(c, _) => c.reap()?,
                        Object::Reserve(..) => {}
                    }
                }
            }
            Command::Reserve { name, cache, count } => {
                self.fresh_name(name)?;
                let (over, cache) = self.cache(cache)?;
                let reserve = Box::new(Reserve::new(cache, count, &HeapMeta)?);
                self.insert(name, Object::Reserve(reserve, over));
            }
            Command::ReserveAlloc { name } => {
                let (owner, reserve) = self.reserve(name)?;
                let addr = reserve.alloc()?;
                let size = match self.objects.get(owner) {
                    Some(Some((_, Object::Reserve(_, over)))) => match self.objects.get(*over) {
                        Some(Some((_, Object::Cache(c, _)))) => c.object_size(),
                        _ => 0,
                    },
                    _ => 0,
                };
                self.record(
                    line,
                    Handle {
                        kind: HandleKind::Reserve,
                        owner,
                        addr,
                        size,
                    },
                    out,
                );
            }
            Command::ReserveFree { name, handle } => {
                let (owner, reserve) = self.reserve(name)?;
                let h = self.handle(handle)?;
                if h.kind != HandleKind::Reserve || h.owner != owner {
                    return Err(err(
                        ErrorKind::BadFree,
                        "the handle is not an allocation of this reserve",
                    ));
                }
                reserve.free(h.addr)?;
                self.forget(owner, h.addr, HandleKind::Reserve);
            }
        }
        Ok(())
    }

    fn destroy(&mut self, name: &str) -> Result<()> {
        let Some((index, object)) = self.slot(name) else {
            return Err(err(
                ErrorKind::UnknownArena,
                "no arena, cache or reserve has that name",
            ));
        };
        if self.referenced(index) {
            return Err(err(ErrorKind::InUse, "a cache or reserve is built on it"));
        }
        match object {
            Object::Arena(a) => a.arena.destroy()?,
            Object::Cache(c, _) => {
                if c.stats().in_use > 0 {
                    return Err(err(ErrorKind::InUse, "the cache has live objects"));
                }
                c.reap()?;
            }
            Object::Reserve(..) => {
                if self.handles.values().any(|h| h.owner == index) {
                    return Err(err(ErrorKind::InUse, "the reserve has objects out"));
                }
            }
        }
        self.names.remove(name);
        if let Some(slot) = self.objects.get_mut(index) {
            *slot = None;
        }
        Ok(())
    }
}

impl Default for Interpreter {
    fn default() -> Self {
        Interpreter::new()
    }
}

impl Drop for Interpreter {
    /// Drops objects newest first, so nothing outlives what it refers to.
    fn drop(&mut self) {
        while let Some(object) = self.objects.pop() {
            drop(object);
        }
    }
}

/// The error's message as the output shows it: what went wrong, and where.
fn message(e: &Error) -> String {
    match e.addr() {
        Some(addr) => alloc::format!("{} at {:#x}", e.what(), addr),
        None => e.what().to_string(),
    }
}
