//! The text family through the stages: streamed when it can be, else read whole and parsed.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use super::{
    Cursor, Detected, Emitter, FileError, MAX_SEGMENT_BYTES, Outcome, Processing, Read, Request,
    SEGMENT_BYTES, Segment, Working, content_etag, file_info, records_of, send, send_blocking,
};
use crate::chunk::Pieces;
use crate::detect::{Family, TextHint};
use crate::error::SkipReason;
use crate::extract::{self, StreamDecoder};
use crate::job::ChunkRecord;
use crate::source::{ObjectMeta, SourceKind};

/// Texts up to this size are cut on the file's task rather than on a blocking thread (a cut
/// of 64 KiB of prose takes about 2 ms).
const INLINE_BYTES: usize = 64 * 1024;

impl Processing {
    /// Text of a text format: streamed through the chunker when it can be decoded piece by
    /// piece, else read whole (within `limits.max_text_object_bytes`) and parsed.
    pub(super) async fn read_text(
        &mut self,
        read: Read,
        detected: Detected,
        charset: Option<String>,
        out: &Emitter,
    ) -> Outcome {
        let Read {
            mut head,
            mut body,
            ended,
        } = read;
        let hint = detected.text_hint.unwrap_or(TextHint::Bytes);
        let text = detected.format.family() == Family::Text;
        // A large text object streams when its format is taken as it is and its encoding can
        // be decoded piece by piece (not UTF-32); anything else is parsed whole.
        let streamable = extract::streamable(detected.format);
        let stream = match streamable {
            Some(structure) if text && !ended => {
                StreamDecoder::for_head(&head, hint, charset.as_deref())
                    .map(|decoder| (structure, decoder))
            }
            _ => None,
        };
        let parsed_whole = text && streamable.is_none();
        let read_whole = parsed_whole || (text && !ended && stream.is_none());
        let limit = self.request.max_text_object_bytes;
        if read_whole && self.object.size.max(head.len() as u64) > limit {
            let why = if parsed_whole {
                format!("{}, which is parsed whole", detected.format.name())
            } else {
                "text in an encoding that is decoded whole (UTF-32)".to_owned()
            };
            return Outcome::Skipped(
                SkipReason::TooLarge,
                format!(
                    "the object is {} bytes of {why}, over limits.max_text_object_bytes ({limit})",
                    self.object.size
                ),
            );
        }
        if let Some((structure, decoder)) = stream {
            return self
                .stream(head, body, decoder, structure, detected, out)
                .await
                .unwrap_or_else(Outcome::Failed);
        }
        if !ended && text {
            let cap = usize::try_from(limit)
                .unwrap_or(usize::MAX)
                .saturating_add(1);
            match self.fill(&mut body, &mut head, cap).await {
                Ok(true) if head.len() as u64 <= limit => {}
                Ok(_) => {
                    return Outcome::Skipped(
                        SkipReason::TooLarge,
                        format!(
                            "the object grew past limits.max_text_object_bytes ({limit}) while being read"
                        ),
                    );
                }
                Err(err) => return Outcome::Failed(err),
            }
        }
        drop(body);
        self.object.size = head.len() as u64;
        if head.len() <= INLINE_BYTES {
            return self
                .cut_here(&head, detected, charset.as_deref(), out)
                .await;
        }
        let (object, kind, request) = (self.object.clone(), self.kind, Arc::clone(&self.request));
        let sender = out.clone();
        let slot = self.cpu_slot().await;
        let work = tokio::task::spawn_blocking(move || -> Result<Outcome, FileError> {
            let working = Working::on_core(slot);
            let cut = records_whole(&head, detected, charset.as_deref(), object, kind, &request);
            drop(working);
            let (records, at) = match cut {
                Ok(cut) => cut,
                Err(ended) => return Ok(ended),
            };
            send_blocking(records, &request, &sender)?;
            Ok(at.ready())
        });
        self.records_cut(work).await
    }

    /// Extracts and cuts a small text on this task, under a CPU slot: a blocking thread would
    /// cost two wake-ups across cores, more than the cut itself. A panic costs this file, as
    /// on a blocking thread.
    async fn cut_here(
        &mut self,
        head: &[u8],
        detected: Detected,
        charset: Option<&str>,
        out: &Emitter,
    ) -> Outcome {
        let working = Working::on_core(self.cpu_slot().await);
        let cut = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let object = self.object.clone();
            records_whole(head, detected, charset, object, self.kind, &self.request)
        }));
        drop(working);
        let (records, at) = match cut {
            Ok(Ok(cut)) => cut,
            Ok(Err(ended)) => return ended,
            Err(_) => return Outcome::Failed(self.crashed()),
        };
        if let Err(err) = send(records, &self.request, out).await {
            return Outcome::Failed(err);
        }
        self.emitted = at.index;
        at.ready()
    }

    /// Streams text through the chunker segment by segment: memory is bounded by
    /// [`SEGMENT_BYTES`] and [`AHEAD_BYTES`], not by the object's size.
    ///
    /// A segment ends where the reading stopped once enough text was there, so its ends do not
    /// depend on timing. While a segment is cut, the text after it is read ahead in parts, each
    /// tokenized under a CPU slot of its own, so that every core has work: the cuts that follow
    /// read their pieces instead of tokenizing (see [`crate::chunk::Chunker::chunk_after`]).
    /// The chunks are the same; they are only ready sooner. A segment's records are sent
    /// while the next one is cut, so that the cut, which the stream waits for, does not also
    /// wait for the writer.
    async fn stream(
        &mut self,
        head: Vec<u8>,
        mut body: BoxStream<'static, Result<Bytes, FileError>>,
        mut decoder: StreamDecoder,
        structure: crate::chunk::Structure,
        detected: Detected,
        out: &Emitter,
    ) -> Result<Outcome, FileError> {
        let file = Arc::new(file_info(&self.object, detected, self.kind));
        let mut read = Decoded::with_capacity(SEGMENT_BYTES + SEGMENT_BYTES / 4);
        read.push(&mut decoder, &head)?;
        drop(head);
        let mut at = Cursor::default();
        // Text to gather before cutting; it grows when a cut could not tell where its chunks
        // end (a segment of one or two chunks), up to a cap where the cut is forced. A segment
        // never ends before the previous one did (`floor`).
        let (mut want, mut floor) = (SEGMENT_BYTES, 0);
        let mut ahead = Ahead::default();
        // With one core there is none to tokenize on meanwhile: reading ahead would only take
        // memory.
        let read_ahead = crate::config::cpu_slots() > 1;
        // The vectors of the last segment's index, lent to the next one's.
        let mut spent = Pieces::default();
        // The records of the last segment cut, not sent yet. They leave before anything that
        // ends the stream, an error included.
        let mut unsent = Vec::new();
        let request = Arc::clone(&self.request);
        loop {
            let cut_at = loop {
                if let Some(cut_at) = read.segment_end(want, floor) {
                    break cut_at;
                }
                let taken = self
                    .take_ahead(&mut ahead, &mut read, at.offset, &mut body, &mut decoder)
                    .await;
                if let Err(err) = taken {
                    self.emitted += send(std::mem::take(&mut unsent), &request, out).await?;
                    return Err(err);
                }
            };
            let SegmentEnd {
                end,
                last,
                finished,
            } = cut_at;
            let (cutting, file) = (Arc::clone(&request), Arc::clone(&file));
            let slot = self.cpu_slot().await;
            let mut text = std::mem::take(&mut read.text);
            let (base, past_end) = (at.offset, text.len() - end);
            let tokenized: Vec<Tokenized> = ahead.tokenized.iter().cloned().collect();
            let lent = std::mem::take(&mut spent);
            let work = tokio::task::spawn_blocking(move || {
                let working = Working::on_core(slot);
                let segment = Segment {
                    last,
                    ahead: std::cell::Cell::new(Some(run_of(&tokenized, base, end, lent))),
                    ..Segment::whole(&text[..end], structure)
                };
                let (records, done) = records_of(&segment, &file, &cutting, &mut at);
                drop(working);
                let spent = segment.ahead.take().map(|(_, pieces)| pieces);
                text.drain(..done);
                Ok((text, at, done, spent.unwrap_or_default(), records))
            });
            // Meanwhile: the text after the segment, read ahead and tokenized in parts, when a
            // CPU slot is free for them (other files' cuts come first: reading ahead for a file
            // that would wait for a slot only takes memory). A read error is reported after this
            // segment's records, as it would have been.
            let spare = self.request.cpu.available_permits() > 0 || !ahead.parts.is_empty();
            let reading = async {
                while read_ahead
                    && spare
                    && !finished
                    && !ahead.ended
                    && ahead.bytes + past_end < AHEAD_BYTES
                {
                    self.read_part(&mut ahead, &mut body, &mut decoder).await?;
                }
                Ok(())
            };
            let (unread, delivered) =
                tokio::join!(reading, send(std::mem::take(&mut unsent), &request, out));
            self.emitted += delivered?;
            let done;
            (read.text, at, done, spent, unsent) = self.blocking(work).await?;
            read.marks.retain_mut(|mark| match mark.checked_sub(done) {
                Some(moved) => {
                    *mark = moved;
                    true
                }
                None => false,
            });
            // Whatever ends the stream (its end, or an error met reading ahead), the records of
            // the segment just cut leave first.
            if finished || unread.is_err() {
                self.emitted += send(std::mem::take(&mut unsent), &request, out).await?;
                unread?;
                return Ok(Outcome::Ready {
                    chunks: at.index,
                    tokens: at.tokens,
                });
            }
            while let Some(part) = ahead.tokenized.front()
                && part.start + part.len <= at.offset
            {
                if let Some(part) = ahead.tokenized.pop_front() {
                    ahead.spare.give(part);
                }
            }
            (want, floor) = if done == 0 {
                (end + SEGMENT_BYTES, end)
            } else {
                (SEGMENT_BYTES, end - done)
            };
        }
    }

    /// Adds the next text to `read` (which starts at `base` in the object's text): the oldest
    /// part read ahead, else what was read past the parts, else a piece of the body.
    async fn take_ahead(
        &mut self,
        ahead: &mut Ahead,
        read: &mut Decoded,
        base: usize,
        body: &mut BoxStream<'static, Result<Bytes, FileError>>,
        decoder: &mut StreamDecoder,
    ) -> Result<(), FileError> {
        if let Some(part) = ahead.parts.pop_front() {
            let (text, pieces) = self.blocking(part.job).await?;
            ahead.bytes -= text.text.len();
            ahead.tokenized.push_back(Tokenized {
                start: base + read.text.len(),
                len: text.text.len(),
                pieces: pieces.map(Arc::new),
                joins: part.joins,
            });
            read.append(&text);
            ahead.spare.give_text(text.text);
            return Ok(());
        }
        // Text that joins `read` other than in a part has no pieces: the next part cannot
        // continue the last one's.
        ahead.joinable = false;
        if !ahead.carry.text.is_empty() {
            read.append(&std::mem::take(&mut ahead.carry));
            return Ok(());
        }
        self.read_piece(body, decoder, read).await?;
        ahead.ended |= read.ended;
        Ok(())
    }

    /// Reads the next part of the body into `ahead`: once [`PART_BYTES`] are read, the text up
    /// to the start of its last safe line (what follows stays for the next part), or all of
    /// it at the end of the body; then tokenizes it on a blocking thread under a CPU slot.
    async fn read_part(
        &mut self,
        ahead: &mut Ahead,
        body: &mut BoxStream<'static, Result<Bytes, FileError>>,
        decoder: &mut StreamDecoder,
    ) -> Result<(), FileError> {
        let carry = &mut ahead.carry;
        let (part, until) = loop {
            if carry.ended {
                let until = carry.text.len();
                ahead.ended = true;
                break (std::mem::take(carry), Some(until));
            }
            if carry.text.len() >= PART_BYTES {
                let rest = ahead.spare.text();
                if let Some(line) = crate::chunk::safe_line_start(&carry.text, 0) {
                    break (carry.take_until(line, rest), Some(line));
                }
                if carry.text.len() >= MAX_PART_BYTES {
                    break (carry.take_until(carry.text.len(), rest), None);
                }
                ahead.spare.give_text(rest);
            }
            self.read_piece(body, decoder, carry).await?;
        };
        let joins = std::mem::replace(&mut ahead.joinable, until.is_some());
        let len = until.unwrap_or(part.text.len());
        ahead.bytes += len;
        let (chunker, cpu) = (self.request.chunker.clone(), Arc::clone(&self.request.cpu));
        let spent = ahead.spare.pieces.pop().unwrap_or_default();
        let crashed = self.crashed();
        // The slot is waited for here, not on a blocking thread: parts waiting for a slot do
        // not each hold a thread (and its allocator arena).
        let job = tokio::spawn(async move {
            let slot = match until {
                Some(_) => cpu.acquire_owned().await.ok(),
                None => None,
            };
            let work = tokio::task::spawn_blocking(move || {
                let mut part = part;
                let working = Working::on_core(slot);
                let pieces =
                    until.and_then(|until| chunker.tokenize_part(&part.text, until, spent));
                drop(working);
                part.text.truncate(len);
                (part, pieces)
            });
            work.await.map_err(|_| crashed)
        });
        ahead.parts.push_back(Part { job, joins });
        Ok(())
    }

    /// Reads one piece of the body into `read`; at the end, flushes the decoder instead.
    async fn read_piece(
        &mut self,
        body: &mut BoxStream<'static, Result<Bytes, FileError>>,
        decoder: &mut StreamDecoder,
        read: &mut Decoded,
    ) -> Result<(), FileError> {
        let started = std::time::Instant::now();
        let next = body.next().await;
        crate::telemetry::timed(crate::telemetry::Stage::Download, started.elapsed());
        if let Some(piece) = next {
            let piece = piece?;
            self.bytes_read += piece.len() as u64;
            read.push(decoder, &piece)
        } else {
            decoder.push(&[], true, &mut read.text)?;
            read.ended = true;
            Ok(())
        }
    }
}

/// Text read ahead of a streamed segment is tokenized in parts of about this size, each under
/// a CPU slot of its own: while one core cuts a segment, the others tokenize what follows.
const PART_BYTES: usize = 1024 * 1024;

/// A part that holds no safe place to end (see [`crate::chunk::safe_line_start`]) by this
/// size ends there all the same, untokenized: the cut of its segment tokenizes it.
const MAX_PART_BYTES: usize = 4 * PART_BYTES;

/// Text read ahead past the end of the segment being cut, at most: a segment and a half, so
/// that the next segment is tokenized by the time its cut can start and part of the one after
/// keeps the other cores busy meanwhile.
const AHEAD_BYTES: usize = SEGMENT_BYTES + SEGMENT_BYTES / 2;

/// The text of a streamed object read past the segment being cut.
#[derive(Default)]
struct Ahead {
    /// Parts read and being tokenized, in order; their text follows the text read.
    parts: VecDeque<Part>,
    /// Text read past the parts.
    carry: Decoded,
    /// Bytes in `parts`.
    bytes: usize,
    /// The body was read to its end.
    ended: bool,
    /// The last part's pieces stopped at its end: the next part's continue them.
    joinable: bool,
    /// Pieces of the parts whose text joined the text read, in order, until it is cut.
    tokenized: VecDeque<Tokenized>,
    spare: Spare,
}

/// Buffers of parts done with, used again by the next parts: a stream allocates its buffers
/// once, on one thread, rather than a few megabytes per part on whichever thread tokenizes.
#[derive(Default)]
struct Spare {
    pieces: Vec<Pieces>,
    texts: Vec<String>,
}

/// Buffers of each kind kept, at most.
const SPARE_BUFFERS: usize = 4;

impl Spare {
    fn give(&mut self, part: Tokenized) {
        if let Some(pieces) = part.pieces.and_then(|pieces| Arc::try_unwrap(pieces).ok())
            && self.pieces.len() < SPARE_BUFFERS
        {
            self.pieces.push(pieces);
        }
    }

    fn give_text(&mut self, mut text: String) {
        if self.texts.len() < SPARE_BUFFERS {
            text.clear();
            self.texts.push(text);
        }
    }

    fn text(&mut self) -> String {
        self.texts.pop().unwrap_or_default()
    }
}

/// A part read ahead, being tokenized: its text comes back with its pieces (`None`: it had
/// no safe place to end).
struct Part {
    job: tokio::task::JoinHandle<Result<(Decoded, Option<Pieces>), FileError>>,
    /// Its pieces continue those of the part before it.
    joins: bool,
}

/// The pieces of a part whose text joined the text read.
#[derive(Clone)]
struct Tokenized {
    /// Where its text starts in the object's text.
    start: usize,
    /// Its length.
    len: usize,
    pieces: Option<Arc<Pieces>>,
    /// Its pieces continue those of the part before it.
    joins: bool,
}

/// What a segment (bytes `base..base + end` of the object's text) can read off the parts
/// tokenized ahead, in `run`'s vectors: where in the segment the pieces start, and those of
/// one unbroken run of parts from there to a boundary at or before the segment's end. From any
/// boundary on, a text splits as its pieces say (the pre-tokenizer has no look-behind); the
/// cut tokenizes the rest. With nothing to read off, the offset is the segment's end and the
/// vectors are only lent.
fn run_of(parts: &[Tokenized], base: usize, end: usize, mut run: Pieces) -> (usize, Pieces) {
    run.clear();
    let mut from = None;
    // Where the run's text ends, in the object's text.
    let mut reached = 0;
    for part in parts {
        let stop = part.start + part.len;
        if stop <= base {
            continue;
        }
        if part.start >= base + end {
            break;
        }
        let (lo, pieces) = match (&part.pieces, from) {
            (Some(pieces), None) => {
                let lo = pieces.boundary_at_or_after(base.saturating_sub(part.start));
                (lo, pieces)
            }
            (Some(pieces), Some(_)) if part.joins && part.start == reached => (0, pieces),
            (None, None) => continue,
            _ => break,
        };
        let hi = if stop <= base + end {
            pieces.text_len()
        } else {
            pieces.boundary_at_or_before(base + end - part.start)
        };
        if hi > lo {
            from.get_or_insert(part.start + lo - base);
            run.append_range(pieces, lo, hi);
            reached = part.start + hi;
        }
        if hi < pieces.text_len() {
            break;
        }
    }
    (from.unwrap_or(end), run)
}

/// Decoded text of a streamed object, and where the reading of each piece of the body ended
/// in it: the places a segment may end.
#[derive(Default)]
struct Decoded {
    text: String,
    /// Offsets in `text` after each piece read (not after the final flush).
    marks: Vec<usize>,
    /// The body ended and the decoder was flushed: `text` is all there is.
    ended: bool,
}

/// Where a segment ends.
#[derive(Clone, Copy)]
struct SegmentEnd {
    /// Its end in the text read.
    end: usize,
    /// No chunk is held back for the next segment.
    last: bool,
    /// The text ends here.
    finished: bool,
}

impl Decoded {
    fn with_capacity(bytes: usize) -> Self {
        Decoded {
            text: String::with_capacity(bytes),
            marks: Vec::new(),
            ended: false,
        }
    }

    fn push(&mut self, decoder: &mut StreamDecoder, piece: &[u8]) -> Result<(), FileError> {
        decoder.push(piece, false, &mut self.text)?;
        self.marks.push(self.text.len());
        Ok(())
    }

    /// Leaves the text from `at` on (and the marks past it) here, in `buffer`, and returns the
    /// rest: all the text still, for a tokenizer to see what follows `at`, with the marks up
    /// to it.
    fn take_until(&mut self, at: usize, mut buffer: String) -> Decoded {
        buffer.push_str(&self.text[at..]);
        let rest = Decoded {
            text: buffer,
            marks: self
                .marks
                .iter()
                .filter(|&&mark| mark > at)
                .map(|mark| mark - at)
                .collect(),
            ended: false,
        };
        self.marks.retain(|&mark| mark <= at);
        std::mem::replace(self, rest)
    }

    fn append(&mut self, next: &Decoded) {
        let from = self.text.len();
        self.text.push_str(&next.text);
        self.marks.extend(next.marks.iter().map(|mark| from + mark));
        self.ended = next.ended;
    }

    /// Where the next segment ends: the first place the reading stopped with at least `want`
    /// bytes read and not before `floor`; else, once the body ended, at the end. `None` while
    /// more must be read.
    fn segment_end(&self, want: usize, floor: usize) -> Option<SegmentEnd> {
        let at = want.max(floor);
        if let Some(&end) = self.marks.iter().find(|&&mark| mark >= at) {
            return Some(SegmentEnd {
                end,
                last: end >= MAX_SEGMENT_BYTES,
                finished: false,
            });
        }
        self.ended.then_some(SegmentEnd {
            end: self.text.len(),
            last: true,
            finished: true,
        })
    }
}

/// The records of a text read whole: extracted, named by a hash of its content when it has no
/// ETag, and cut; or how the file ends when it cannot be extracted.
fn records_whole(
    head: &[u8],
    detected: Detected,
    charset: Option<&str>,
    mut object: ObjectMeta,
    kind: SourceKind,
    request: &Request,
) -> Result<(Vec<ChunkRecord>, Cursor), Outcome> {
    let started = std::time::Instant::now();
    let extracted = extract::extract(head, detected, charset, request.max_text_bytes);
    crate::telemetry::timed(crate::telemetry::Stage::Extract, started.elapsed());
    let extracted = extracted.map_err(Outcome::from)?;
    if object.etag.is_none() {
        object.etag = Some(content_etag(head));
    }
    let file = Arc::new(file_info(&object, detected, kind));
    let mut at = Cursor::default();
    let (records, _) = records_of(&Segment::extracted(&extracted), &file, request, &mut at);
    Ok((records, at))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{Pieces, Tokenized, run_of};
    use crate::chunk::{Chunker, Encoding, Structure, safe_line_start};

    /// Words, blanks, line breaks and the characters a line may start with that matter to the
    /// pre-tokenizer (blank, `/`, a combining mark, digits, contractions, CJK, emoji).
    fn word() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "river",
            "Stone",
            " the",
            "  ",
            "\n",
            "\n\n",
            " \n",
            "\t",
            "/",
            "//x",
            "'ll",
            "I'M",
            "12345",
            "3.14",
            ".",
            "?!",
            "日本語",
            "\u{301}",
            "👩\u{200d}👧",
            "\u{a0}",
            "\r\n",
            "- ",
            "# ",
            "\u{2028}",
            "end.\n",
        ])
    }

    /// Parts as `read_part` makes them: `part` bytes or more, up to the last safe line start
    /// read (the reading goes on by `part` bytes at a time), untokenized when there is none by
    /// four times that, and left untokenized when `skip` says so (text that joined the read
    /// text directly).
    fn parts_of(chunker: &Chunker, text: &str, part: usize, skip: &[bool]) -> Vec<Tokenized> {
        let boundary = |mut i: usize| {
            i = i.min(text.len());
            while !text.is_char_boundary(i) {
                i += 1;
            }
            i
        };
        let (mut parts, mut start, mut joinable) = (Vec::new(), 0, false);
        while start < text.len() {
            let mut read = boundary(start + part);
            let (len, until) = loop {
                if read == text.len() {
                    break (read - start, Some(read - start));
                }
                if let Some(line) = safe_line_start(&text[start..read], 0) {
                    break (line, Some(line));
                }
                if read - start >= 4 * part {
                    break (read - start, None);
                }
                read = boundary(read + part);
            };
            let skipped = skip.get(parts.len()).copied().unwrap_or(false);
            let pieces = until.filter(|_| !skipped).map(|until| {
                chunker
                    .tokenize_part(&text[start..read], until, Pieces::default())
                    .unwrap()
            });
            let joins = std::mem::replace(&mut joinable, pieces.is_some());
            parts.push(Tokenized {
                start,
                len,
                pieces: pieces.map(std::sync::Arc::new),
                joins,
            });
            start += len;
        }
        parts
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Parts tokenized on their own and joined are the pieces of the whole text.
        #[test]
        fn parts_join_into_the_pieces_of_the_whole(words in prop::collection::vec(word(), 0..300), part in 1usize..200, o200k in any::<bool>()) {
            let encoding = if o200k { Encoding::O200kBase } else { Encoding::Cl100kBase };
            let chunker = Chunker::new(encoding, 16, 4).unwrap();
            let text = words.concat();
            let parts = parts_of(&chunker, &text, part, &[]);
            prop_assume!(parts.iter().all(|part| part.pieces.is_some()));
            let mut joined = Pieces::default();
            for part in parts {
                let pieces = part.pieces.as_deref().unwrap();
                joined.append_range(pieces, 0, pieces.text_len());
            }
            prop_assert_eq!(Some(joined), chunker.tokenize_part(&text, text.len(), Pieces::default()));
        }

        /// A segment anywhere in the text cut with the pieces `run_of` reads off the parts
        /// (some untokenized, some that do not continue the one before) has the chunks of the
        /// segment tokenized whole.
        #[test]
        fn a_segment_cut_with_pieces_read_off_the_parts_has_the_same_chunks(words in prop::collection::vec(word(), 1..300), part in 1usize..200, skip in prop::collection::vec(prop::bool::weighted(0.2), 0..20), start in 0usize..=1000, length in 0usize..=1000, markdown in any::<bool>(), o200k in any::<bool>()) {
            let encoding = if o200k { Encoding::O200kBase } else { Encoding::Cl100kBase };
            let chunker = Chunker::new(encoding, 16, 4).unwrap();
            let structure = if markdown { Structure::Markdown } else { Structure::Plain };
            let text = words.concat();
            let parts = parts_of(&chunker, &text, part, &skip);
            let at = |permille: usize| {
                let mut i = text.len() * permille.min(1000) / 1000;
                while !text.is_char_boundary(i) {
                    i -= 1;
                }
                i
            };
            let base = at(start);
            let end = at(start + length).max(base) - base;
            let (from, run) = run_of(&parts, base, end, Pieces::default());
            let segment = &text[base..base + end];
            prop_assert_eq!(
                chunker.chunk_after(segment, structure, 16, from, run).0,
                chunker.chunk(segment, structure)
            );
        }
    }
}
