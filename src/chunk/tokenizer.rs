//! Exact token counting for the tiktoken encodings, and the per-document piece index that
//! lets the chunker size any slice of a document without tokenizing it again.
//!
//! tiktoken tokenizes in two steps: a regex cuts the text into *pieces*, then byte-pair encoding
//! turns each piece into tokens on its own. We run the same regex and the same BPE merges as
//! tiktoken-rs (a test checks the counts agree), but keep the piece boundaries: the token count
//! of a slice is then a difference of prefix sums, plus a re-count of the few pieces at its
//! edges whose tokenization can differ when the slice is tokenized alone (see
//! [`DocumentIndex::count`]).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use fancy_regex::Regex;
use rustc_hash::FxHashMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tiktoken_rs::{CoreBPE, Rank};

/// The cl100k_base pre-tokenizer pattern, exactly as tiktoken-rs builds `cl100k_base`.
const CL100K_BASE_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s";

/// A tiktoken encoding that chunk sizes are measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// GPT-3.5/GPT-4 and `text-embedding-3-*`, `text-embedding-ada-002`.
    Cl100kBase,
    /// GPT-4o and later.
    O200kBase,
}

impl Encoding {
    /// Every supported encoding, for error messages and tests.
    pub const ALL: [Encoding; 2] = [Encoding::Cl100kBase, Encoding::O200kBase];

    /// The name used in configuration, flags and chunk records.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Cl100kBase => "cl100k_base",
            Encoding::O200kBase => "o200k_base",
        }
    }

    fn pattern(self) -> &'static str {
        match self {
            Encoding::Cl100kBase => CL100K_BASE_PATTERN,
            Encoding::O200kBase => tiktoken_rs::O200K_BASE_PAT_STR,
        }
    }

    /// Builds tiktoken-rs's own tokenizer for this encoding (slow; used to build ours and as
    /// the independent reference in tests and benchmarks).
    ///
    /// # Errors
    /// When tiktoken-rs cannot load its embedded vocabulary.
    pub fn core_bpe(self) -> Result<CoreBPE, TokenizerError> {
        let built = match self {
            Encoding::Cl100kBase => tiktoken_rs::cl100k_base(),
            Encoding::O200kBase => tiktoken_rs::o200k_base(),
        };
        built.map_err(|err| TokenizerError(format!("loading {}: {err}", self.as_str())))
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Encoding {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Encoding::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| format!("unknown encoding `{s}` (supported: cl100k_base, o200k_base)"))
    }
}

/// The tokenizer could not be built.
#[derive(Debug, Clone, thiserror::Error)]
#[error("tokenizer: {0}")]
pub struct TokenizerError(String);

/// Counts tokens of one encoding. Cheap to share: the vocabulary is read-only and each thread
/// compiles its own copy of the regex (a shared one scales negatively across threads, because
/// the regex engine's scratch space is shared).
pub struct Tokenizer {
    encoding: Encoding,
    /// Token bytes → rank, the table the BPE merges look up.
    ranks: FxHashMap<Vec<u8>, Rank>,
    /// The compiled pre-tokenizer; proves the pattern compiles. Threads compile their own copy
    /// (a clone would share its scratch space) and fall back to a clone only if that fails.
    regex: Regex,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("encoding", &self.encoding)
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// One compiled pre-tokenizer regex per encoding per thread.
    static REGEXES: RefCell<HashMap<Encoding, Regex>> = RefCell::new(HashMap::new());
}

impl Tokenizer {
    /// The process-wide tokenizer of `encoding`, built on first use.
    ///
    /// # Errors
    /// When the vocabulary cannot be loaded.
    pub fn shared(encoding: Encoding) -> Result<Arc<Tokenizer>, TokenizerError> {
        static CL100K: OnceLock<Result<Arc<Tokenizer>, TokenizerError>> = OnceLock::new();
        static O200K: OnceLock<Result<Arc<Tokenizer>, TokenizerError>> = OnceLock::new();
        let cell = match encoding {
            Encoding::Cl100kBase => &CL100K,
            Encoding::O200kBase => &O200K,
        };
        cell.get_or_init(|| Tokenizer::new(encoding).map(Arc::new))
            .clone()
    }

    fn new(encoding: Encoding) -> Result<Self, TokenizerError> {
        // tiktoken-rs keeps its rank table private; rebuild it by decoding every rank.
        let bpe = encoding.core_bpe()?;
        let special: Vec<&[u8]> = bpe
            .special_tokens()
            .into_iter()
            .map(str::as_bytes)
            .collect();
        let mut ranks = FxHashMap::default();
        let mut misses = 0;
        for rank in 0..=Rank::MAX {
            if let Ok(bytes) = bpe.decode_bytes(&[rank]) {
                if !special.contains(&bytes.as_slice()) {
                    ranks.insert(bytes, rank);
                }
                misses = 0;
            } else {
                misses += 1;
                // Vocabularies have small gaps before their special tokens; stop after a long one.
                if misses > 10_000 {
                    break;
                }
            }
        }
        let regex = Regex::new(encoding.pattern())
            .map_err(|err| TokenizerError(format!("compiling the {encoding} pattern: {err}")))?;
        Ok(Tokenizer {
            encoding,
            ranks,
            regex,
        })
    }

    /// The encoding this tokenizer counts.
    #[must_use]
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Runs `f` over the pieces of `text` (in order, covering it), with this thread's regex.
    fn for_each_piece(&self, text: &str, mut f: impl FnMut(usize, &str) -> bool) {
        REGEXES.with(|cell| {
            let mut map = cell.borrow_mut();
            // Compiled afresh per thread: clones share the regex engine's scratch pool, which
            // makes threads contend.
            let regex = map.entry(self.encoding).or_insert_with(|| {
                Regex::new(self.encoding.pattern()).unwrap_or_else(|_| self.regex.clone())
            });
            let mut covered = 0;
            for found in regex.find_iter(text) {
                let Ok(piece) = found else {
                    // fancy-regex's backtrack limit: these patterns should never reach it, but
                    // if one did, the rest is one piece (BPE still counts it) rather than lost.
                    f(covered, &text[covered..]);
                    return;
                };
                covered = piece.end();
                if !f(piece.start(), piece.as_str()) {
                    return;
                }
            }
        });
    }

    /// Tokens of one pre-tokenized piece.
    fn piece_tokens(&self, piece: &str) -> usize {
        let bytes = piece.as_bytes();
        if bytes.len() <= 1 || self.ranks.contains_key(bytes) {
            bytes.len().min(1)
        } else if bytes.len() <= LONG_PIECE_BYTES {
            tiktoken_rs::byte_pair_split(bytes, &self.ranks).len()
        } else {
            merged_parts(bytes, &self.ranks)
        }
    }

    /// The exact number of tokens tiktoken's `encode_ordinary` produces for `text`.
    #[must_use]
    pub fn count(&self, text: &str) -> usize {
        let mut total = 0;
        self.for_each_piece(text, |_, piece| {
            total += self.piece_tokens(piece);
            true
        });
        total
    }

    /// Tokenizes `text` once and keeps its piece boundaries and running token counts.
    ///
    /// # Panics
    /// Never for texts under 4 GiB; callers cap text size far below that.
    #[must_use]
    pub fn index<'a>(self: &'a Arc<Self>, text: &'a str) -> DocumentIndex<'a> {
        let mut ends = Vec::with_capacity(text.len() / 4);
        let mut cumulative = Vec::with_capacity(text.len() / 4);
        let mut total = 0u32;
        self.for_each_piece(text, |start, piece| {
            total += u32::try_from(self.piece_tokens(piece)).unwrap_or(u32::MAX);
            ends.push(to_u32(start + piece.len()));
            cumulative.push(total);
            true
        });
        DocumentIndex {
            tokenizer: self,
            text,
            ends,
            cumulative,
            last_head: Cell::new((usize::MAX, 0, 0)),
        }
    }
}

/// Pieces longer than this are merged with a heap: tiktoken's merge loop rescans the piece for
/// every merge, which is quadratic (a megabyte of one letter, or of blank lines, is one piece).
const LONG_PIECE_BYTES: usize = 256;

/// The number of parts byte-pair merging leaves of `piece`: always the lowest-ranked adjacent
/// pair first, the leftmost on ties — tiktoken's order, so the result is the same — found
/// with a heap in O(n log n).
fn merged_parts(piece: &[u8], ranks: &FxHashMap<Vec<u8>, Rank>) -> usize {
    const NONE: usize = usize::MAX;
    let n = piece.len();
    // Parts are identified by their start; `next`/`prev` link them left to right.
    let mut next: Vec<usize> = (1..=n).collect();
    let mut prev: Vec<usize> = (0..n).map(|i| i.checked_sub(1).unwrap_or(NONE)).collect();
    let mut alive = vec![true; n];
    let rank = |start: usize, end: usize| ranks.get(&piece[start..end]).copied();
    let mut heap = std::collections::BinaryHeap::new();
    for start in 0..n.saturating_sub(1) {
        if let Some(r) = rank(start, start + 2) {
            heap.push(std::cmp::Reverse((r, start, start + 2)));
        }
    }
    let mut parts = n;
    while let Some(std::cmp::Reverse((_, start, end))) = heap.pop() {
        // Stale unless `start` still begins a pair that still ends at `end`.
        if !alive[start] {
            continue;
        }
        let middle = next[start];
        if middle >= n || next[middle] != end {
            continue;
        }
        alive[middle] = false;
        next[start] = end;
        if end < n {
            prev[end] = start;
        }
        parts -= 1;
        let before = prev[start];
        if before != NONE
            && let Some(r) = rank(before, end)
        {
            heap.push(std::cmp::Reverse((r, before, end)));
        }
        if end < n
            && let Some(r) = rank(start, next[end])
        {
            heap.push(std::cmp::Reverse((r, start, next[end])));
        }
    }
    parts
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The pieces of one document: where each ends and how many tokens precede that end.
pub struct DocumentIndex<'a> {
    tokenizer: &'a Tokenizer,
    text: &'a str,
    /// `ends[i]` is the byte offset where piece `i` ends (pieces are contiguous from 0).
    ends: Vec<u32>,
    /// `cumulative[i]` is the number of tokens in pieces `0..=i`.
    cumulative: Vec<u32>,
    /// The last head re-count: (slice start, where it synced, tokens before that).
    last_head: Cell<(usize, usize, usize)>,
}

impl DocumentIndex<'_> {
    /// Total tokens of the document.
    #[must_use]
    pub fn total(&self) -> usize {
        self.cumulative.last().map_or(0, |&n| n as usize)
    }

    /// Tokens before byte offset `at`, where `at` is a piece boundary.
    fn tokens_before(&self, at: usize) -> usize {
        if at == 0 {
            return 0;
        }
        let i = self.ends.partition_point(|&end| (end as usize) < at);
        self.cumulative[i] as usize
    }

    fn is_boundary(&self, at: usize) -> bool {
        at == 0 || self.ends.binary_search(&to_u32(at)).is_ok()
    }

    /// The last piece boundary at or before `at`.
    fn boundary_at_or_before(&self, at: usize) -> usize {
        let i = self.ends.partition_point(|&end| (end as usize) <= at);
        if i == 0 { 0 } else { self.ends[i - 1] as usize }
    }

    /// Exact token count of `text[start..end]` tokenized on its own.
    ///
    /// Why the middle can be read off the index: the pre-tokenizer regex has no look-behind, so
    /// once a match of the slice ends on a piece boundary of the whole document, the slice's
    /// matches from there are the document's. At the end, a match can only differ when the slice
    /// ends in whitespace (`\s+(?!\S)` and `\s++$` see the end of the slice instead of the next
    /// character); such slices are counted directly. So: re-count the head until it lands on a
    /// boundary, read the middle off the prefix sums, re-count the partial piece at the end.
    #[must_use]
    pub fn count(&self, start: usize, end: usize) -> usize {
        let slice = &self.text[start..end];
        if slice.is_empty() {
            return 0;
        }
        if end < self.text.len() && slice.ends_with(char::is_whitespace) {
            return self.tokenizer.count(slice);
        }
        // Head: tokenize the slice from its start until a match ends on a document boundary.
        // text-splitter probes many ends for one start, so the last head is remembered; it does
        // not depend on the end as long as it syncs before it (same argument as the middle).
        let (mut synced_at, mut head_tokens) = (start, 0);
        let (cached_start, cached_sync, cached_tokens) = self.last_head.get();
        if cached_start == start && cached_sync < end {
            (synced_at, head_tokens) = (cached_sync, cached_tokens);
        } else if !self.is_boundary(start) {
            synced_at = end;
            self.tokenizer.for_each_piece(slice, |offset, piece| {
                head_tokens += self.tokenizer.piece_tokens(piece);
                let piece_end = start + offset + piece.len();
                if self.is_boundary(piece_end) {
                    synced_at = piece_end;
                    return false;
                }
                true
            });
            if synced_at < end {
                self.last_head.set((start, synced_at, head_tokens));
            }
        }
        if synced_at >= end {
            return head_tokens;
        }
        // Middle: whole pieces between the synced start and the last boundary before `end`.
        let last_boundary = self.boundary_at_or_before(end);
        if last_boundary <= synced_at {
            return head_tokens + self.tokenizer.count(&self.text[synced_at..end]);
        }
        let middle = self.tokens_before(last_boundary) - self.tokens_before(synced_at);
        // Tail: the start of a piece that continues past `end`.
        let tail = if last_boundary < end {
            self.tokenizer.count(&self.text[last_boundary..end])
        } else {
            0
        };
        head_tokens + middle + tail
    }

    /// Exact token count of a text that is not a slice of this document.
    #[must_use]
    pub fn count_detached(&self, text: &str) -> usize {
        self.tokenizer.count(text)
    }

    /// The document text this index describes.
    #[must_use]
    pub fn text(&self) -> &str {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLES: &[&str] = &[
        "",
        "Hello, world!",
        "  leading and trailing spaces  ",
        "line one\nline two\r\n\r\nparagraph   with    gaps\n\n\n",
        "don't I'LL we've they're",
        "numbers 1234567 and 3.14159, dates 2024-01-02",
        "日本語のテキストと中文文本，还有한국어.",
        "emoji 👩‍👩‍👧‍👦 and flags 🇫🇷🇩🇪 and combining é é",
        "tabs\tand\u{a0}nbsp and\u{2003}em spaces \t\n end",
        "<|endoftext|> is text here",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    ];

    #[test]
    fn counts_match_tiktoken_rs() {
        for encoding in Encoding::ALL {
            let ours = Tokenizer::shared(encoding).unwrap();
            let reference = encoding.core_bpe().unwrap();
            for text in SAMPLES {
                assert_eq!(
                    ours.count(text),
                    reference.encode_ordinary(text).len(),
                    "{encoding}: {text:?}"
                );
            }
        }
    }

    #[test]
    fn slice_counts_match_tokenizing_the_slice() {
        for encoding in Encoding::ALL {
            slice_counts_match(encoding);
        }
    }

    fn slice_counts_match(encoding: Encoding) {
        let tokenizer = Tokenizer::shared(encoding).unwrap();
        let reference = encoding.core_bpe().unwrap();
        for text in SAMPLES {
            let index = tokenizer.index(text);
            assert_eq!(index.total(), reference.encode_ordinary(text).len());
            let bounds: Vec<usize> = (0..=text.len())
                .filter(|&i| text.is_char_boundary(i))
                .collect();
            for (a, &start) in bounds.iter().enumerate() {
                for &end in &bounds[a..] {
                    let slice = &text[start..end];
                    assert_eq!(
                        index.count(start, end),
                        reference.encode_ordinary(slice).len(),
                        "{text:?}[{start}..{end}] = {slice:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn encoding_names_round_trip() {
        for encoding in Encoding::ALL {
            assert_eq!(encoding.as_str().parse::<Encoding>(), Ok(encoding));
        }
        assert!(
            "gpt2"
                .parse::<Encoding>()
                .unwrap_err()
                .contains("cl100k_base")
        );
    }

    #[test]
    fn long_pieces_merge_as_tiktoken_does() {
        let tokenizer = Tokenizer::shared(Encoding::Cl100kBase).unwrap();
        let mut state = 7u64;
        let mut samples: Vec<Vec<u8>> = vec![
            b"a".repeat(1000),
            b" \n".repeat(700),
            "ééé".repeat(200).into_bytes(),
        ];
        for _ in 0..40 {
            let len = 257 + (state % 700) as usize;
            let piece: Vec<u8> = (0..len)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1);
                    b"abcdeeeeffghhhiinnoorsstt "[(state >> 33) as usize % 26]
                })
                .collect();
            samples.push(piece);
        }
        for piece in samples {
            assert_eq!(
                merged_parts(&piece, &tokenizer.ranks),
                tiktoken_rs::byte_pair_split(&piece, &tokenizer.ranks).len(),
                "{}",
                String::from_utf8_lossy(&piece)
            );
        }
    }
}
