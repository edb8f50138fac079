//! The pre-tokenizer's pieces of ASCII text, found without the regex.
//!
//! Most text that is chunked is ASCII, where the patterns of [`super::tokenizer`] reduce to a
//! few runs of byte classes. Searching them with the regex costs a DFA search per piece, which
//! was the largest single cost of tokenizing prose; the runs below cost a table look-up per
//! byte. Wherever the answer depends on a byte outside ASCII (a letter run that may go on in
//! `é`, a punctuation run that may go on in `“`, `ſ` which `(?i:'s)` matches, a blank run
//! that may go on in a no-break space) they give up, and the regex decides that piece. Tests
//! compare them with the regex at every position of random text.
//!
//! Each function reads the patterns as a backtracking engine does: alternatives in order, the
//! first that matches wins, quantifiers greedy.

use super::Encoding;

/// What the patterns see in an ASCII byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// `A-Z`: `\p{L}`, and `\p{Lu}` in o200k.
    Upper,
    /// `a-z`: `\p{L}`, and `\p{Ll}` in o200k.
    Lower,
    /// `0-9`: `\p{N}`.
    Digit,
    /// `\r`, `\n`: `\s` and `[\r\n]`.
    Newline,
    /// Tab, vertical tab, form feed and space: `\s`.
    Blank,
    /// Everything else: punctuation, symbols and controls, `[^\s\p{L}\p{N}]`.
    Other,
    /// A byte of a character outside ASCII: not classified here.
    Beyond,
}

impl Class {
    fn is_letter(self) -> bool {
        matches!(self, Class::Upper | Class::Lower)
    }

    fn is_space(self) -> bool {
        matches!(self, Class::Newline | Class::Blank)
    }
}

const CLASSES: [Class; 256] = {
    let mut classes = [Class::Beyond; 256];
    let mut b = 0;
    while b < 128 {
        classes[b] = match b as u8 {
            b'A'..=b'Z' => Class::Upper,
            b'a'..=b'z' => Class::Lower,
            b'0'..=b'9' => Class::Digit,
            b'\r' | b'\n' => Class::Newline,
            // `\s` is Unicode's White_Space: in ASCII, 0x09 to 0x0D and the space.
            b'\t' | 0x0b | 0x0c | b' ' => Class::Blank,
            _ => Class::Other,
        };
        b += 1;
    }
    classes
};

/// Where the first piece of `text` ends (with the look-ahead pattern's last character given
/// back), or `None` when that depends on a character outside ASCII. `text` is not empty.
pub(super) fn piece_end(encoding: Encoding, text: &[u8]) -> Option<usize> {
    match encoding {
        Encoding::Cl100kBase => cl100k(text),
        Encoding::O200kBase => o200k(text),
    }
}

/// The class of `text[i]`: `None` when it is outside ASCII, [`Class::Beyond`] past the end
/// (which no pattern takes).
fn class(text: &[u8], i: usize) -> Option<Class> {
    match text.get(i) {
        None => Some(Class::Beyond),
        Some(&b) if b >= 0x80 => None,
        Some(&b) => Some(CLASSES[usize::from(b)]),
    }
}

/// The end of the run of bytes from `i` whose class `takes`: `None` when the run meets a
/// character outside ASCII, which may or may not continue it.
fn run(text: &[u8], mut i: usize, takes: impl Fn(Class) -> bool) -> Option<usize> {
    loop {
        match text.get(i) {
            Some(&b) if b >= 0x80 => return None,
            Some(&b) if takes(CLASSES[usize::from(b)]) => i += 1,
            _ => return Some(i),
        }
    }
}

/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)` at `i`: its length if it matches there, else 0.
fn contraction(text: &[u8], i: usize) -> Option<usize> {
    if text.get(i) != Some(&b'\'') {
        return Some(0);
    }
    // `(?i:s)` also matches `ſ`: a character outside ASCII is left to the regex.
    class(text, i + 1)?;
    let second = |b: u8| text.get(i + 2).map(u8::to_ascii_lowercase) == Some(b);
    let found = match text.get(i + 1).map(u8::to_ascii_lowercase) {
        Some(b's' | b't' | b'm' | b'd') => 2,
        Some(b'r' | b'v') if second(b'e') => 3,
        Some(b'l') if second(b'l') => 3,
        _ => 0,
    };
    Some(found)
}

/// The blank alternatives both encodings end with, for a piece that starts with `\s`:
/// `\s*[\r\n]+`, `\s+$`, then the look-ahead `\s+(?!\S)` and `\s+`.
fn spaces(text: &[u8]) -> Option<usize> {
    let end = run(text, 0, Class::is_space)?;
    if let Some(newline) = text[..end].iter().rposition(|&b| b == b'\r' || b == b'\n') {
        // `\s*` gives back characters until `[\r\n]+` can match: the last line break ends it.
        return Some(newline + 1);
    }
    if end == text.len() {
        return Some(end);
    }
    // `\s+\s`, the last one given back; a single blank is `\s+`.
    Some(if end > 1 { end - 1 } else { end })
}

/// ` ?[^\s\p{L}\p{N}]+` and what follows it (`[\r\n]*`, or `[\r\n/]*` in o200k): its
/// length if it matches, else 0.
fn punctuation(text: &[u8], then: impl Fn(u8) -> bool) -> Option<usize> {
    let start = usize::from(text[0] == b' ');
    if class(text, start)? != Class::Other {
        return Some(0);
    }
    let end = run(text, start, |c| c == Class::Other)?;
    // Nothing outside ASCII is a line break or `/`.
    let tail = text[end..].iter().take_while(|&&b| then(b)).count();
    Some(end + tail)
}

/// `\p{N}{1,3}`, at a digit.
fn digits(text: &[u8]) -> Option<usize> {
    let mut end = 1;
    while end < 3 && class(text, end)? == Class::Digit {
        end += 1;
    }
    Some(end)
}

/// cl100k_base: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
/// ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`.
fn cl100k(text: &[u8]) -> Option<usize> {
    let first = class(text, 0)?;
    let contracted = contraction(text, 0)?;
    if contracted > 0 {
        return Some(contracted);
    }
    match first {
        c if c.is_letter() => return run(text, 0, Class::is_letter),
        Class::Blank | Class::Other if class(text, 1)?.is_letter() => {
            return run(text, 1, Class::is_letter);
        }
        Class::Digit => return digits(text),
        _ => {}
    }
    let punctuated = punctuation(text, |b| b == b'\r' || b == b'\n')?;
    if punctuated > 0 {
        return Some(punctuated);
    }
    // What is left starts with `\s`: a character that is not one would have been taken above.
    spaces(text)
}

/// o200k_base: `[^\r\n\p{L}\p{N}]?[\p{Lu}…]*[\p{Ll}…]+(?i:'s|…)?|[^\r\n\p{L}\p{N}]?[\p{Lu}…]+
/// [\p{Ll}…]*(?i:'s|…)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+`,
/// where in ASCII the upper-case classes are `A-Z` and the lower-case ones `a-z`.
fn o200k(text: &[u8]) -> Option<usize> {
    let first = class(text, 0)?;
    // The optional first character: taken whenever it can be, since without it a letter
    // would have to come first.
    let start = match first {
        c if c.is_letter() => Some(0),
        Class::Blank | Class::Other => Some(1),
        _ => None,
    };
    if let Some(start) = start {
        // Upper case then lower case, at least one of either (the first alternative wants a
        // lower-case letter, the second an upper-case one; in ASCII both are the runs).
        let upper = run(text, start, |c| c == Class::Upper)?;
        let lower = run(text, upper, |c| c == Class::Lower)?;
        if lower > start {
            return Some(lower + contraction(text, lower)?);
        }
    }
    if first == Class::Digit {
        return digits(text);
    }
    let punctuated = punctuation(text, |b| matches!(b, b'\r' | b'\n' | b'/'))?;
    if punctuated > 0 {
        return Some(punctuated);
    }
    spaces(text)
}
