//! A `tracing` subscriber that writes events to the serial console: vmem-
//! core's imports, releases and failures. It counts every event, and
//! prints them when the command line has the word `trace`. It never
//! allocates, so events from inside the allocator are safe.

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tracing_core::field::{Field, Visit};
use tracing_core::span::{Attributes, Id, Record};
use tracing_core::{Dispatch, Event, Metadata, Subscriber};

pub static EVENTS: AtomicU64 = AtomicU64::new(0);
static PRINT: AtomicBool = AtomicBool::new(false);

struct SerialSubscriber;

struct Fields;

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            crate::print!(" {value:?}");
        } else {
            crate::print!(" {}={value:?}", field.name());
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        crate::print!(" {}={value:#x}", field.name());
    }
}

impl Subscriber for SerialSubscriber {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        EVENTS.fetch_add(1, Ordering::Relaxed);
        if PRINT.load(Ordering::Relaxed) {
            let meta = event.metadata();
            crate::print!("[{} {}]", meta.level(), meta.target());
            event.record(&mut Fields);
            crate::println!();
        }
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// Installs the subscriber (needs the heap: the dispatcher is boxed once).
pub fn init(print: bool) {
    PRINT.store(print, Ordering::Relaxed);
    let _ = tracing_core::dispatcher::set_global_default(Dispatch::new(SerialSubscriber));
}
