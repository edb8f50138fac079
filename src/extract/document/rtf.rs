//! RTF: the text of the document's groups, read in one streaming pass — font and colour tables,
//! style sheets, document info, pictures, objects and field instructions are left out; Unicode
//! escapes, code-page bytes (`\ansicpgN`), paragraphs, tabs and table cells are kept.

use std::io::{BufReader, Read};

use super::{Budget, Builder, Extracted, corrupt};
use crate::error::FileError;

/// Bytes between two checks of the deadline.
const BYTES_PER_CHECK: u64 = 1 << 20;

/// The text of an RTF document.
///
/// # Errors
/// `CORRUPT_FILE` when it does not start as RTF or cannot be read; `LIMIT_EXCEEDED` past the
/// text limit or the deadline.
pub fn extract(reader: impl Read, budget: &Budget) -> Result<Extracted, FileError> {
    let mut parser = Parser {
        input: BufReader::new(reader).bytes(),
        peeked: None,
        read: 0,
        out: Builder::new(budget.max_text_bytes),
        groups: vec![Group::default()],
        pending: Vec::new(),
        codepage: encoding_rs::WINDOWS_1252,
        budget,
    };
    parser.run()?;
    Ok(parser.out.finish())
}

/// What a group changes for the text inside it.
#[derive(Debug, Clone, Copy)]
struct Group {
    /// Its text is not part of the document.
    skip: bool,
    /// Characters after a `\uN` that stand in for it in readers without Unicode (`\ucN`).
    uc: usize,
}

impl Default for Group {
    fn default() -> Self {
        Group { skip: false, uc: 1 }
    }
}

struct Parser<'b, R: Read> {
    input: std::io::Bytes<BufReader<R>>,
    peeked: Option<u8>,
    read: u64,
    out: Builder,
    groups: Vec<Group>,
    /// Code-page bytes (`\'hh`) not decoded yet: a double-byte character comes in two.
    pending: Vec<u8>,
    codepage: &'static encoding_rs::Encoding,
    budget: &'b Budget,
}

/// Groups nested deeper than this are malformed (or hostile).
const MAX_DEPTH: usize = 1024;

impl<R: Read> Parser<'_, R> {
    fn next(&mut self) -> Result<Option<u8>, FileError> {
        if let Some(byte) = self.peeked.take() {
            return Ok(Some(byte));
        }
        self.read += 1;
        if self.read.is_multiple_of(BYTES_PER_CHECK) {
            self.budget.check_time()?;
        }
        self.input
            .next()
            .transpose()
            .map_err(|err| corrupt("rtf", err))
    }

    fn peek(&mut self) -> Result<Option<u8>, FileError> {
        if self.peeked.is_none() {
            self.peeked = self.next()?;
        }
        Ok(self.peeked)
    }

    fn group(&self) -> Group {
        self.groups.last().copied().unwrap_or_default()
    }

    fn run(&mut self) -> Result<(), FileError> {
        let mut start = [0; 5];
        for byte in &mut start {
            *byte = self
                .next()?
                .ok_or_else(|| corrupt("rtf", "the file ends before its header"))?;
        }
        if &start != b"{\\rtf" {
            return Err(corrupt("rtf", "the file does not start with {\\rtf"));
        }
        // `\rtf1`: the version, and the space that may end it.
        while self.peek()?.is_some_and(|b| b.is_ascii_digit()) {
            self.peeked = None;
        }
        if self.peek()? == Some(b' ') {
            self.peeked = None;
        }
        self.groups.push(Group::default());
        // Characters still to skip after a `\uN`.
        let mut skip_chars = 0usize;
        while let Some(byte) = self.next()? {
            match byte {
                b'{' => {
                    self.flush()?;
                    if self.groups.len() > MAX_DEPTH {
                        return Err(corrupt("rtf", "groups nest deeper than 1024"));
                    }
                    self.groups.push(self.group());
                    skip_chars = 0;
                }
                b'}' => {
                    self.flush()?;
                    self.groups.pop();
                    if self.groups.len() <= 1 {
                        break;
                    }
                    skip_chars = 0;
                }
                b'\\' => {
                    let skipping = skip_chars > 0;
                    let word = self.control()?;
                    if skipping {
                        skip_chars -= 1;
                        continue;
                    }
                    if let Some(after) = self.apply(word)? {
                        skip_chars = after;
                    }
                }
                b'\r' | b'\n' => {}
                byte => {
                    if skip_chars > 0 {
                        skip_chars -= 1;
                        continue;
                    }
                    self.flush()?;
                    if !self.group().skip {
                        self.text_byte(byte)?;
                    }
                }
            }
        }
        self.flush()
    }

    /// Reads what follows a backslash.
    fn control(&mut self) -> Result<Control, FileError> {
        let Some(first) = self.next()? else {
            return Ok(Control::Symbol(b'\\'));
        };
        if !first.is_ascii_alphabetic() {
            if first == b'\'' {
                let mut hex = [0; 2];
                for digit in &mut hex {
                    *digit = self.next()?.unwrap_or(b'0');
                }
                let byte = std::str::from_utf8(&hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .unwrap_or(b'?');
                return Ok(Control::Byte(byte));
            }
            return Ok(Control::Symbol(first));
        }
        let mut word = vec![first];
        while let Some(byte) = self.peek()? {
            if byte.is_ascii_alphabetic() && word.len() < 32 {
                word.push(byte);
                self.peeked = None;
            } else {
                break;
            }
        }
        let mut digits = String::new();
        if self.peek()? == Some(b'-') {
            self.peeked = None;
            digits.push('-');
        }
        while let Some(byte) = self.peek()? {
            if byte.is_ascii_digit() && digits.len() < 11 {
                digits.push(char::from(byte));
                self.peeked = None;
            } else {
                break;
            }
        }
        // One space ends a control word and is part of it.
        if self.peek()? == Some(b' ') {
            self.peeked = None;
        }
        Ok(Control::Word(
            String::from_utf8_lossy(&word).into_owned(),
            digits.parse().ok(),
        ))
    }

    /// Applies a control; returns how many characters to skip after a `\uN`.
    fn apply(&mut self, control: Control) -> Result<Option<usize>, FileError> {
        let word = match control {
            Control::Byte(byte) => {
                if !self.group().skip {
                    self.pending.push(byte);
                }
                return Ok(None);
            }
            Control::Symbol(symbol) => {
                self.flush()?;
                let text = match symbol {
                    b'\\' | b'{' | b'}' => Some(char::from(symbol)),
                    b'~' => Some(' '),
                    b'_' => Some('-'),
                    b'\r' | b'\n' => Some('\n'),
                    b'*' => {
                        // An ignorable destination: the group is skipped unless known.
                        if let Some(group) = self.groups.last_mut() {
                            group.skip = true;
                        }
                        None
                    }
                    _ => None,
                };
                if let Some(c) = text
                    && !self.group().skip
                {
                    self.out.push(c.encode_utf8(&mut [0; 4]))?;
                }
                return Ok(None);
            }
            Control::Word(word, number) => (word, number),
        };
        self.flush()?;
        let (word, number) = word;
        match word.as_str() {
            "ansicpg" => {
                if let Some(page) = number {
                    self.codepage = codepage(page);
                }
            }
            "uc" => {
                if let Some(group) = self.groups.last_mut() {
                    group.uc = usize::try_from(number.unwrap_or(1)).unwrap_or(1).min(8);
                }
            }
            "u" => {
                let Some(code) = number else { return Ok(None) };
                let code = if code < 0 { code + 65_536 } else { code };
                if !self.group().skip {
                    let c = u32::try_from(code)
                        .ok()
                        .and_then(char::from_u32)
                        .unwrap_or('\u{fffd}');
                    self.out.push(c.encode_utf8(&mut [0; 4]))?;
                }
                return Ok(Some(self.group().uc));
            }
            "bin" => {
                // Raw bytes that are not text.
                for _ in 0..number.unwrap_or(0).max(0) {
                    if self.next()?.is_none() {
                        break;
                    }
                }
            }
            word if destination(word) => {
                if let Some(group) = self.groups.last_mut() {
                    group.skip = true;
                }
            }
            word => {
                let text = match word {
                    "par" | "line" | "sect" | "page" | "row" => "\n",
                    "tab" => "\t",
                    "cell" => " | ",
                    "emdash" => "—",
                    "endash" => "–",
                    "bullet" => "•",
                    "lquote" => "‘",
                    "rquote" => "’",
                    "ldblquote" => "“",
                    "rdblquote" => "”",
                    "emspace" | "enspace" | "qmspace" => " ",
                    _ => "",
                };
                if !text.is_empty() && !self.group().skip {
                    if word == "row" {
                        // The last cell of a row is followed by its end, not a separator.
                        self.out.drop_suffix(" | ");
                    }
                    self.out.push(text)?;
                }
            }
        }
        Ok(None)
    }

    fn text_byte(&mut self, byte: u8) -> Result<(), FileError> {
        if byte.is_ascii() {
            self.out.push(char::from(byte).encode_utf8(&mut [0; 4]))
        } else {
            self.pending.push(byte);
            Ok(())
        }
    }

    /// Decodes code-page bytes gathered so far.
    fn flush(&mut self) -> Result<(), FileError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let (text, _, _) = self.codepage.decode(&self.pending);
        let text = text.into_owned();
        self.pending.clear();
        self.out.push(&text)
    }
}

/// What follows a backslash.
enum Control {
    /// `\'hh`: a byte in the document's code page.
    Byte(u8),
    /// A backslash and one other character.
    Symbol(u8),
    /// A control word and its number.
    Word(String, Option<i64>),
}

/// Control words that start a group whose text is not the document's.
fn destination(word: &str) -> bool {
    matches!(
        word,
        "fonttbl"
            | "colortbl"
            | "stylesheet"
            | "info"
            | "pict"
            | "object"
            | "objdata"
            | "fldinst"
            | "themedata"
            | "colorschememapping"
            | "latentstyles"
            | "datastore"
            | "xmlnstbl"
            | "listtable"
            | "listoverridetable"
            | "rsidtbl"
            | "generator"
            | "filetbl"
            | "revtbl"
            | "pgdsctbl"
            | "nonshppict"
            | "shppict"
            | "listtext"
            | "pntext"
            | "mmathPr"
            | "wgrffmtfilter"
            | "background"
    )
}

/// The encoding of a Windows code page number.
fn codepage(page: i64) -> &'static encoding_rs::Encoding {
    let label = match page {
        65_001 => "utf-8".to_owned(),
        932 => "shift_jis".to_owned(),
        936 => "gbk".to_owned(),
        949 => "euc-kr".to_owned(),
        950 => "big5".to_owned(),
        10_000 => "macintosh".to_owned(),
        page => format!("windows-{page}"),
    };
    encoding_rs::Encoding::for_label(label.as_bytes()).unwrap_or(encoding_rs::WINDOWS_1252)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::document::DocumentsConfig;

    fn text(rtf: &str) -> String {
        let budget = Budget::starting_now(&DocumentsConfig::default(), None, usize::MAX);
        extract(rtf.as_bytes(), &budget).unwrap().text
    }

    #[test]
    fn tables_and_info_are_left_out_and_escapes_decoded() {
        let rtf = r"{\rtf1\ansi\ansicpg1252{\fonttbl{\f0 Times;}}{\colortbl;\red0\green0\blue0;}{\info{\title Secret title}}
{\*\generator Writer;}\pard Caf\'e9 na\u239?ve {\b bold}\par
Second\tab line\line end\par
\trowd\cellx1000\cellx2000 A1\cell B1\cell\row
{\field{\*\fldinst HYPERLINK x}{\fldrslt link text}}\par}";
        assert_eq!(
            text(rtf),
            "Café naïve bold\nSecond\tline\nend\nA1 | B1\nlink text"
        );
    }

    #[test]
    fn double_byte_code_pages_decode_pairs() {
        let rtf = r"{\rtf1\ansi\ansicpg932 \'93\'fa\'96\'7b\par}";
        assert_eq!(text(rtf), "日本");
    }

    #[test]
    fn what_is_not_rtf_is_corrupt() {
        let budget = Budget::starting_now(&DocumentsConfig::default(), None, usize::MAX);
        let err = extract(&b"{\\rtx nope}"[..], &budget).unwrap_err();
        assert_eq!(err.code, crate::error::ErrorCode::CorruptFile);
    }
}
