//! Exact token counting for the tiktoken encodings, and the per-document piece index that
//! lets the chunker size any slice of a document without tokenizing it again.
//!
//! tiktoken tokenizes in two steps: a regex cuts the text into *pieces*, then byte-pair encoding
//! turns each piece into tokens on its own. Both steps follow `bpe-openai`: its pre-tokenizer
//! patterns are tiktoken's rewritten for a DFA regex engine (the one look-ahead emulated; we run
//! them with a regex scratch space per thread), and its byte-pair encoder counts in linear time,
//! after a vocabulary lookup that answers for pieces that are one token. tiktoken-rs stays the
//! reference: tests compare every count with its `encode_ordinary`.
//!
//! We keep the piece boundaries: the token count of a slice is then a difference of prefix
//! sums, plus a re-count of the few pieces at its edges whose tokenization can differ when the
//! slice is tokenized alone (see [`DocumentIndex::count`]).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use bpe_openai::byte_pair_encoding::BytePairEncoding;
use regex_automata::meta::{Cache, Regex};
use regex_automata::{Anchored, Input};
use rustc_hash::FxHashSet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tiktoken_rs::CoreBPE;

use super::ascii;

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

    /// Builds tiktoken-rs's own tokenizer for this encoding: the independent reference in tests
    /// and benchmarks.
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

/// Counts tokens of one encoding. Cheap to share: the vocabulary and the compiled patterns are
/// read-only, and each thread keeps its own regex scratch space.
pub struct Tokenizer {
    encoding: Encoding,
    /// bpe-openai's byte-pair encoder and vocabulary for the encoding.
    bpe: &'static BytePairEncoding,
    /// The pre-tokenizer: bpe-openai's patterns, searched with a scratch space per thread
    /// (the regex's shared pool costs a lock per piece once several threads tokenize).
    pieces: Regex,
    /// The bytes of every token: most pieces of prose are one token, and a set lookup answers
    /// for them without running the encoder.
    vocabulary: FxHashSet<&'static [u8]>,
}

/// tiktoken's pre-tokenizer patterns, rewritten for a DFA regex engine as bpe-openai 0.3 does
/// (copied from it: it keeps its compiled regex private, behind a shared scratch pool): the
/// look-ahead `\s+(?!\S)` becomes `\s+\s` with its last character given back (pattern 2).
/// Alternatives of one pattern are tried leftmost-first, patterns in order.
fn patterns(encoding: Encoding) -> [String; 3] {
    let first = match encoding {
        Encoding::Cl100kBase => concat!(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}",
            r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+$",
        ),
        Encoding::O200kBase => concat!(
            r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
            r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
            r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+$",
        ),
    };
    [first.to_owned(), r"\s+\s".to_owned(), r"\s+".to_owned()]
}

/// Whether a match of each pattern ends with one look-ahead character to give back.
const LOOKAHEAD: [bool; 3] = [false, true, false];

thread_local! {
    /// This thread's regex scratch space, per encoding.
    static SCRATCH: RefCell<[Option<Scratch>; 2]> = const { RefCell::new([None, None]) };
}

/// A thread's scratch space for one encoding: the regex's, and the token counts of short
/// pieces seen lately (most pieces of prose recur: words, spaces, punctuation).
struct Scratch {
    cache: Cache,
    memo: Memo,
}

/// Pieces of at most this many bytes are remembered.
const MEMO_BYTES: usize = 15;

/// Slots of a memo; a piece takes the slot its bytes hash to, replacing what was there.
const MEMO_SLOTS: usize = 1 << 12;

/// Token counts of short pieces, each slot holding a piece's bytes (zero-padded, its length in
/// the last byte: a slot never answers for another piece) and its count.
struct Memo {
    keys: Box<[u128]>,
    tokens: Box<[u8]>,
}

impl Memo {
    fn new() -> Self {
        Memo {
            keys: vec![0; MEMO_SLOTS].into_boxed_slice(),
            tokens: vec![0; MEMO_SLOTS].into_boxed_slice(),
        }
    }

    /// The key of a piece of 2 to [`MEMO_BYTES`] bytes, and its slot.
    ///
    /// The bytes are read as two words that overlap (of 8, 4 or 2 bytes, as the length
    /// allows), the second shifted to drop what the first holds: copying them into a padded
    /// buffer instead stalled every look-up on loading the buffer back (half the time of a
    /// memo hit).
    fn slot(bytes: &[u8]) -> (u128, usize) {
        let len = bytes.len();
        // Each pair: the first word, and the bytes after it, zero-extended. A shift by
        // `8 * (WORD - (len - WORD))` is done in two steps so that it may be the whole word.
        let padded = match len {
            8.. => {
                let (first, last) = (
                    u64::from_le_bytes(head(bytes)),
                    u64::from_le_bytes(tail(bytes)),
                );
                u128::from(first) | u128::from((last >> 1) >> (8 * (16 - len) - 1)) << 64
            }
            4.. => {
                let (first, last) = (
                    u32::from_le_bytes(head(bytes)),
                    u32::from_le_bytes(tail(bytes)),
                );
                u128::from(first) | u128::from((last >> 1) >> (8 * (8 - len) - 1)) << 32
            }
            _ => {
                let (first, last) = (
                    u16::from_le_bytes(head(bytes)),
                    u16::from_le_bytes(tail(bytes)),
                );
                u128::from(first) | u128::from((last >> 1) >> (8 * (4 - len) - 1)) << 16
            }
        };
        let key = padded | u128::try_from(len).unwrap_or(0) << 120;
        #[expect(
            clippy::cast_possible_truncation,
            reason = "the halves of the key, hashed"
        )]
        let hash = ((key as u64) ^ ((key >> 64) as u64).rotate_left(29))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (key, usize::try_from(hash >> 52).unwrap_or(0) % MEMO_SLOTS)
    }
}

/// The first `N` bytes of `bytes` (which has at least `N`).
fn head<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes.first_chunk::<N>().copied().unwrap_or([0; N])
}

/// The last `N` bytes of `bytes` (which has at least `N`).
fn tail<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes.last_chunk::<N>().copied().unwrap_or([0; N])
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("encoding", &self.encoding)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// The process-wide tokenizer of `encoding`, built on first use (the vocabulary is compiled
    /// into the binary; loading it takes a few hundred milliseconds once).
    ///
    /// # Errors
    /// When the pre-tokenizer pattern does not compile (it does; a test builds both).
    pub fn shared(encoding: Encoding) -> Result<Arc<Tokenizer>, TokenizerError> {
        static CL100K: OnceLock<Result<Arc<Tokenizer>, TokenizerError>> = OnceLock::new();
        static O200K: OnceLock<Result<Arc<Tokenizer>, TokenizerError>> = OnceLock::new();
        let (cell, bpe): (_, fn() -> &'static bpe_openai::Tokenizer) = match encoding {
            Encoding::Cl100kBase => (&CL100K, bpe_openai::cl100k_base),
            Encoding::O200kBase => (&O200K, bpe_openai::o200k_base),
        };
        cell.get_or_init(|| {
            let patterns = patterns(encoding);
            let pieces = Regex::new_many(&patterns).map_err(|err| {
                TokenizerError(format!("compiling the {encoding} pre-tokenizer: {err}"))
            })?;
            let bpe = &bpe().bpe;
            let tokens = u32::try_from(bpe.num_tokens()).unwrap_or(u32::MAX);
            let vocabulary = (0..tokens).map(|id| bpe.token_bytes(id)).collect();
            Ok(Arc::new(Tokenizer {
                encoding,
                bpe,
                pieces,
                vocabulary,
            }))
        })
        .clone()
    }

    /// The encoding this tokenizer counts.
    #[must_use]
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Runs `f` over the pieces of `text` (in order, covering it) with their offsets and token
    /// counts, until it returns `false`.
    fn for_each_piece(&self, text: &str, mut f: impl FnMut(usize, &str, usize) -> bool) {
        SCRATCH.with(|scratch| {
            let mut spare = None;
            let mut borrowed = scratch.try_borrow_mut();
            let Scratch { cache, memo } = match &mut borrowed {
                Ok(scratches) => scratches[self.encoding as usize].get_or_insert_with(|| Scratch {
                    cache: self.pieces.create_cache(),
                    memo: Memo::new(),
                }),
                // Only if `f` itself tokenized on this thread: a scratch space of its own.
                Err(_) => spare.insert(Scratch {
                    cache: self.pieces.create_cache(),
                    memo: Memo::new(),
                }),
            };
            let mut at = 0;
            while at < text.len() {
                let end = match ascii::piece_end(self.encoding, &text.as_bytes()[at..]) {
                    Some(length) => at + length,
                    None => self.regex_piece_end(cache, text, at),
                };
                let piece = &text[at..end];
                if !f(at, piece, self.piece_tokens(piece, memo)) {
                    return;
                }
                at = end;
            }
        });
    }

    /// Where the piece of `text` that starts at `at` ends, as the pre-tokenizer regex finds it.
    fn regex_piece_end(&self, cache: &mut Cache, text: &str, at: usize) -> usize {
        let input = Input::new(&text[at..]).anchored(Anchored::Yes);
        let end = match self.pieces.search_with(cache, &input) {
            Some(found) if LOOKAHEAD[found.pattern().as_usize()] => {
                let matched = &text[at..at + found.end()];
                let last = matched.chars().next_back().map_or(0, char::len_utf8);
                at + found.end() - last
            }
            Some(found) => at + found.end(),
            // The patterns match at every position; if one ever did not, the rest is one
            // piece (byte-pair encoding still counts it) rather than lost.
            None => text.len(),
        };
        // Never an empty piece: a look-ahead match always keeps a character.
        if end > at { end } else { text.len() }
    }

    /// Tokens of one pre-tokenized piece: from the memo when it was seen lately.
    fn piece_tokens(&self, piece: &str, memo: &mut Memo) -> usize {
        let bytes = piece.as_bytes();
        if bytes.len() <= 1 {
            return bytes.len();
        }
        if bytes.len() > MEMO_BYTES {
            return self.count_piece(bytes);
        }
        let (key, slot) = Memo::slot(bytes);
        if memo.keys[slot] == key {
            return usize::from(memo.tokens[slot]);
        }
        let tokens = self.count_piece(bytes);
        // At most one token per byte, so at most MEMO_BYTES.
        memo.keys[slot] = key;
        memo.tokens[slot] = u8::try_from(tokens).unwrap_or(u8::MAX);
        tokens
    }

    /// Tokens of a piece of two bytes or more, computed.
    fn count_piece(&self, bytes: &[u8]) -> usize {
        if self.vocabulary.contains(bytes) {
            1
        } else {
            self.bpe.count(bytes)
        }
    }

    /// The exact number of tokens tiktoken's `encode_ordinary` produces for `text`.
    #[must_use]
    pub fn count(&self, text: &str) -> usize {
        let mut total = 0;
        self.for_each_piece(text, |_, _, tokens| {
            total += tokens;
            true
        });
        total
    }

    /// Tokenizes `text` once and keeps its piece boundaries and running token counts.
    #[must_use]
    pub fn index<'a>(self: &'a Arc<Self>, text: &'a str) -> DocumentIndex<'a> {
        DocumentIndex::new(self, text, self.pieces(text))
    }

    /// The pieces of `text` tokenized on its own. Owned, so a text read ahead can be tokenized
    /// on one thread and chunked later on another (see [`Tokenizer::index_ahead`]).
    #[must_use]
    pub fn pieces(&self, text: &str) -> Pieces {
        self.pieces_in(text, Pieces::default())
    }

    /// [`Tokenizer::pieces`], in the vectors of `spent` (whatever they held), so that a stream
    /// of segments does not allocate and free a large index for every one.
    #[must_use]
    pub fn pieces_in(&self, text: &str, spent: Pieces) -> Pieces {
        let mut pieces = spent;
        pieces.len = text.len();
        for vector in [&mut pieces.ends, &mut pieces.cumulative] {
            vector.clear();
            vector.reserve(text.len() / 4);
        }
        self.extend(&mut pieces, 0, text, |_| false);
        pieces
    }

    /// The pieces of the first `until` bytes of `text`, where `until` is a safe line start of
    /// `text` (see [`safe_line_start`]): the same as those of any longer text that begins with
    /// the same `until` bytes, so that a stream can be tokenized in parts, each starting where
    /// the last one's pieces stopped; with `until` at the end of `text`, its own pieces.
    /// `None` when `until` turned out not to end a piece (it always does; checked, not
    /// assumed). Built in the vectors of `spent`.
    #[must_use]
    pub fn pieces_until(&self, text: &str, until: usize, spent: Pieces) -> Option<Pieces> {
        let mut pieces = spent;
        pieces.clear();
        for vector in [&mut pieces.ends, &mut pieces.cumulative] {
            vector.reserve(until / 4);
        }
        if until == 0 {
            return Some(pieces);
        }
        self.extend(&mut pieces, 0, text, |end| end >= until)
            .filter(|&end| end == until)?;
        pieces.len = until;
        Some(pieces)
    }

    /// Tokenizes `text`, which starts at byte `offset` of the indexed text, onto the end of
    /// `pieces` until `stop` says so at a piece's end: where it stopped, if it did.
    fn extend(
        &self,
        pieces: &mut Pieces,
        offset: usize,
        text: &str,
        mut stop: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        let mut total = pieces.cumulative.last().copied().unwrap_or(0);
        let mut stopped = None;
        self.for_each_piece(text, |start, piece, tokens| {
            total = total.saturating_add(to_u32(tokens));
            let end = offset + start + piece.len();
            pieces.ends.push(to_u32(end));
            pieces.cumulative.push(total);
            if stop(end) {
                stopped = Some(end);
                return false;
            }
            true
        });
        stopped
    }

    /// The same index as [`Tokenizer::index`] of `text`, whose part from byte `from` on was
    /// tokenized ahead on its own as `ahead` (the pieces of a text that starts at `from` and
    /// may run past the end of `text` or stop before it). Built in `ahead`'s vectors; with
    /// `from` at or past the end of `text`, `ahead` only lends them.
    ///
    /// Only the start is tokenized again, until one of its pieces ends on a boundary of
    /// `ahead`: the pre-tokenizer has no look-behind, so from there on both split the same.
    /// They can differ again only near where `ahead`'s text or `text` ends (a search that
    /// reads to an end sees no next character), so `ahead` is trusted up to a line start
    /// safely before either end (see [`trusted_end`]), and the rest is tokenized.
    #[must_use]
    pub fn index_ahead<'a>(
        self: &'a Arc<Self>,
        text: &'a str,
        from: usize,
        ahead: Pieces,
    ) -> DocumentIndex<'a> {
        let ahead_end = from.saturating_add(ahead.len);
        let Some(trusted) = trusted_end(text, from, ahead_end, &ahead) else {
            return DocumentIndex::new(self, text, self.pieces_in(text, ahead));
        };
        let is_ahead_boundary =
            |at: usize| at == from || ahead.ends.binary_search(&to_u32(at - from)).is_ok();
        let mut head = Pieces {
            len: text.len(),
            ..Pieces::default()
        };
        let Some(synced) = self.extend(&mut head, 0, text, |end| {
            (from..=trusted).contains(&end) && is_ahead_boundary(end)
        }) else {
            // Never met: every piece was tokenized here.
            return DocumentIndex::new(self, text, head);
        };
        // From the boundary met to the last trusted one: `ahead`'s pieces, moved to `from`
        // (in its own vectors, so the text's index never takes twice the memory).
        let first = ahead
            .ends
            .partition_point(|&end| (end as usize) + from <= synced);
        let last = ahead
            .ends
            .partition_point(|&end| (end as usize) + from <= trusted);
        // Tokens of `ahead` before the boundary met (none when it is `from`).
        let before_synced = first
            .checked_sub(1)
            .and_then(|i| ahead.cumulative.get(i).copied())
            .unwrap_or(0);
        let base = head
            .cumulative
            .last()
            .copied()
            .unwrap_or(0)
            .wrapping_sub(before_synced);
        let mut pieces = ahead;
        pieces.len = text.len();
        let from_u32 = to_u32(from);
        shift_after(&mut pieces.ends, &head.ends, first..last, |end| {
            end.saturating_add(from_u32)
        });
        shift_after(&mut pieces.cumulative, &head.cumulative, first..last, |n| {
            n.wrapping_add(base)
        });
        // The rest, on its own: `trusted` is a boundary of `text`'s own split.
        self.extend(&mut pieces, trusted, &text[trusted..], |_| false);
        DocumentIndex::new(self, text, pieces)
    }
}

/// The last boundary of `ahead` (its text starts at `from` and ends at `ahead_end`) up to which
/// its pieces are `text`'s own: all of them when both texts end at the same byte, else the start
/// of the last line that begins with neither blank nor `/` before the nearer end. `None` when
/// there is no such line.
///
/// Why such a line start: a match can take a line break only in a blank run (`\s*[\r\n]+`,
/// `\s+`, the look-ahead `\s+\s`) or as the line breaks that may end a run of punctuation
/// (`[\r\n]*`, and `[\r\n/]*` in o200k); none of them takes a character that is neither
/// blank nor `/`, and no other pattern takes the line break. So every search that starts before
/// the line stops at its first character, and up to it the two texts, whatever follows, split
/// the same. (A search can read well past the end of its match, as o200k's `'ll` suffix or
/// `\s*[\r\n]+` waiting for a line break do: being followed by text is not enough.)
fn trusted_end(text: &str, from: usize, ahead_end: usize, ahead: &Pieces) -> Option<usize> {
    if from >= text.len() {
        return None;
    }
    if ahead_end == text.len() {
        return Some(ahead_end);
    }
    let near = ahead_end.min(text.len());
    safe_line_start(&text[..near], from)
        // Always a boundary of `ahead` by the same argument; checked, not assumed.
        .filter(|&line| ahead.ends.binary_search(&to_u32(line - from)).is_ok())
}

/// The start of the last line of `text` after byte `after` that begins with neither blank nor
/// `/` (its first character is in `text`). Up to such a line start, every text that begins
/// with the same bytes splits into the same pieces, whatever follows: see [`trusted_end`].
#[must_use]
pub fn safe_line_start(text: &str, after: usize) -> Option<usize> {
    memchr::memrchr_iter(b'\n', text.as_bytes().get(after..)?)
        .map(|i| after + i + 1)
        .find(|&line| {
            text[line..]
                .chars()
                .next()
                .is_some_and(|c| !c.is_whitespace() && c != '/')
        })
}

/// `vector` becomes `head` followed by `vector[kept]` with `f` applied to each: in one pass
/// over the kept values when they move toward the start (`head` is the few pieces before the
/// first boundary met, so they nearly always do), else moved first.
fn shift_after(
    vector: &mut Vec<u32>,
    head: &[u32],
    kept: std::ops::Range<usize>,
    f: impl Fn(u32) -> u32,
) {
    let len = head.len() + kept.len();
    if head.len() <= kept.start {
        for (to, from) in (head.len()..len).zip(kept) {
            vector[to] = f(vector[from]);
        }
        vector.truncate(len);
    } else {
        vector.truncate(kept.end);
        vector.resize(len.max(kept.end), 0);
        vector.copy_within(kept, head.len());
        vector.truncate(len);
        for value in &mut vector[head.len()..] {
            *value = f(*value);
        }
    }
    vector[..head.len()].copy_from_slice(head);
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The pieces of a text tokenized on its own: where each ends and the running token count.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pieces {
    /// Length of the text.
    len: usize,
    /// `ends[i]` is the byte offset where piece `i` ends (pieces are contiguous from 0).
    ends: Vec<u32>,
    /// `cumulative[i]` is the number of tokens in pieces `0..=i`.
    cumulative: Vec<u32>,
}

impl Pieces {
    /// Length of the text the pieces cover.
    #[must_use]
    pub fn text_len(&self) -> usize {
        self.len
    }

    /// The first piece boundary at or after `at` (the text's end when `at` is past it).
    #[must_use]
    pub fn boundary_at_or_after(&self, at: usize) -> usize {
        if at == 0 {
            return 0;
        }
        let i = self.ends.partition_point(|&end| (end as usize) < at);
        self.ends.get(i).map_or(self.len, |&end| end as usize)
    }

    /// The last piece boundary at or before `at`.
    #[must_use]
    pub fn boundary_at_or_before(&self, at: usize) -> usize {
        let i = self.ends.partition_point(|&end| (end as usize) <= at);
        i.checked_sub(1).map_or(0, |i| self.ends[i] as usize)
    }

    /// Tokens of the pieces that end at or before `at`.
    fn tokens_to(&self, at: usize) -> u32 {
        let i = self.ends.partition_point(|&end| (end as usize) <= at);
        i.checked_sub(1).map_or(0, |i| self.cumulative[i])
    }

    /// Appends the pieces of `other` from its boundary `from` to its boundary `to`, as the
    /// pieces of the text that follows this one. Exact when the text from `from` on splits as
    /// `other` says, which no-look-behind matching gives at any boundary of `other`.
    pub fn append_range(&mut self, other: &Pieces, from: usize, to: usize) {
        let first = other.ends.partition_point(|&end| (end as usize) <= from);
        let last = other.ends.partition_point(|&end| (end as usize) <= to);
        let shift = to_u32(self.len).wrapping_sub(to_u32(from));
        let base = self
            .cumulative
            .last()
            .copied()
            .unwrap_or(0)
            .wrapping_sub(other.tokens_to(from));
        let (ends, cumulative) = (&other.ends[first..last], &other.cumulative[first..last]);
        self.ends
            .extend(ends.iter().map(|end| end.wrapping_add(shift)));
        self.cumulative
            .extend(cumulative.iter().map(|n| n.wrapping_add(base)));
        self.len += to.saturating_sub(from);
    }

    /// Empties the pieces, keeping the vectors' memory.
    pub fn clear(&mut self) {
        self.len = 0;
        self.ends.clear();
        self.cumulative.clear();
    }
}

/// The pieces of one document: where each ends and how many tokens precede that end.
pub struct DocumentIndex<'a> {
    tokenizer: &'a Tokenizer,
    text: &'a str,
    pieces: Pieces,
    /// `coarse[k]` is the number of pieces that end before byte `k * COARSE_BYTES`: a look-up
    /// narrows to the few pieces of one stretch, where a binary search over all of them would
    /// miss the cache at most of its steps (text-splitter's probes make millions of them).
    coarse: Vec<u32>,
    /// The last head re-count: (slice start, where it synced, tokens before that).
    last_head: Cell<(usize, usize, usize)>,
}

/// Bytes of text per entry of [`DocumentIndex::coarse`]: about 30 pieces of prose, two cache
/// lines of piece ends, for a table of a 32nd of the text's size.
const COARSE_BYTES: usize = 128;

impl<'a> DocumentIndex<'a> {
    fn new(tokenizer: &'a Tokenizer, text: &'a str, pieces: Pieces) -> Self {
        let stretches = pieces.len / COARSE_BYTES + 2;
        let mut coarse = Vec::with_capacity(stretches);
        let mut ended = 0;
        for k in 0..stretches {
            let bound = k * COARSE_BYTES;
            while pieces
                .ends
                .get(ended)
                .is_some_and(|&end| (end as usize) < bound)
            {
                ended += 1;
            }
            coarse.push(to_u32(ended));
        }
        DocumentIndex {
            tokenizer,
            text,
            pieces,
            coarse,
            last_head: Cell::new((usize::MAX, 0, 0)),
        }
    }

    /// How many pieces end at or before byte `at`.
    fn ended_by(&self, at: usize) -> usize {
        let ends = &self.pieces.ends;
        if at >= self.pieces.len {
            return ends.len();
        }
        // Pieces that end before the stretch of `at` end before it; those that end at or
        // after the next stretch end after it.
        let k = at / COARSE_BYTES;
        let (from, to) = (self.coarse[k] as usize, self.coarse[k + 1] as usize);
        from + ends[from..to].partition_point(|&end| (end as usize) <= at)
    }

    /// The index's vectors, for [`Tokenizer::pieces_in`] to use again.
    #[must_use]
    pub fn into_pieces(self) -> Pieces {
        self.pieces
    }

    /// Total tokens of the document.
    #[must_use]
    pub fn total(&self) -> usize {
        self.pieces.cumulative.last().map_or(0, |&n| n as usize)
    }

    /// Tokens before byte offset `at`, where `at` is a piece boundary.
    fn tokens_before(&self, at: usize) -> usize {
        self.ended_by(at)
            .checked_sub(1)
            .map_or(0, |i| self.pieces.cumulative[i] as usize)
    }

    fn is_boundary(&self, at: usize) -> bool {
        at == 0 || self.boundary_at_or_before(at) == at
    }

    /// The last piece boundary at or before `at`.
    fn boundary_at_or_before(&self, at: usize) -> usize {
        self.ended_by(at)
            .checked_sub(1)
            .map_or(0, |i| self.pieces.ends[i] as usize)
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
            self.tokenizer
                .for_each_piece(slice, |offset, piece, tokens| {
                    head_tokens += tokens;
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
        // tiktoken-rs tries `\s++$` before `\s*[\r\n]`, so it keeps "\n  " at the end of a
        // text as one piece where bpe-openai's patterns make two; the counts still agree
        // because neither vocabulary has a token of a newline followed by other whitespace.
        "line\n  ",
        "a\r\n\t \u{3000}",
        "end \n\n \t",
    ];

    #[test]
    fn counts_match_tiktoken_rs() {
        // Twice over, the second time with the pieces in this thread's memo, the two
        // encodings' memos both filled.
        for encoding in Encoding::ALL.into_iter().chain(Encoding::ALL) {
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

    /// Every way of cutting a sample into a text and a part tokenized ahead (which may end
    /// before the text, with it, or after it) gives the index of the text tokenized whole.
    #[test]
    fn an_index_with_a_part_tokenized_ahead_is_the_whole_index() {
        for encoding in Encoding::ALL {
            let tokenizer = Tokenizer::shared(encoding).unwrap();
            for sample in SAMPLES.iter().chain(&[
                "tail of one chunk.\n\nNext paragraph  starts  here\n  indented\tline 12345 more",
                "   \n\n\t  words after blanks   \n\n  ",
                "one\nTwo I'LL\nthree 1234\n\nfour  \nfive\r\nsix. \nseven",
                "a/\n/b.\n//c\u{85}\nd\u{2028}\n'll\n\u{301}x\n12\n日本\n\tend\n-",
            ]) {
                let bounds: Vec<usize> = (0..=sample.len())
                    .filter(|&i| sample.is_char_boundary(i))
                    .collect();
                for &end in &bounds {
                    let text = &sample[..end];
                    let whole = tokenizer.index(text);
                    for (f, &from) in bounds.iter().enumerate().filter(|(_, f)| **f <= end) {
                        // Ahead text ending at its start, just before, at and just after the
                        // text's end, midway, and with the sample.
                        let e = bounds.partition_point(|&b| b < end);
                        let mut ends: Vec<usize> =
                            [f, e.saturating_sub(1), e, e + 1, usize::midpoint(f, e)]
                                .into_iter()
                                .filter_map(|i| bounds.get(i).copied())
                                .chain([sample.len()])
                                .filter(|&b| b >= from)
                                .collect();
                        ends.dedup();
                        for ahead_end in ends {
                            let ahead = tokenizer.pieces(&sample[from..ahead_end]);
                            let joined = tokenizer.index_ahead(text, from, ahead);
                            assert_eq!(
                                (&joined.pieces.ends, &joined.pieces.cumulative),
                                (&whole.pieces.ends, &whole.pieces.cumulative),
                                "{encoding}: {sample:?}, text ..{end}, ahead {from}..{ahead_end}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// `shift_after` gives `head` then the kept values mapped, whichever way they move.
    #[test]
    fn shift_after_is_head_then_the_kept_values_mapped() {
        for len in 0..7u32 {
            for head_len in 0..5u32 {
                for start in 0..=len as usize {
                    for end in start..=len as usize {
                        let mut vector: Vec<u32> = (0..len).map(|n| n * 10).collect();
                        let head: Vec<u32> = (0..head_len).map(|n| 1000 + n).collect();
                        let mut expected = head.clone();
                        expected.extend(vector[start..end].iter().map(|n| n + 1));
                        shift_after(&mut vector, &head, start..end, |n| n + 1);
                        assert_eq!(vector, expected, "{len} {head_len} {start}..{end}");
                    }
                }
            }
        }
    }

    /// A memo key holds a piece's bytes zero-padded, its length in the last byte: the key of
    /// no other piece.
    #[test]
    fn memo_keys_are_the_padded_bytes_and_length() {
        let mut state = 7u64;
        for len in 2..=MEMO_BYTES {
            for _ in 0..64 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        state = state
                            .wrapping_mul(6_364_136_223_846_793_005)
                            .wrapping_add(1);
                        (state >> 56) as u8
                    })
                    .collect();
                let mut padded = [0u8; 16];
                padded[..len].copy_from_slice(&bytes);
                padded[15] = len as u8;
                assert_eq!(
                    Memo::slot(&bytes).0,
                    u128::from_le_bytes(padded),
                    "{bytes:?}"
                );
            }
        }
    }

    /// Text made mostly of what the ASCII pieces decide (contractions in both cases, blank
    /// and line-break runs, punctuation with `/`, digit runs, camel case) and the characters
    /// outside ASCII that would change their answer if they took them.
    fn ascii_heavy() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let fragments = vec![
            "a",
            "Ab",
            "HTTPServer",
            "xYZ",
            "don't",
            "I'LL",
            "'s",
            "'S",
            "'re",
            "'Ve",
            "'m",
            "'ll",
            "'d",
            "'x",
            "'",
            "''",
            "12",
            "3456",
            "7",
            " ",
            "  ",
            "\t",
            "\n",
            "\r\n",
            " \n ",
            "\n\n",
            "\x0b",
            "\x0c",
            ".",
            ", ",
            "(",
            "...",
            "/",
            "//",
            "-\n/",
            "_",
            "\0",
            "é",
            "É",
            "ſ",
            "日",
            "\u{a0}",
            "\u{85}",
            "\u{3000}",
            "’",
            "\u{301}",
            "٣",
            "ǅ",
            "²",
            "👍",
        ];
        prop::collection::vec(prop::sample::select(fragments), 0..40)
            .prop_map(|parts| parts.concat())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        /// Wherever the ASCII pieces answer, at every character of the text, they end where
        /// the regex's do.
        #[test]
        fn ascii_pieces_end_where_the_regex_pieces_do(text in ascii_heavy(), o200k in proptest::prelude::any::<bool>()) {
            let encoding = if o200k { Encoding::O200kBase } else { Encoding::Cl100kBase };
            let tokenizer = Tokenizer::shared(encoding).unwrap();
            let mut cache = tokenizer.pieces.create_cache();
            for at in (0..text.len()).filter(|&at| text.is_char_boundary(at)) {
                if let Some(length) = ascii::piece_end(encoding, &text.as_bytes()[at..]) {
                    proptest::prop_assert_eq!(
                        at + length,
                        tokenizer.regex_piece_end(&mut cache, &text, at),
                        "{:?} at {}", text, at
                    );
                } else {
                    // Only a character outside ASCII sends a piece to the regex.
                    proptest::prop_assert!(!text.is_ascii(), "{:?} at {}", text, at);
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
}
