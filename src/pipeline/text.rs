//! The text family through the stages: streamed when it can be, else read whole and parsed.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use super::{
    Cursor, Detected, Emitted, Emitter, FileError, MAX_SEGMENT_BYTES, Outcome, Processing, Read,
    Request, SEGMENT_BYTES, Segment, closed, content_etag, cut, file_info, records_of,
    send_blocking,
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
            let cut = records_whole(&head, detected, charset.as_deref(), object, kind, &request);
            drop(slot);
            let (records, at) = match cut {
                Ok(cut) => cut,
                Err(ended) => return Ok(ended),
            };
            send_blocking(records, &sender)?;
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
        let slot = self.cpu_slot().await;
        let cut = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let object = self.object.clone();
            records_whole(head, detected, charset, object, self.kind, &self.request)
        }));
        drop(slot);
        let (records, at) = match cut {
            Ok(Ok(cut)) => cut,
            Ok(Err(ended)) => return ended,
            Err(_) => return Outcome::Failed(self.crashed()),
        };
        for record in records {
            if out.send(Emitted::Record(Box::new(record))).await.is_err() {
                return Outcome::Failed(closed());
            }
        }
        self.emitted = at.index;
        at.ready()
    }

    /// Streams text through the chunker segment by segment: memory is bounded by
    /// [`SEGMENT_BYTES`], not by the object's size.
    ///
    /// A segment ends where the reading stopped once enough text was there, so its ends do not
    /// depend on timing. When a second CPU slot is free while a segment is cut, the next
    /// segment's text is read and tokenized on it meanwhile: its chunks are the same (see
    /// [`crate::chunk::Chunker::chunk_after`]), they are only ready sooner.
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
        let mut ahead: Option<(usize, Pieces)> = None;
        // The read-ahead's buffers, used again segment after segment.
        let mut spare = Spare::default();
        loop {
            let cut_at = loop {
                if let Some(cut_at) = read.segment_end(want, floor) {
                    break cut_at;
                }
                self.read_piece(&mut body, &mut decoder, &mut read).await?;
            };
            let SegmentEnd {
                end,
                last,
                finished,
            } = cut_at;
            let (request, file, sender) =
                (Arc::clone(&self.request), Arc::clone(&file), out.clone());
            let slot = self.cpu_slot().await;
            let mut text = std::mem::take(&mut read.text);
            // The next segment ends within SEGMENT_BYTES of this one's end.
            let wanted = (end + SEGMENT_BYTES).saturating_sub(text.len());
            let read_ahead =
                !finished && !read.ended && wanted > 0 && self.request.cpu.available_permits() > 0;
            // Nothing tokenized ahead: the segment's index is still built in the spare vectors.
            let tokenized = ahead
                .take()
                .or_else(|| Some((end, std::mem::take(&mut spare.pieces))));
            let work = tokio::task::spawn_blocking(move || {
                let segment = Segment {
                    last,
                    ahead: std::cell::Cell::new(tokenized),
                    ..Segment::whole(&text[..end], structure)
                };
                let done = cut(&segment, &file, &request, &mut at, slot, &sender)?;
                let spent = segment.ahead.take().map(|(_, pieces)| pieces);
                text.drain(..done);
                Ok((text, at, done, spent))
            });
            // Meanwhile: the next segment's text, tokenized under a slot of its own. A read
            // error is reported after this segment's records, as it would have been.
            let next = if read_ahead {
                let spare = std::mem::take(&mut spare);
                Some(
                    self.read_ahead(&mut body, &mut decoder, wanted, spare)
                        .await,
                )
            } else {
                None
            };
            let (done, spent);
            (read.text, at, done, spent) = self.blocking(work).await?;
            self.emitted = at.index;
            if let Some(spent) = spent {
                spare.pieces = spent;
            }
            read.marks.retain_mut(|mark| match mark.checked_sub(done) {
                Some(moved) => {
                    *mark = moved;
                    true
                }
                None => false,
            });
            if finished {
                return Ok(Outcome::Ready {
                    chunks: at.index,
                    tokens: at.tokens,
                });
            }
            if let Some(next) = next {
                let (next, pieces) = self.blocking(next?).await?;
                let from = read.text.len();
                read.append(&next);
                spare.text = next.text;
                ahead = pieces.map(|pieces| (from, pieces));
            }
            (want, floor) = if done == 0 {
                (end + SEGMENT_BYTES, end)
            } else {
                (SEGMENT_BYTES, end - done)
            };
        }
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

    /// Reads text until it holds a place to end at least `want` bytes in (or the body ends),
    /// then tokenizes it on a blocking thread under a CPU slot of its own, in `spare`'s
    /// buffers.
    async fn read_ahead(
        &mut self,
        body: &mut BoxStream<'static, Result<Bytes, FileError>>,
        decoder: &mut StreamDecoder,
        want: usize,
        spare: Spare,
    ) -> Result<tokio::task::JoinHandle<Result<(Decoded, Option<Pieces>), FileError>>, FileError>
    {
        let Spare { mut text, pieces } = spare;
        text.clear();
        text.reserve(want + want / 4);
        let mut next = Decoded {
            text,
            marks: Vec::new(),
            ended: false,
        };
        while !next.ended && next.marks.last().is_none_or(|&mark| mark < want) {
            self.read_piece(body, decoder, &mut next).await?;
        }
        let slot = if next.text.len() >= AHEAD_MIN_BYTES {
            Some(self.cpu_slot().await)
        } else {
            None
        };
        let chunker = self.request.chunker.clone();
        Ok(tokio::task::spawn_blocking(move || {
            let pieces = slot.map(|slot| {
                let pieces = chunker.tokenize_ahead(&next.text, pieces);
                drop(slot);
                pieces
            });
            Ok((next, pieces))
        }))
    }
}

/// Text read ahead shorter than this is tokenized with its segment.
const AHEAD_MIN_BYTES: usize = 64 * 1024;

/// Decoded text of a streamed object, and where the reading of each piece of the body ended
/// in it: the places a segment may end.
struct Decoded {
    text: String,
    /// Offsets in `text` after each piece read (not after the final flush).
    marks: Vec<usize>,
    /// The body ended and the decoder was flushed: `text` is all there is.
    ended: bool,
}

/// Buffers a stream's read-ahead uses again: its text, and the pieces of a segment cut.
#[derive(Default)]
struct Spare {
    text: String,
    pieces: Pieces,
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
    let file = file_info(&object, detected, kind);
    let mut at = Cursor::default();
    let (records, _) = records_of(&Segment::extracted(&extracted), &file, request, &mut at);
    Ok((records, at))
}
