//! Readable text of an HTML page, in one linear pass over html5ever's tokenizer: no tree is
//! built, so hostile nesting (200,000 `<div>`s) costs no more than its length. Scripts, styles
//! and other non-content elements are dropped; blocks go on their own lines.

use std::cell::{Cell, RefCell};

use html5ever::tendril::StrTendril;
use html5ever::tokenizer::states::RawKind;
use html5ever::tokenizer::{
    BufferQueue, TagKind, Token, TokenSink, TokenSinkResult, Tokenizer, TokenizerOpts,
};

/// Elements whose content is not text for people.
const HIDDEN: &[&str] = &[
    "script", "style", "noscript", "template", "iframe", "noembed", "noframes", "object", "svg",
    "math", "head",
];
/// Elements that belong in `<head>`; any other start tag there begins the body.
const HEAD_CONTENT: &[&str] = &[
    "head", "title", "meta", "link", "style", "script", "base", "noscript", "template",
];
/// Elements whose content the tokenizer must read as raw text.
const RAW: &[&str] = &[
    "script", "style", "noscript", "iframe", "noembed", "noframes", "xmp",
];
/// Elements that end a paragraph.
const PARAGRAPHS: &[&str] = &[
    "p",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "pre",
    "blockquote",
    "table",
    "ul",
    "ol",
    "dl",
    "section",
    "article",
    "header",
    "footer",
    "main",
    "aside",
    "nav",
    "figure",
    "form",
    "hr",
    "title",
    "address",
    "details",
    "fieldset",
];
/// Elements that end a line.
const LINES: &[&str] = &[
    "br",
    "div",
    "li",
    "tr",
    "td",
    "th",
    "dt",
    "dd",
    "caption",
    "figcaption",
    "summary",
    "option",
    "legend",
];

/// Extracts the readable text of `html`, its `<title>` first.
#[must_use]
pub fn text(html: &str) -> String {
    readable(html, true)
}

/// Extracts the readable text of `html` without its `<title>` (a chapter of a book, whose
/// title repeats its heading).
#[must_use]
pub fn body(html: &str) -> String {
    readable(html, false)
}

fn readable(html: &str, title: bool) -> String {
    let sink = TextSink {
        skip_title: !title,
        ..TextSink::default()
    };
    let tokenizer = Tokenizer::new(sink, TokenizerOpts::default());
    let input = BufferQueue::default();
    input.push_back(StrTendril::from_slice(html));
    // The sink never asks the tokenizer to pause for a script, so one feed consumes everything.
    let _ = tokenizer.feed(&input);
    tokenizer.end();
    tidy(&tokenizer.sink.out.borrow())
}

#[derive(Default)]
struct TextSink {
    /// Text so far; whitespace collapsed, block ends marked with newlines.
    out: RefCell<String>,
    /// The hidden element being skipped, and how deep in same-named elements we are.
    hidden: RefCell<Option<(String, u32)>>,
    /// Inside `<pre>`: keep whitespace.
    pre_depth: Cell<u32>,
    /// `<title>` text is kept even though `<head>` is hidden.
    in_title: Cell<bool>,
    /// Leave the `<title>` out too.
    skip_title: bool,
}

impl TextSink {
    fn push_text(&self, text: &str) {
        let mut out = self.out.borrow_mut();
        if self.pre_depth.get() > 0 {
            out.push_str(text);
            return;
        }
        // HTML collapses runs of whitespace to one space, and none at the start of a line.
        let mut pending_space = false;
        for c in text.chars() {
            if c.is_ascii_whitespace() {
                pending_space = true;
                continue;
            }
            if pending_space && !out.is_empty() && !out.ends_with([' ', '\n']) {
                out.push(' ');
            }
            pending_space = false;
            out.push(c);
        }
        if pending_space && !out.is_empty() && !out.ends_with([' ', '\n']) {
            out.push(' ');
        }
    }

    fn break_line(&self, blank: bool) {
        let mut out = self.out.borrow_mut();
        out.push('\n');
        if blank {
            out.push('\n');
        }
    }

    fn tag(&self, kind: TagKind, name: &str, self_closing: bool) -> TokenSinkResult<()> {
        // After these start tags the tokenizer must read raw text until the matching end tag.
        let raw = match name {
            _ if kind == TagKind::EndTag || self_closing => TokenSinkResult::Continue,
            "script" => TokenSinkResult::RawData(RawKind::ScriptData),
            "title" | "textarea" => TokenSinkResult::RawData(RawKind::Rcdata),
            _ if RAW.contains(&name) => TokenSinkResult::RawData(RawKind::Rawtext),
            _ => TokenSinkResult::Continue,
        };
        {
            let mut hidden = self.hidden.borrow_mut();
            // Pages often leave `</head>` out: any body content ends the head.
            if kind == TagKind::StartTag
                && !HEAD_CONTENT.contains(&name)
                && hidden
                    .as_ref()
                    .is_some_and(|(skipped, _)| skipped == "head")
            {
                *hidden = None;
            }
            if let Some((skipped, depth)) = hidden.as_mut() {
                if name == skipped {
                    match kind {
                        TagKind::StartTag if !self_closing => *depth += 1,
                        TagKind::EndTag if *depth <= 1 => *hidden = None,
                        TagKind::EndTag => *depth -= 1,
                        TagKind::StartTag => {}
                    }
                }
                if name == "title" && !self.skip_title {
                    self.in_title.set(kind == TagKind::StartTag);
                    if kind == TagKind::EndTag {
                        drop(hidden);
                        self.break_line(true);
                    }
                }
                return raw;
            }
            if kind == TagKind::StartTag && !self_closing && HIDDEN.contains(&name) {
                *hidden = Some((name.to_owned(), 1));
                return raw;
            }
        }
        if name == "pre" {
            match kind {
                TagKind::StartTag => self.pre_depth.set(self.pre_depth.get() + 1),
                TagKind::EndTag => self.pre_depth.set(self.pre_depth.get().saturating_sub(1)),
            }
        }
        if PARAGRAPHS.contains(&name) {
            self.break_line(true);
        } else if LINES.contains(&name) && (kind == TagKind::EndTag || name == "br") {
            self.break_line(false);
        }
        raw
    }
}

impl TokenSink for TextSink {
    type Handle = ();

    fn process_token(&self, token: Token, _line: u64) -> TokenSinkResult<()> {
        match token {
            Token::TagToken(tag) => self.tag(tag.kind, &tag.name, tag.self_closing),
            Token::CharacterTokens(text) => {
                if self.hidden.borrow().is_none() || self.in_title.get() {
                    self.push_text(&text);
                }
                TokenSinkResult::Continue
            }
            _ => TokenSinkResult::Continue,
        }
    }
}

/// Trims every line and keeps at most one blank line between blocks.
fn tidy(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut blank = false;
    for line in raw.lines().map(str::trim_end) {
        let line = if line.trim().is_empty() { "" } else { line };
        if line.is_empty() {
            blank = !out.is_empty();
            continue;
        }
        if blank {
            out.push('\n');
            blank = false;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.truncate(out.trim_end().len());
    out
}
