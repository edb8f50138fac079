//! Invariants of the chunker over random text, checked against tiktoken-rs itself.

use std::fmt::Write as _;

use proptest::prelude::*;
use tiktoken_rs::CoreBPE;

use super::*;

/// Fragments that stress tokenization and boundaries: prose in several scripts and cases,
/// CJK, emoji ZWJ sequences, combining marks, contractions, digit and whitespace runs,
/// punctuation runs and words far longer than a chunk.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z]{1,12}",
        1 => "[A-Z][a-z]{1,8}[A-Z]{1,6}[a-z]{0,5}",
        1 => "[0-9]{1,9}",
        1 => "[0-9]{10,400}",
        1 => "[\u{4e00}-\u{4e80}\u{3040}-\u{309f}\u{ac00}-\u{ac40}]{1,20}",
        1 => "[\u{0410}-\u{044f}\u{0391}-\u{03c9}\u{05d0}-\u{05ea}\u{0627}-\u{064a}\u{0905}-\u{0939}\u{0e01}-\u{0e2e}a-z]{1,16}",
        1 => prop::sample::select(vec!["👩‍👩‍👧‍👦", "🇫🇷", "👍🏽", "❤️", "e\u{301}", "a\u{308}\u{332}", "🧑🏿‍🤝‍🧑🏻", "\u{200d}", "\u{feff}"]).prop_map(String::from),
        1 => "[a-z\u{300}-\u{36f}]{1,12}",
        1 => prop::sample::select(vec!["'s", "'T", "'re", "'VE", "'m", "'ll", "'D", "n't", "’s"]).prop_map(String::from),
        1 => "[!-/:-@\\[-`{-~]{1,4}",
        1 => "[ \t\n\r\u{a0}\u{2003}\u{3000}\u{85}]{1,300}",
        1 => "[a-z]{200,900}",
    ]
}

fn separator() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        " ", " ", " ", "  ", "\n", "\n\n", ". ", ", ", "\t", "\r\n", "\n# ", "\n- ",
    ])
}

fn document() -> impl Strategy<Value = String> {
    prop::collection::vec((fragment(), separator()), 0..400)
        .prop_map(|parts| parts.into_iter().map(|(word, sep)| word + sep).collect())
}

/// tiktoken-rs's own tokenizer of `encoding`: the reference every count is checked against.
fn reference(encoding: Encoding) -> &'static CoreBPE {
    static CL100K: std::sync::OnceLock<CoreBPE> = std::sync::OnceLock::new();
    static O200K: std::sync::OnceLock<CoreBPE> = std::sync::OnceLock::new();
    let cell = match encoding {
        Encoding::Cl100kBase => &CL100K,
        Encoding::O200kBase => &O200K,
    };
    cell.get_or_init(|| encoding.core_bpe().unwrap())
}

fn tokens(text: &str) -> usize {
    tokens_in(Encoding::Cl100kBase, text)
}

fn tokens_in(encoding: Encoding, text: &str) -> usize {
    reference(encoding).encode_ordinary(text).len()
}

fn check_invariants(text: &str, chunks: &[Chunk], size: usize, overlap: usize) {
    check_invariants_in(Encoding::Cl100kBase, text, chunks, size, overlap);
}

fn check_invariants_in(
    encoding: Encoding,
    text: &str,
    chunks: &[Chunk],
    size: usize,
    overlap: usize,
) {
    let tokens = |text: &str| tokens_in(encoding, text);
    let mut covered = vec![false; text.len()];
    for (i, chunk) in chunks.iter().enumerate() {
        let piece = text
            .get(chunk.range.clone())
            .expect("chunk range splits a character");
        assert!(!piece.trim().is_empty(), "chunk {i} is blank");
        let counted = tokens(piece);
        assert_eq!(
            chunk.token_count, counted,
            "chunk {i} reports a wrong count: {piece:?}"
        );
        assert!(
            counted <= size,
            "chunk {i} has {counted} > {size} tokens: {piece:?}"
        );
        covered[chunk.range.clone()]
            .iter_mut()
            .for_each(|c| *c = true);
        if let Some(next) = chunks.get(i + 1) {
            assert!(next.range.start > chunk.range.start, "starts must increase");
            assert!(next.range.end > chunk.range.end, "ends must increase");
            if next.range.start < chunk.range.end {
                let shared = tokens(&text[next.range.start..chunk.range.end]);
                assert!(
                    shared <= overlap,
                    "chunks {i},{} share {shared} > {overlap} tokens",
                    i + 1
                );
            }
        }
    }
    for (at, ch) in text.char_indices() {
        assert!(
            ch.is_whitespace() || covered[at],
            "{ch:?} at byte {at} is in no chunk"
        );
    }
}

fn encoding() -> impl Strategy<Value = Encoding> {
    prop::sample::select(Encoding::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn plain_chunks_keep_the_invariants(encoding in encoding(), text in document(), size in 4usize..300, overlap_pct in 0usize..60) {
        let overlap = size * overlap_pct / 100;
        let chunker = Chunker::new(encoding, size, overlap).unwrap();
        check_invariants_in(encoding, &text, &chunker.chunk(&text, Structure::Plain), size, overlap);
    }

    #[test]
    fn markdown_chunks_keep_the_invariants(encoding in encoding(), text in document(), size in 4usize..300, overlap_pct in 0usize..60) {
        let overlap = size * overlap_pct / 100;
        let chunker = Chunker::new(encoding, size, overlap).unwrap();
        check_invariants_in(encoding, &text, &chunker.chunk(&text, Structure::Markdown), size, overlap);
    }

    /// A text whose end was tokenized ahead (read ahead of a streamed segment, which may stop
    /// before or after the part read) is chunked exactly as when tokenized whole.
    #[test]
    fn chunks_after_a_part_tokenized_ahead_are_the_same(encoding in encoding(), text in document(), size in 4usize..300, overlap_pct in 0usize..60, markdown in any::<bool>(), cut in 0usize..=1000, over in 0usize..300, stop in 0usize..200) {
        let chunker = Chunker::new(encoding, size, size * overlap_pct / 100).unwrap();
        let structure = if markdown { Structure::Markdown } else { Structure::Plain };
        // Places in the text, in thousandths of its length.
        let at = |permille: usize| {
            let mut i = text.len() * permille.min(1000) / 1000;
            while !text.is_char_boundary(i) { i -= 1; }
            i
        };
        // The segment ends at `end`; the text read ahead runs from `from` to `ahead_end`.
        let end = at(1000 - stop);
        let from = at(cut).min(end);
        let ahead_end = at(cut + over).max(from).max(if stop < 100 { end } else { from });
        // Vectors spent on another text first, as a stream of segments hands them on.
        let spent = chunker.tokenize_part(&text[..from], from, Pieces::default()).unwrap();
        let ahead = chunker.tokenize_part(&text[from..ahead_end], ahead_end - from, spent).unwrap();
        let segment = &text[..end];
        prop_assert_eq!(
            chunker.chunk_after(segment, structure, size, from, ahead).0,
            chunker.chunk(segment, structure)
        );
    }

    #[test]
    fn counts_match_tiktoken_rs(encoding in encoding(), text in document()) {
        let tokenizer = Tokenizer::shared(encoding).unwrap();
        prop_assert_eq!(tokenizer.count(&text), tokens_in(encoding, &text));
        prop_assert_eq!(tokenizer.index(&text).total(), tokens_in(encoding, &text));
    }
}

#[test]
fn a_megabyte_without_a_space_is_counted_exactly_in_every_chunk() {
    // One pre-tokenizer piece per run of letters: a megabyte of them is one piece, which a
    // quadratic merge loop would never finish. Letters of several scripts, so the merges vary.
    let mut state = 11u64;
    let alphabet: Vec<char> = "abcdefghijklmnopqrstuvwxyzéüßжщ日本語".chars().collect();
    let text: String = (0..800_000)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            alphabet[(state >> 33) as usize % alphabet.len()]
        })
        .collect();
    assert!(text.len() >= 1_000_000);
    for encoding in Encoding::ALL {
        let chunker = Chunker::new(encoding, 512, 50).unwrap();
        let chunks = chunker.chunk(&text, Structure::Plain);
        check_invariants_in(encoding, &text, &chunks, 512, 50);
    }
}

#[test]
fn windows_do_not_change_the_invariants_on_long_documents() {
    // ~600 KB: several windows at this chunk size.
    let paragraph = "The quick brown fox jumps over the lazy dog, again and again. ".repeat(20);
    let mut text = String::new();
    for i in 0..500 {
        let _ = write!(text, "{i}. {paragraph}\n\n");
    }
    let chunker = Chunker::new(Encoding::Cl100kBase, 64, 8).unwrap();
    let chunks = chunker.chunk(&text, Structure::Plain);
    assert!(chunks.len() > 1000);
    check_invariants(&text, &chunks, 64, 8);
}

#[test]
fn rejects_invalid_sizes() {
    assert!(matches!(
        Chunker::new(Encoding::Cl100kBase, 3, 0),
        Err(ChunkError::TooSmall)
    ));
    assert!(matches!(
        Chunker::new(Encoding::Cl100kBase, 10, 10),
        Err(ChunkError::OverlapTooLarge {
            size: 10,
            overlap: 10
        })
    ));
}

#[test]
fn same_input_same_chunks() {
    let text = "One sentence. Another one follows here.\n\nA new paragraph starts. ".repeat(50);
    let chunker = Chunker::new(Encoding::O200kBase, 30, 5).unwrap();
    assert_eq!(
        chunker.chunk(&text, Structure::Plain),
        chunker.chunk(&text, Structure::Plain)
    );
}

#[test]
fn markdown_indentation_in_the_overlap_is_not_shared() {
    // Found by the property test: a markdown chunk starting with indentation inside the overlap.
    let text = "A  aAcCkDm\tII  丼たげほょ乐ぎ丧乎\n\n\\&+$\n\n";
    let chunker = Chunker::new(Encoding::Cl100kBase, 26, 12).unwrap();
    check_invariants(text, &chunker.chunk(text, Structure::Markdown), 26, 12);
}

#[test]
fn a_chunk_reaching_back_into_blank_text_replaces_what_it_covers() {
    // Found by the markdown proptest: text-splitter's next chunk reached back for overlap into
    // the Unicode blank run its previous chunk was trimmed of, so it started at or before it.
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/chunking/unicode_blanks.md"
    ))
    .unwrap();
    let chunker = Chunker::new(Encoding::Cl100kBase, 74, 27).unwrap();
    check_invariants(&text, &chunker.chunk(&text, Structure::Markdown), 74, 27);
}

#[test]
fn long_blank_runs_are_boundaries_and_cost_little() {
    let chunker = Chunker::new(Encoding::Cl100kBase, 50, 5).unwrap();
    // 60,000 blank lines made this quadratic inside text-splitter (minutes).
    let text = format!("first words{}last words", " \n".repeat(30_000));
    let chunks = chunker.chunk(&text, Structure::Plain);
    let texts: Vec<&str> = chunks.iter().map(|c| &text[c.range.clone()]).collect();
    assert_eq!(texts, ["first words", "last words"]);
    check_invariants(&text, &chunks, 50, 5);
    let short = super::blocks("a   b");
    assert_eq!(short.len(), 1, "short blank runs stay inside a block");
    assert_eq!(short[0], 0..5);
}

/// [`super::blocks`] as it was first written, looking at every byte: the reference.
fn blocks_byte_by_byte(text: &str) -> Vec<Range<usize>> {
    let bytes = text.as_bytes();
    let mut blocks = Vec::new();
    let (mut block_start, mut run_start) = (0, None);
    for (i, &b) in bytes.iter().enumerate() {
        if b.is_ascii_whitespace() {
            run_start.get_or_insert(i);
            continue;
        }
        if let Some(run) = run_start.take()
            && i - run >= super::BLANK_RUN_BYTES
        {
            if run > block_start {
                blocks.push(block_start..run);
            }
            block_start = i;
        }
    }
    let end = match run_start {
        Some(run) if bytes.len() - run >= super::BLANK_RUN_BYTES => run,
        _ => bytes.len(),
    };
    if end > block_start {
        blocks.push(block_start..end);
    }
    blocks
}

proptest! {
    /// Blank runs of every length around the threshold, at the start, the end and next to
    /// each other, with blanks that are not ASCII whitespace (vertical tab, no-break space).
    #[test]
    fn blocks_are_found_as_by_looking_at_every_byte(parts in prop::collection::vec((0usize..600, "[ \t\n\r\x0c]", "[a\x0b\u{a0}]{0,3}"), 0..12)) {
        let text: String = parts
            .iter()
            .map(|(run, blank, word)| blank.repeat(*run) + word)
            .collect();
        prop_assert_eq!(super::blocks(&text), blocks_byte_by_byte(&text));
    }
}

#[test]
fn a_chunk_never_grows_past_its_size_when_its_leading_space_is_dropped() {
    // Found by the markdown proptest: this text is 173 tokens after a space and 174 without
    // it, so a chunk starting inside its predecessor's overlap must not simply drop the space.
    let tail = format!(
        "👩\u{200d}👩\u{200d}👧\u{200d}👦, {}\r\nOCJWP",
        "beyozpmamwihylbaofrwztyvwpixvbpejvogzytkwxslnqrutpccvyvyzltukesfcqgxrqygmfceolpvjwzjicphnapaleqbxvncbvpzxgprtvlpvlyqnlbgqtsxwqnbpxmbijefhdgpnncmgxbziepvwhogvalhylgjpowssuqxsollznizzfaiuqcpwiwhnxxchsdfqbwkmnhioxbpblskjsjlncjzywgcynzwgmwefwrbrsjdfqlehafkwptllouoghjyuonaombxfvrj"
    );
    let ahead = tokens(&format!(" {tail}"));
    assert!(
        tokens(&tail) > ahead,
        "the sample no longer shows the effect"
    );
    let text = format!("lead words then {tail}");
    let start = text.find(" 👩").unwrap();
    // The predecessor ends after the emoji's comma; the chunk starts at the space before it.
    let prev_end = start + text[start..].find(',').unwrap() + 1;
    let tokenizer = Tokenizer::shared(Encoding::Cl100kBase).unwrap();
    let index = tokenizer.index(&text);
    let limits = Limits {
        capacity: ahead,
        overlap: 10,
        next_start: None,
    };
    let chosen = overlap_start(&index, start..text.len(), prev_end, limits);
    assert!(
        (start..=prev_end).contains(&chosen),
        "{chosen} leaves text uncovered"
    );
    assert!(
        tokens(&text[chosen..]) <= ahead,
        "the chunk outgrew its size"
    );
    assert!(
        tokens(&text[chosen..prev_end]) <= 10,
        "the overlap outgrew its limit"
    );
}
