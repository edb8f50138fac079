//! JSON Lines: one record or event per line, written as they are produced.

use std::io::Write;

use serde::Serialize;

use super::SinkError;
use super::spool::Stream;
use crate::job::{Event, EventKind, ItemRecord};

/// Writes chunk records to one stream and events to another.
pub struct JsonlSink {
    /// Chunk records (stdout or `--out FILE`).
    chunks: Box<dyn Write + Send>,
    /// Events (stderr or `--events FILE`).
    events: Box<dyn Write + Send>,
    /// Runs each event write, so a progress bar can be hidden while a line is printed.
    around_event: Box<EventWrapper>,
    /// Events are for a person at a terminal: only failures, one readable line each.
    readable: bool,
}

/// Something that runs a write, e.g. with a progress bar hidden.
type EventWrapper = dyn Fn(&mut dyn FnMut()) + Send;

impl JsonlSink {
    /// A sink writing records to `chunks` and events to `events`.
    #[must_use]
    pub fn new(chunks: Box<dyn Write + Send>, events: Box<dyn Write + Send>) -> Self {
        JsonlSink {
            chunks,
            events,
            around_event: Box::new(|write| write()),
            readable: false,
        }
    }

    /// Writes events for a person at a terminal instead of as JSON: one line per file that
    /// failed (its key, code and sentence); the rest is for the progress bar and the summary.
    #[must_use]
    pub fn with_readable_events(mut self) -> Self {
        self.readable = true;
        self
    }

    /// Calls `around` with each event write (e.g. `ProgressBar::suspend`).
    #[must_use]
    pub fn with_event_wrapper(
        mut self,
        around: impl Fn(&mut dyn FnMut()) + Send + 'static,
    ) -> Self {
        self.around_event = Box::new(around);
        self
    }

    /// Writes one catalog item line to the records output (buffered).
    ///
    /// # Errors
    /// When the output cannot be written.
    pub fn write_item(&mut self, item: &ItemRecord) -> Result<(), SinkError> {
        write_line(&mut self.chunks, item).map_err(|source| SinkError {
            what: "chunks",
            source,
        })
    }

    /// Writes one event line and flushes it, so watchers see progress as it happens.
    ///
    /// # Errors
    /// When the output cannot be written.
    pub fn write_event(&mut self, event: &Event) -> Result<(), SinkError> {
        if self.readable {
            return self.write_readable(event);
        }
        self.write_raw(&to_line(event)?)
    }

    /// An event as a person reads it: a failed file's line, or nothing.
    fn write_readable(&mut self, event: &Event) -> Result<(), SinkError> {
        let EventKind::FileError {
            error_code,
            message,
            ..
        } = &event.kind
        else {
            return Ok(());
        };
        let key = event
            .file
            .as_ref()
            .map_or("(the source)", |f| f.key.as_str());
        // Keys and messages come from outside (object names, a decoder's words): control
        // characters are shown escaped, never sent to the terminal.
        let line = format!("failed: {}: {error_code}: {}\n", shown(key), shown(message));
        self.write_raw(line.as_bytes())
    }

    /// Writes a whole `line` to the events stream at once, and flushes it: stderr is
    /// unbuffered, and an event written piece by piece (a write per JSON token) could have a
    /// log line land inside it.
    fn write_raw(&mut self, line: &[u8]) -> Result<(), SinkError> {
        let mut result = Ok(());
        let events = &mut self.events;
        (self.around_event)(&mut || {
            result = events.write_all(line).and_then(|()| events.flush());
        });
        result.map_err(|source| SinkError {
            what: "events",
            source,
        })
    }

    /// Writes one line serialized earlier (ending in a newline) to `stream`; event lines are
    /// flushed as [`Self::write_event`] does.
    ///
    /// # Errors
    /// When the output cannot be written.
    pub fn write_line(&mut self, stream: Stream, line: &[u8]) -> Result<(), SinkError> {
        match stream {
            Stream::Records => self.chunks.write_all(line).map_err(|source| SinkError {
                what: "chunks",
                source,
            }),
            Stream::Events if self.readable => {
                if let Ok(event) = serde_json::from_slice::<Event>(line) {
                    return self.write_readable(&event);
                }
                // Lines of events, as the sink wrote them, read back; one that did not would
                // be shown as it is rather than lost.
                let line = String::from_utf8_lossy(line);
                self.write_raw(format!("{}\n", shown(line.trim_end())).as_bytes())
            }
            Stream::Events => self.write_raw(line),
        }
    }

    /// Flushes both streams.
    ///
    /// # Errors
    /// When buffered output cannot be written.
    pub fn flush(&mut self) -> Result<(), SinkError> {
        self.chunks.flush().map_err(|source| SinkError {
            what: "chunks",
            source,
        })?;
        self.events.flush().map_err(|source| SinkError {
            what: "events",
            source,
        })
    }
}

/// `text` with its control characters escaped (`\n`, `\u{1b}`), for a terminal.
fn shown(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    shown
}

fn write_line(out: &mut dyn Write, value: &impl Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

/// `value` as one JSON line, the way the sink writes it.
///
/// # Errors
/// Never for records and events (their serialization cannot fail); kept for the type.
pub fn to_line(value: &impl Serialize) -> Result<Vec<u8>, SinkError> {
    let mut line = Vec::with_capacity(512);
    write_line(&mut line, value).map_err(|source| SinkError {
        what: "a line",
        source,
    })?;
    Ok(line)
}
