//! Output of files waiting for their turn at the writer.
//!
//! The one-shot writes each file's lines contiguously and in listing order, but files are
//! processed concurrently: a file behind a large one would stop once its channel filled, and
//! leave its core idle until the large one finished. Instead its lines wait here, serialized:
//! in memory up to a budget shared by every waiting file, then in one unnamed temporary file
//! (reclaimed whenever nothing is left in it). Memory stays bounded whatever the files' sizes.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;

use super::{JsonlSink, SinkError};

/// Which output a line belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Chunk records.
    Records,
    /// Events.
    Events,
}

/// The lines of one file, in the order they came.
#[derive(Debug, Default)]
pub struct Spool {
    lines: VecDeque<Line>,
}

#[derive(Debug)]
enum Line {
    Memory(Stream, Vec<u8>),
    Disk(Stream, u64, usize),
}

impl Spool {
    /// Whether no line waits.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// Where the spools of one run keep their lines: a memory budget, then a temporary file.
#[derive(Debug)]
pub struct Spools {
    /// Bytes of lines the spools may hold in memory together.
    budget: usize,
    /// Bytes they hold now.
    in_memory: usize,
    file: Option<File>,
    /// End of the temporary file's contents.
    end: u64,
    /// Lines in the temporary file not written out yet.
    on_disk: usize,
    /// Bytes ever written to the temporary file (for the run's figures).
    spilled: u64,
}

fn spool_error(source: std::io::Error) -> SinkError {
    SinkError {
        what: "the spool file (lines waiting for their turn, in the temporary folder)",
        source,
    }
}

impl Spools {
    /// Spools that hold up to `budget` bytes in memory together.
    #[must_use]
    pub fn new(budget: usize) -> Self {
        Spools {
            budget,
            in_memory: 0,
            file: None,
            end: 0,
            on_disk: 0,
            spilled: 0,
        }
    }

    /// Adds a serialized `line` (ending in a newline) to `spool`.
    ///
    /// # Errors
    /// When the line does not fit in memory and the temporary file cannot be written.
    pub fn push(
        &mut self,
        spool: &mut Spool,
        stream: Stream,
        line: Vec<u8>,
    ) -> Result<(), SinkError> {
        // Counted by capacity: what the line holds in memory, not only what it says.
        if self.in_memory + line.capacity() <= self.budget {
            self.in_memory += line.capacity();
            spool.lines.push_back(Line::Memory(stream, line));
            return Ok(());
        }
        let file = match &mut self.file {
            Some(file) => file,
            none => none.insert(tempfile::tempfile().map_err(spool_error)?),
        };
        file.write_all_at(&line, self.end).map_err(spool_error)?;
        spool
            .lines
            .push_back(Line::Disk(stream, self.end, line.len()));
        self.end += line.len() as u64;
        self.spilled += line.len() as u64;
        self.on_disk += 1;
        Ok(())
    }

    /// Writes every line of `spool` to `sink`, in order.
    ///
    /// # Errors
    /// When the sink or the temporary file fails.
    pub fn drain(&mut self, spool: &mut Spool, sink: &mut JsonlSink) -> Result<(), SinkError> {
        let mut buffer = Vec::new();
        while let Some(line) = spool.lines.pop_front() {
            match line {
                Line::Memory(stream, bytes) => {
                    self.in_memory -= bytes.capacity();
                    sink.write_line(stream, &bytes)?;
                }
                Line::Disk(stream, at, len) => {
                    buffer.resize(len, 0);
                    let file = self.file.as_ref().ok_or_else(|| {
                        spool_error(std::io::Error::other("the spool file is gone"))
                    })?;
                    file.read_exact_at(&mut buffer, at).map_err(spool_error)?;
                    self.on_disk -= 1;
                    sink.write_line(stream, &buffer)?;
                }
            }
        }
        if self.on_disk == 0 && self.end > 0 {
            // Nothing waits on disk: start the file over instead of letting it grow.
            if let Some(file) = &self.file {
                file.set_len(0).map_err(spool_error)?;
            }
            self.end = 0;
        }
        Ok(())
    }

    /// Bytes that went through the temporary file so far.
    #[must_use]
    pub fn spilled(&self) -> u64 {
        self.spilled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_come_out_in_order_per_stream_past_the_memory_budget() {
        let (records, events) = (Shared::default(), Shared::default());
        let mut sink = JsonlSink::new(Box::new(records.clone()), Box::new(events.clone()));
        let mut spools = Spools::new(100);
        let (mut a, mut b) = (Spool::default(), Spool::default());
        let mut want_records = Vec::new();
        for i in 0..50 {
            let line = format!("{{\"record\":{i}}}\n").into_bytes();
            want_records.extend_from_slice(&line);
            spools.push(&mut a, Stream::Records, line).unwrap();
            spools
                .push(
                    &mut b,
                    Stream::Events,
                    format!("{{\"b\":{i}}}\n").into_bytes(),
                )
                .unwrap();
        }
        spools
            .push(&mut a, Stream::Events, b"{\"event\":\"done\"}\n".to_vec())
            .unwrap();
        assert!(spools.in_memory <= 100, "{} bytes held", spools.in_memory);
        assert!(spools.spilled() > 1000, "most lines went to disk");
        spools.drain(&mut a, &mut sink).unwrap();
        assert!(a.is_empty());
        assert_eq!(*records.0.lock().unwrap(), want_records);
        assert_eq!(*events.0.lock().unwrap(), b"{\"event\":\"done\"}\n");
        // `b` still waits, so the file keeps its contents; once drained it starts over.
        assert!(spools.end > 0);
        spools.drain(&mut b, &mut sink).unwrap();
        assert_eq!(spools.end, 0);
        assert_eq!(spools.in_memory, 0);
        let events = String::from_utf8(events.0.lock().unwrap().clone()).unwrap();
        assert_eq!(events.lines().count(), 51);
        assert!(events.ends_with("{\"b\":49}\n"));
    }
}
