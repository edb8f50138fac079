//! Cutting extracted text into chunks of at most `chunk_size` tokens with at most
//! `chunk_overlap` tokens shared between neighbours, on the most meaningful boundary that fits.
//!
//! The boundaries are text-splitter's (paragraphs, lines, sentences, words, graphemes; markdown
//! structure for markdown). Sizing is ours: the document is tokenized once into a
//! [`DocumentIndex`], and text-splitter's many size probes read token counts off it instead of
//! re-tokenizing candidate chunks. Long documents are fed to text-splitter in windows, because its
//! per-chunk bookkeeping grows with the length of the remaining text.

mod ascii;
mod tokenizer;

use std::ops::Range;
use std::sync::Arc;

use text_splitter::{ChunkConfig, ChunkSizer, MarkdownSplitter, TextSplitter};

pub use tokenizer::{DocumentIndex, Encoding, Pieces, Tokenizer, TokenizerError, safe_line_start};

/// Why a chunker could not be built.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChunkError {
    /// `chunk_size` is below [`MIN_CHUNK_SIZE`].
    #[error("chunk_size must be at least {MIN_CHUNK_SIZE}: one character can take 4 tokens")]
    TooSmall,
    /// The overlap would leave no room for new text.
    #[error("chunk_overlap ({overlap}) must be smaller than chunk_size ({size})")]
    OverlapTooLarge {
        /// The requested chunk size.
        size: usize,
        /// The requested overlap.
        overlap: usize,
    },
    /// The vocabulary could not be loaded.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// How the text is structured, which decides the boundaries chunks prefer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Structure {
    /// Paragraphs, lines, sentences, words.
    #[default]
    Plain,
    /// Markdown blocks (headings, lists, code fences) first, then as plain text.
    Markdown,
}

/// One chunk of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Byte range of the chunk in the document.
    pub range: Range<usize>,
    /// Exact token count of the chunk's text tokenized alone.
    pub token_count: usize,
}

/// Splits documents for one (encoding, chunk size, overlap). Build once, use for every document
/// of that configuration, from any number of threads.
#[derive(Debug, Clone)]
pub struct Chunker {
    tokenizer: Arc<Tokenizer>,
    /// Maximum tokens per chunk.
    size: usize,
    /// Maximum tokens shared by neighbouring chunks.
    overlap: usize,
}

/// The smallest chunk size that never forces a character to be split: one character is at
/// most 4 UTF-8 bytes, so at most 4 tokens.
pub const MIN_CHUNK_SIZE: usize = 4;

/// Minimum window handed to text-splitter at once, in bytes.
const MIN_WINDOW_BYTES: usize = 64 * 1024;
/// Window length in chunks: large enough that re-chunking the last chunk of each window costs
/// little, small enough that text-splitter's per-chunk work over the window stays small.
const WINDOW_CHUNKS: usize = 24;

impl Chunker {
    /// A chunker for `size`-token chunks overlapping by up to `overlap` tokens.
    ///
    /// # Errors
    /// When `size` is below [`MIN_CHUNK_SIZE`], `overlap >= size`, or the vocabulary cannot be loaded.
    pub fn new(encoding: Encoding, size: usize, overlap: usize) -> Result<Self, ChunkError> {
        if size < MIN_CHUNK_SIZE {
            return Err(ChunkError::TooSmall);
        }
        if overlap >= size {
            return Err(ChunkError::OverlapTooLarge { size, overlap });
        }
        Ok(Chunker {
            tokenizer: Tokenizer::shared(encoding)?,
            size,
            overlap,
        })
    }

    /// The encoding sizes are measured in.
    #[must_use]
    pub fn encoding(&self) -> Encoding {
        self.tokenizer.encoding()
    }

    /// The maximum tokens per chunk.
    #[must_use]
    pub fn size(&self) -> usize {
        self.size
    }

    /// The maximum tokens shared by neighbours.
    #[must_use]
    pub fn overlap(&self) -> usize {
        self.overlap
    }

    /// Exact token count of `text`.
    #[must_use]
    pub fn count(&self, text: &str) -> usize {
        self.tokenizer.count(text)
    }

    /// Splits `text` into chunks of at most `self.size()` tokens.
    #[must_use]
    pub fn chunk(&self, text: &str, structure: Structure) -> Vec<Chunk> {
        self.chunk_within(text, structure, self.size)
    }

    /// Splits `text` into chunks of at most `capacity` tokens (≤ `self.size()`), for callers
    /// that add a prefix of their own to every chunk. The overlap shrinks with the capacity.
    #[must_use]
    pub fn chunk_within(&self, text: &str, structure: Structure, capacity: usize) -> Vec<Chunk> {
        self.chunk_indexed(&self.tokenizer.index(text), structure, capacity)
    }

    /// Tokenizes one part of a text read ahead, on any thread, so that chunking it later (as
    /// the end of a longer text, see [`Chunker::chunk_after`]) need not: the pieces of its
    /// first `until` bytes, where `until` is a [`safe_line_start`] of `text` or its end.
    /// Parts tokenized so, each from where the last one's pieces stop, join into the pieces of
    /// the whole (see [`Pieces::append_range`]). `None` when `until` did not end a piece (it
    /// always does). The pieces are kept in the vectors of `spent` (pieces no longer needed,
    /// or [`Pieces::default`]).
    #[must_use]
    pub fn tokenize_part(&self, text: &str, until: usize, spent: Pieces) -> Option<Pieces> {
        self.tokenizer.pieces_until(text, until, spent)
    }

    /// [`Chunker::chunk_within`] for a text whose part from byte `from` on was tokenized ahead
    /// as `ahead`. The chunks are the same; only the tokenizing is saved. Also returns the
    /// text's pieces, spent, for the next [`Chunker::tokenize_part`].
    #[must_use]
    pub fn chunk_after(
        &self,
        text: &str,
        structure: Structure,
        capacity: usize,
        from: usize,
        ahead: Pieces,
    ) -> (Vec<Chunk>, Pieces) {
        let index = self.tokenizer.index_ahead(text, from, ahead);
        let chunks = self.chunk_indexed(&index, structure, capacity);
        (chunks, index.into_pieces())
    }

    fn chunk_indexed(
        &self,
        index: &DocumentIndex<'_>,
        structure: Structure,
        capacity: usize,
    ) -> Vec<Chunk> {
        let text = index.text();
        let capacity = capacity.clamp(MIN_CHUNK_SIZE, self.size);
        let overlap = self.overlap.min(capacity - 1);
        let sizer = IndexSizer {
            index,
            base: text.as_ptr() as usize,
        };
        let mut chunks = Vec::new();
        let window = MIN_WINDOW_BYTES.max(capacity.saturating_mul(4 * WINDOW_CHUNKS));
        // Long blank runs are hard boundaries: no chunk is only blank, and text-splitter's
        // work grows with the square of the blank sections it is shown.
        for block in blocks(text) {
            let text = &text[..block.end];
            let mut start = block.start;
            while start < text.len() {
                let mut end = window_end(text, start, window);
                loop {
                    let found = split(&text[start..end], structure, capacity, overlap, &sizer);
                    if end == text.len() {
                        chunks.extend(
                            found
                                .into_iter()
                                .map(|r| (start + r.start)..(start + r.end)),
                        );
                        start = text.len();
                        break;
                    }
                    // The last chunk of a window may have been cut short by the window's end:
                    // keep the others and start the next window where it started.
                    if let [kept @ .., last] = found.as_slice()
                        && !kept.is_empty()
                    {
                        chunks.extend(kept.iter().map(|r| (start + r.start)..(start + r.end)));
                        start += last.start;
                        break;
                    }
                    // One chunk filled the whole window: try a wider one.
                    end = window_end(text, start, (end - start).saturating_mul(2));
                }
            }
        }
        for i in 1..chunks.len() {
            let prev_end = chunks[i - 1].end;
            if chunks[i].start < prev_end {
                let limits = Limits {
                    capacity,
                    overlap,
                    next_start: chunks.get(i + 1).map(|next| next.start),
                };
                chunks[i].start = overlap_start(index, chunks[i].clone(), prev_end, limits);
            }
        }
        drop_covered(chunks)
            .into_iter()
            .map(|range| {
                let token_count = index.count(range.start, range.end);
                Chunk { range, token_count }
            })
            .collect()
    }
}

/// Drops chunks that the next chunk covers whole, so starts strictly increase.
///
/// Text-splitter's ends always increase, but on markdown with long runs of Unicode blanks it
/// can reach back for overlap into blank text its previous chunk was trimmed of, so a chunk can
/// start at or before its predecessor: the predecessor then repeats a part of it.
fn drop_covered(chunks: Vec<Range<usize>>) -> Vec<Range<usize>> {
    let mut kept: Vec<Range<usize>> = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        while kept
            .last()
            .is_some_and(|last| chunk.start <= last.start && chunk.end >= last.end)
        {
            kept.pop();
        }
        kept.push(chunk);
    }
    kept
}

/// The token limits one chunk must keep.
#[derive(Clone, Copy)]
struct Limits {
    capacity: usize,
    overlap: usize,
    /// Where the next chunk starts: starts must stay strictly increasing.
    next_start: Option<usize>,
}

/// Where a chunk that begins inside its predecessor (`range.start < prev_end`) should start.
///
/// Markdown chunks keep their indentation, but indentation inside the overlap adds tokens
/// text-splitter did not count as overlap, so such a chunk starts at its text. Dropping leading
/// whitespace can add tokens, though (" 👩" and "👩" merge differently), so when that start breaks
/// either limit the nearest one that keeps both is taken: back through the whitespace, then
/// forward through text the previous chunk already covers. Text-splitter's own start is the last
/// resort; its size was measured exactly.
fn overlap_start(
    index: &DocumentIndex<'_>,
    range: Range<usize>,
    prev_end: usize,
    limits: Limits,
) -> usize {
    let text = index.text();
    let Range { start, end } = range;
    let piece = &text[start..end];
    let trimmed = start + (piece.len() - piece.trim_start().len());
    let fits = |s: usize| {
        limits.next_start.is_none_or(|next| s < next)
            && !text[s..end].trim().is_empty()
            && index.count(s, end) <= limits.capacity
            && index.count(s, prev_end.max(s)) <= limits.overlap
    };
    let back = text[start..trimmed]
        .char_indices()
        .rev()
        .map(|(i, _)| start + i);
    let covered = prev_end.clamp(trimmed, end);
    let forward = text[trimmed..covered]
        .char_indices()
        .skip(1)
        .map(|(i, _)| trimmed + i)
        .chain(std::iter::once(covered));
    std::iter::once(trimmed)
        .chain(back)
        .chain(forward)
        .find(|&s| fits(s))
        .unwrap_or(start)
}

/// Blank runs at least this long separate blocks that are chunked on their own.
const BLANK_RUN_BYTES: usize = 256;

/// The stretches of `text` between blank runs of [`BLANK_RUN_BYTES`] or more (ASCII
/// whitespace), in order; blank runs themselves are left out.
///
/// A run that long takes one of every [`BLANK_RUN_BYTES`] bytes, so only those are looked at,
/// and the run around one that is blank measured.
fn blocks(text: &str) -> Vec<Range<usize>> {
    let bytes = text.as_bytes();
    let mut blocks = Vec::new();
    let mut block_start = 0;
    // Every long run that starts after `probe - BLANK_RUN_BYTES` takes `probe` or a later
    // probe; the ones before were found.
    let mut probe = BLANK_RUN_BYTES - 1;
    while probe < bytes.len() {
        if !bytes[probe].is_ascii_whitespace() {
            probe += BLANK_RUN_BYTES;
            continue;
        }
        let run_start = bytes[..probe]
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        let run_end = bytes[probe..]
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .map_or(bytes.len(), |i| probe + i);
        if run_end - run_start >= BLANK_RUN_BYTES {
            if run_start > block_start {
                blocks.push(block_start..run_start);
            }
            block_start = run_end;
        }
        probe = run_end + BLANK_RUN_BYTES;
    }
    if bytes.len() > block_start {
        blocks.push(block_start..bytes.len());
    }
    blocks
}

/// Runs text-splitter over one window; ranges are relative to the window.
fn split(
    window: &str,
    structure: Structure,
    capacity: usize,
    overlap: usize,
    sizer: &IndexSizer<'_, '_>,
) -> Vec<Range<usize>> {
    // `overlap < capacity` was checked by the caller, so the config is always valid; if
    // text-splitter ever disagreed, chunks without overlap are still correct chunks.
    let config = ChunkConfig::new(capacity)
        .with_sizer(sizer)
        .with_overlap(overlap)
        .unwrap_or_else(|_| ChunkConfig::new(capacity).with_sizer(sizer));
    let ranges = |(offset, chunk): (usize, &str)| offset..offset + chunk.len();
    match structure {
        Structure::Plain => TextSplitter::new(config)
            .chunk_indices(window)
            .map(ranges)
            .collect(),
        Structure::Markdown => MarkdownSplitter::new(config)
            .chunk_indices(window)
            .map(ranges)
            .collect(),
    }
}

/// End of a window of about `len` bytes from `start`: at the next blank line if one is near,
/// else the next line break, else a character boundary.
fn window_end(text: &str, start: usize, len: usize) -> usize {
    let target = start.saturating_add(len);
    if target >= text.len() {
        return text.len();
    }
    let search = &text.as_bytes()[target..text.len().min(target + 16 * 1024)];
    if let Some(i) = memchr::memmem::find(search, b"\n\n") {
        return target + i + 2;
    }
    if let Some(i) = memchr::memchr(b'\n', search) {
        return target + i + 1;
    }
    (target..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len())
}

/// Sizes text-splitter's candidate chunks from the document index. Candidates are always slices
/// of the document, so their position is recovered from their address.
struct IndexSizer<'i, 't> {
    index: &'i DocumentIndex<'t>,
    /// Address of the document's first byte.
    base: usize,
}

impl ChunkSizer for &IndexSizer<'_, '_> {
    fn size(&self, chunk: &str) -> usize {
        let start = (chunk.as_ptr() as usize).wrapping_sub(self.base);
        let end = start.wrapping_add(chunk.len());
        if start <= end && end <= self.index.text().len() {
            self.index.count(start, end)
        } else {
            // Not a slice of the document (text-splitter never does this): count it directly.
            self.index.count_detached(chunk)
        }
    }
}

#[cfg(test)]
mod tests;
