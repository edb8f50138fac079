//! Chunked text into chunk records: ids, ranges, prefixes, sent in order.

use std::cell::Cell;
use std::ops::Range;
use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

use super::{Emitted, Emitter, Request, closed};
use crate::chunk::{Chunk, Chunker, Pieces, Structure};
use crate::error::{ErrorCode, FileError};
use crate::job::{ChunkRecord, ChunkingInfo, EncodedRecord, FileInfo, MediaInfo, SCHEMA_VERSION};
use crate::telemetry::Stage;

/// How far into a file's text the records have got.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Cursor {
    /// Index of the next chunk.
    pub(super) index: usize,
    /// Byte offset in the file's text of the text being cut.
    pub(super) offset: usize,
    /// Tokens emitted so far.
    pub(super) tokens: usize,
}

impl Cursor {
    /// How a file whose records all went out ends.
    pub(super) fn ready(self) -> super::Outcome {
        super::Outcome::Ready {
            chunks: self.index,
            tokens: self.tokens,
        }
    }
}

/// Text to cut: a whole file's, or a segment of a streamed one.
pub(super) struct Segment<'a> {
    pub(super) text: &'a str,
    pub(super) structure: crate::chunk::Structure,
    /// No text follows.
    pub(super) last: bool,
    /// Facts of the image or recording the text was recognised in.
    pub(super) media: Option<&'a MediaInfo>,
    /// For transcripts: where each spoken segment is in the text, and when it was said.
    pub(super) times: &'a [Timed],
    /// Where each page of a paged document starts in the text (empty: no pages).
    pub(super) pages: &'a [usize],
    /// Where each row or item starts in the text (empty: none).
    pub(super) items: &'a [usize],
    /// Streamed text: the text from this offset on, tokenized ahead on another core (an offset
    /// at or past the end: nothing was, the vectors are only lent). Taken by the cut, which
    /// builds the segment's index in its vectors and leaves them here, spent, for the next
    /// segment: a stream does not allocate an index per segment.
    pub(super) ahead: Cell<Option<(usize, Pieces)>>,
}

impl<'a> Segment<'a> {
    /// The whole text of a file as extracted, with its pages and rows.
    pub(super) fn extracted(extracted: &'a crate::extract::Extracted) -> Self {
        Segment {
            pages: &extracted.pages,
            items: &extracted.items,
            ..Segment::whole(&extracted.text, extracted.structure)
        }
    }

    /// A whole text of `structure` with no pages, rows, times or media.
    pub(super) fn whole(text: &'a str, structure: crate::chunk::Structure) -> Self {
        Segment {
            text,
            structure,
            last: true,
            media: None,
            times: &[],
            pages: &[],
            items: &[],
            ahead: Cell::new(None),
        }
    }
}

/// `record` as it goes on from the cut: encoded when it is final ([`Request::final_at_cut`]),
/// else as it is, for the embedding stage. One at a time, as it is sent, so that a record's
/// memory is used again by the next one's (encoding a segment's records at once holds both
/// forms of them all), and a streamed segment's records are encoded while the next segment is
/// cut, not on the cut's path.
///
/// # Errors
/// When it cannot be encoded.
pub(super) fn outgoing(record: ChunkRecord, request: &Request) -> Result<Emitted, FileError> {
    if request.final_at_cut() {
        encoded(record)
    } else {
        Ok(Emitted::Record(Box::new(record)))
    }
}

/// `record` as it leaves the pipeline.
///
/// # Errors
/// When it cannot be encoded.
pub(super) fn encoded(record: ChunkRecord) -> Result<Emitted, FileError> {
    let index = record.chunk_index;
    match EncodedRecord::new(record) {
        Ok(encoded) => Ok(Emitted::Encoded(Box::new(encoded))),
        Err(err) => Err(FileError::permanent(
            ErrorCode::Internal,
            format!("encoding chunk {index} as JSON: {err}"),
        )),
    }
}

/// Sends `records` in order, from a blocking thread, each as it goes on ([`outgoing`]).
///
/// # Errors
/// When a record cannot be encoded or the output was closed.
pub(super) fn send_blocking(
    records: Vec<ChunkRecord>,
    request: &Request,
    out: &Emitter,
) -> Result<(), FileError> {
    for record in records {
        out.blocking_send(outgoing(record, request)?)
            .map_err(|_| closed())?;
    }
    Ok(())
}

/// Sends `records` in order, from the file's task, each as it goes on ([`outgoing`]): how
/// many.
///
/// # Errors
/// When a record cannot be encoded or the output was closed.
pub(super) async fn send(
    records: Vec<ChunkRecord>,
    request: &Request,
    out: &Emitter,
) -> Result<usize, FileError> {
    let sent = records.len();
    for record in records {
        out.send(outgoing(record, request)?)
            .await
            .map_err(|_| closed())?;
    }
    Ok(sent)
}

/// The records of a segment (which starts at `at.offset` in the file's text), `at` moved past
/// them, and how many bytes of the segment are done with. Unless the segment is the last, its
/// final two chunks are held back: where they end depends on text not read yet.
pub(super) fn records_of(
    segment: &Segment<'_>,
    file: &Arc<FileInfo>,
    request: &Request,
    at: &mut Cursor,
) -> (Vec<ChunkRecord>, usize) {
    let &Segment { text, last, .. } = segment;
    let chunker = &request.chunker;
    let prefix = request.prepend_filename.then(|| {
        let name = file.key.rsplit('/').next().unwrap_or(&file.key);
        format!("{name}\n")
    });
    // The prefix counts toward chunk_size; one token of slack covers the rare merge across
    // the seam, and the final count below is exact either way.
    let capacity = prefix.as_ref().map_or(chunker.size(), |p| {
        chunker.size().saturating_sub(chunker.count(p) + 1).max(1)
    });
    let chunking = request.chunking();
    let started = std::time::Instant::now();
    let chunks = plan(segment, request, capacity);
    let keep = if last {
        chunks.len()
    } else {
        chunks.len().saturating_sub(2)
    };
    // Done with: everything when last; else up to the first chunk held back. With too few
    // chunks to tell where they end, only the blank text before the first one (if any).
    let done = if last {
        text.len()
    } else {
        chunks
            .get(keep)
            .map_or(text.len(), |chunk| chunk.range.start)
    };
    let mut records = Vec::with_capacity(keep);
    for chunk in &chunks[..keep] {
        let body = &text[chunk.range.clone()];
        let (text, token_count) = match &prefix {
            Some(prefix) => {
                let joined = format!("{prefix}{body}");
                let count = chunker.count(&joined);
                if count <= chunker.size() {
                    (joined, count)
                } else {
                    (body.to_owned(), chunk.token_count)
                }
            }
            None => (body.to_owned(), chunk.token_count),
        };
        let range = at.offset + chunk.range.start..at.offset + chunk.range.end;
        let record = ChunkRecord {
            schema_version: SCHEMA_VERSION,
            chunk_id: chunk_id(file, &chunking, prefix.is_some(), at.index, &range),
            request_id: request.request_id.clone(),
            customer_id: request.customer_id.clone(),
            data_source_id: request.data_source_id.clone(),
            file: Arc::clone(file),
            chunk_index: at.index,
            text,
            token_count,
            range: [range.start, range.end],
            page: page_of(segment.pages, chunk.range.start),
            last_page: page_of(
                segment.pages,
                chunk.range.end.saturating_sub(1).max(chunk.range.start),
            ),
            time_range_ms: time_range(segment.times, &chunk.range),
            tags: request.tags.clone(),
            embedding: None,
            embedding_model: None,
            chunking,
            media: segment.media.cloned(),
        };
        at.index += 1;
        at.tokens += token_count;
        records.push(record);
    }
    crate::telemetry::timed(Stage::Chunk, started.elapsed());
    at.offset += done;
    (records, done)
}

/// Cuts a whole text (a segment that is the last) into records under `slot`, on a core of its
/// own where slots have them ([`crate::cores`]): how the file ends, with its counts.
///
/// # Errors
/// When the output was closed.
pub(super) fn cut_whole(
    segment: &Segment<'_>,
    file: &Arc<FileInfo>,
    request: &Request,
    slot: Option<OwnedSemaphorePermit>,
    out: &Emitter,
) -> Result<super::Outcome, FileError> {
    let working = super::Working::on_core(slot);
    let mut at = Cursor::default();
    let (records, _) = records_of(segment, file, request, &mut at);
    // The CPU work is done: free the slot before waiting for the writer, which may be busy
    // with another file that needs a slot to finish.
    drop(working);
    send_blocking(records, request, out)?;
    Ok(at.ready())
}

/// Same object version + same options + same place ⇒ same id.
pub(super) fn chunk_id(
    file: &FileInfo,
    chunking: &ChunkingInfo,
    prepended: bool,
    index: usize,
    range: &std::ops::Range<usize>,
) -> String {
    let mut hasher = blake3::Hasher::new();
    for part in [
        "ingestd-chunk-v1",
        file.bucket.as_deref().unwrap_or(""),
        &file.key,
        file.etag.as_deref().unwrap_or(""),
        chunking.encoding.as_str(),
        &chunking.chunk_size.to_string(),
        &chunking.chunk_overlap.to_string(),
        if prepended { "prepend" } else { "" },
        &index.to_string(),
        &format!("{}-{}", range.start, range.end),
    ] {
        hasher.update(part.as_bytes());
        hasher.update(&[0]);
    }
    hasher.finalize().to_hex()[..32].to_owned()
}

/// A transcript segment: its bytes in the transcript, and when it was said (ms).
pub(super) type Timed = (std::ops::Range<usize>, [u64; 2]);

/// The time a chunk of a transcript covers: from the first segment it touches to the last.
fn time_range(times: &[Timed], range: &std::ops::Range<usize>) -> Option<[u64; 2]> {
    let mut touched = times
        .iter()
        .filter(|(bytes, _)| bytes.start < range.end && range.start < bytes.end);
    let mut span = touched.next()?.1;
    for (_, [start, end]) in touched {
        span = [span[0].min(*start), span[1].max(*end)];
    }
    Some(span)
}

/// The page (from 1) of a paged text that byte `offset` is on; `None` without pages.
fn page_of(pages: &[usize], offset: usize) -> Option<u32> {
    if pages.is_empty() {
        return None;
    }
    let page = pages.partition_point(|&start| start <= offset).max(1);
    u32::try_from(page).ok()
}

/// Where the chunks of a segment fall: along rows or items when the request asks for them
/// and the text has them; within pages when the request keeps chunks to a page and the text
/// has pages; else wherever the chunker finds best.
fn plan(segment: &Segment<'_>, request: &Request, capacity: usize) -> Vec<Chunk> {
    let chunker = &request.chunker;
    let text = segment.text;
    if let Some(max_items) = request.bounds.rows
        && !segment.items.is_empty()
    {
        let breaks = if request.bounds.pages {
            segment.pages
        } else {
            &[]
        };
        return rows(chunker, text, segment.items, breaks, capacity, max_items);
    }
    if request.bounds.pages && segment.pages.len() > 1 {
        let mut chunks = Vec::new();
        for (start, end) in spans(segment.pages, text.len()) {
            let page = &text[start..end];
            chunks.extend(
                chunker
                    .chunk_within(page, segment.structure, capacity)
                    .into_iter()
                    .map(|chunk| shifted(chunk, start)),
            );
        }
        return chunks;
    }
    match segment.ahead.take() {
        Some((from, ahead)) => {
            let (chunks, spent) =
                chunker.chunk_after(text, segment.structure, capacity, from, ahead);
            segment.ahead.set(Some((0, spent)));
            chunks
        }
        None => chunker.chunk_within(text, segment.structure, capacity),
    }
}

/// The spans between consecutive `starts` (the first taken from 0, the last to `len`).
fn spans(starts: &[usize], len: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    let ends = starts.iter().skip(1).copied().chain(std::iter::once(len));
    std::iter::once(0)
        .chain(starts.iter().skip(1).copied())
        .zip(ends)
        .filter(|(start, end)| start < end)
}

fn shifted(chunk: Chunk, by: usize) -> Chunk {
    let Chunk { range, token_count } = chunk;
    Chunk {
        range: range.start + by..range.end + by,
        token_count,
    }
}

/// `range` of `text` without the white space at either end.
fn trimmed(text: &str, range: Range<usize>) -> Range<usize> {
    let piece = &text[range.clone()];
    let start = range.start + (piece.len() - piece.trim_start().len());
    let end = range.start + piece.trim_end().len();
    start..end.max(start)
}

/// Chunks that end only where rows (or items) do: as many whole rows as fit within `capacity`
/// tokens and `max_items`, never across a page start in `breaks`; a row longer than
/// `capacity` is cut alone. Rows do not overlap.
fn rows(
    chunker: &Chunker,
    text: &str,
    items: &[usize],
    breaks: &[usize],
    capacity: usize,
    max_items: usize,
) -> Vec<Chunk> {
    let rows: Vec<Range<usize>> = spans(items, text.len())
        .map(|(start, end)| trimmed(text, start..end))
        .filter(|row| !row.is_empty())
        .collect();
    let counts: Vec<usize> = rows
        .iter()
        .map(|row| chunker.count(&text[row.clone()]))
        .collect();
    let page = |offset: usize| breaks.partition_point(|&start| start <= offset);
    let mut chunks = Vec::new();
    let mut first = 0;
    while first < rows.len() {
        if counts[first] > capacity {
            let row = rows[first].clone();
            chunks.extend(
                chunker
                    .chunk_within(&text[row.clone()], Structure::Plain, capacity)
                    .into_iter()
                    .map(|chunk| shifted(chunk, row.start)),
            );
            first += 1;
            continue;
        }
        // Rows joined by a line break: their counts plus one token for each break is what
        // the joined text counts, but for rare merges across the break, checked below.
        let mut end = first + 1;
        let mut tokens = counts[first];
        while end < rows.len()
            && end - first < max_items
            && tokens + 1 + counts[end] <= capacity
            && page(rows[end].start) == page(rows[first].start)
        {
            tokens += 1 + counts[end];
            end += 1;
        }
        loop {
            let range = rows[first].start..rows[end - 1].end;
            let count = chunker.count(&text[range.clone()]);
            if count <= capacity || end == first + 1 {
                chunks.push(Chunk {
                    range,
                    token_count: count,
                });
                break;
            }
            end -= 1;
        }
        first = end;
    }
    chunks
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;
    use crate::chunk::Encoding;

    fn chunker(size: usize) -> Chunker {
        Chunker::new(Encoding::Cl100kBase, size, 0).unwrap()
    }

    #[test]
    fn pages_are_counted_from_one_and_text_before_the_first_start_is_on_it() {
        assert_eq!(page_of(&[], 5), None);
        assert_eq!(page_of(&[0, 10, 20], 0), Some(1));
        assert_eq!(page_of(&[0, 10, 20], 10), Some(2));
        assert_eq!(page_of(&[0, 10, 20], 25), Some(3));
        assert_eq!(page_of(&[4, 10], 0), Some(1));
    }

    #[test]
    fn rows_stay_whole_and_within_their_limits() {
        let text = (0..40).fold(String::new(), |mut text, i| {
            let _ = writeln!(text, "name: row {i}; value: {}", i * 7);
            text
        });
        let items: Vec<usize> = text.match_indices("name:").map(|(at, _)| at).collect();
        let chunker = chunker(40);
        for max_items in [1, 3, usize::MAX] {
            let chunks = rows(&chunker, &text, &items, &[], 40, max_items);
            let mut covered = String::new();
            for chunk in &chunks {
                let piece = &text[chunk.range.clone()];
                assert!(chunk.token_count <= 40);
                assert_eq!(chunk.token_count, chunker.count(piece));
                let lines = piece.lines().count();
                assert!(lines <= max_items, "{lines} rows over {max_items}");
                assert!(
                    piece.starts_with("name:") && piece.ends_with(|c: char| c.is_ascii_digit())
                );
                covered.push_str(piece);
                covered.push('\n');
            }
            assert_eq!(covered, text);
        }
    }

    #[test]
    fn a_row_longer_than_a_chunk_is_cut_alone() {
        let long = "word ".repeat(200);
        let text = format!("short one\n{long}\nshort two\n");
        let items = [0, 10, 11 + long.len()];
        let chunks = rows(&chunker(50), &text, &items, &[], 50, usize::MAX);
        assert!(chunks.len() > 3);
        assert_eq!(&text[chunks[0].range.clone()], "short one");
        assert_eq!(&text[chunks.last().unwrap().range.clone()], "short two");
        assert!(chunks.iter().all(|c| c.token_count <= 50));
    }

    #[test]
    fn row_chunks_break_at_pages_when_asked() {
        let text = "a: 1\nb: 2\nc: 3\nd: 4\n";
        let items = [0, 5, 10, 15];
        let chunks = rows(&chunker(100), text, &items, &[0, 10], 100, usize::MAX);
        let texts: Vec<&str> = chunks.iter().map(|c| &text[c.range.clone()]).collect();
        assert_eq!(texts, ["a: 1\nb: 2", "c: 3\nd: 4"]);
    }
}
