//! The text family: decoded characters of each text format turned into the text that is
//! chunked — readable text of markup, one line per record of tables, `path: value` lines of
//! JSON, cue text of subtitles; markdown, code and plain text as they are.

use std::fmt::Write as _;

use quick_xml::events::Event as XmlEvent;
use serde_json::Value;

use crate::chunk::Structure;
use crate::detect::Format;
use crate::error::{ErrorCode, FileError};

/// Turns the decoded `text` of a file of text `format` into chunkable text, with where each row
/// or item starts for tables and JSON (empty for other formats).
///
/// Formats that name a column or path on every line can grow past their input; `limit` (bytes)
/// stops them as soon as they pass it.
///
/// # Errors
/// `CORRUPT_FILE` when the content does not parse as its format, `LIMIT_EXCEEDED` when the
/// text outgrows `limit`.
pub fn extract(
    format: Format,
    text: &str,
    limit: usize,
) -> Result<(String, Structure, Vec<usize>), FileError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut items = Vec::new();
    let (text, structure) = match format {
        Format::Markdown => (text.to_owned(), Structure::Markdown),
        Format::Html => (super::html::text(text), Structure::Plain),
        Format::Xml => (xml(text)?, Structure::Plain),
        Format::Csv => (table(text, b',', limit, &mut items)?, Structure::Plain),
        Format::Tsv => (table(text, b'\t', limit, &mut items)?, Structure::Plain),
        Format::Json => (json(text, limit, &mut items)?, Structure::Plain),
        Format::JsonLines => (json_lines(text, limit, &mut items)?, Structure::Plain),
        Format::Srt | Format::WebVtt => (subtitles(text), Structure::Plain),
        _ => (text.to_owned(), Structure::Plain),
    };
    Ok((text, structure, items))
}

fn corrupt(format: &str, err: impl std::fmt::Display) -> FileError {
    FileError::permanent(ErrorCode::CorruptFile, format!("{format} parser: {err}"))
}

/// Character data of an XML document, one element's text per line.
fn xml(text: &str) -> Result<String, FileError> {
    let mut reader = quick_xml::Reader::from_str(text);
    let mut out = String::new();
    // Text of the current element: text, entity references and CDATA arrive in pieces.
    let mut pending = String::new();
    loop {
        match reader.read_event().map_err(|err| corrupt("xml", err))? {
            XmlEvent::Text(t) => {
                pending.push_str(&t.xml10_content());
            }
            XmlEvent::GeneralRef(r) => {
                let reference = format!("&{};", &*r);
                pending.push_str(
                    &quick_xml::escape::unescape(&reference).map_err(|err| corrupt("xml", err))?,
                );
            }
            XmlEvent::CData(t) => pending.push_str(&t),
            XmlEvent::Start(_) | XmlEvent::End(_) | XmlEvent::Empty(_) => {
                let line = pending.trim();
                if !line.is_empty() {
                    out.push_str(line);
                    out.push('\n');
                }
                pending.clear();
            }
            XmlEvent::Eof => break,
            _ => {}
        }
    }
    Ok(out.trim_end().to_owned())
}

/// One line per record, each field named by its column: `name: Ada; year: 1815`. Chunks from
/// the middle of a table keep the meaning of their columns.
fn table(
    text: &str,
    delimiter: u8,
    limit: usize,
    items: &mut Vec<usize>,
) -> Result<String, FileError> {
    let name = if delimiter == b'\t' { "tsv" } else { "csv" };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .map_err(|err| corrupt(name, err))?
        .iter()
        .map(|h| h.trim().to_owned())
        .collect();
    let mut out = String::new();
    for record in reader.records() {
        let record = record.map_err(|err| corrupt(name, err))?;
        let start = out.len();
        let mut first = true;
        for (i, value) in record.iter().enumerate() {
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            if !first {
                out.push_str("; ");
            }
            first = false;
            match headers.get(i).filter(|h| !h.is_empty()) {
                Some(header) => {
                    let _ = write!(out, "{header}: {value}");
                }
                None => out.push_str(value),
            }
        }
        if !first {
            out.push('\n');
            items.push(start);
        }
        within(&out, limit)?;
    }
    Ok(out)
}

/// A JSON document as `path: value` lines (`users[0].name: Ada`); each element of a top-level
/// array (or member of a top-level object) is an item.
fn json(text: &str, limit: usize, items: &mut Vec<usize>) -> Result<String, FileError> {
    let value: Value = serde_json::from_str(text).map_err(|err| corrupt("json", err))?;
    let mut out = String::new();
    let mut path = String::new();
    match &value {
        Value::Array(elements) => {
            for (i, element) in elements.iter().enumerate() {
                let start = out.len();
                let _ = write!(path, "[{i}]");
                flatten(element, &mut path, &mut out, limit)?;
                path.clear();
                if out.len() > start {
                    items.push(start);
                }
            }
        }
        Value::Object(members) => {
            for (key, member) in members {
                let start = out.len();
                path.push_str(key);
                flatten(member, &mut path, &mut out, limit)?;
                path.clear();
                if out.len() > start {
                    items.push(start);
                }
            }
        }
        scalar => flatten(scalar, &mut path, &mut out, limit)?,
    }
    Ok(out)
}

/// Each line's document flattened, records separated by blank lines; each line an item.
fn json_lines(text: &str, limit: usize, items: &mut Vec<usize>) -> Result<String, FileError> {
    let mut out = String::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line)
            .map_err(|err| corrupt("jsonl", format!("line {}: {err}", number + 1)))?;
        if !out.is_empty() {
            out.push('\n');
        }
        let start = out.len();
        flatten(&value, &mut String::new(), &mut out, limit)?;
        if out.len() > start {
            items.push(start);
        }
    }
    Ok(out)
}

fn flatten(
    value: &Value,
    path: &mut String,
    out: &mut String,
    limit: usize,
) -> Result<(), FileError> {
    let len = path.len();
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                flatten(item, path, out, limit)?;
                path.truncate(len);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let _ = write!(path, "[{i}]");
                flatten(item, path, out, limit)?;
                path.truncate(len);
            }
        }
        Value::Null => {}
        scalar => {
            if !path.is_empty() {
                out.push_str(path);
                out.push_str(": ");
            }
            match scalar {
                Value::String(s) => out.push_str(s),
                other => {
                    let _ = write!(out, "{other}");
                }
            }
            out.push('\n');
            within(out, limit)?;
        }
    }
    Ok(())
}

/// Fails once `out` has outgrown `limit`.
fn within(out: &str, limit: usize) -> Result<(), FileError> {
    if out.len() > limit {
        return Err(FileError::permanent(
            ErrorCode::LimitExceeded,
            format!("extracted text passed the limit of {limit} bytes (limits.max_text_bytes)"),
        ));
    }
    Ok(())
}

/// The spoken text of SRT or WebVTT cues, without numbers, timings, notes or styling tags.
fn subtitles(text: &str) -> String {
    let mut out = String::new();
    for block in text.split("\n\n").flat_map(|b| b.split("\r\n\r\n")) {
        let lines: Vec<&str> = block
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let Some(timing) = lines.iter().position(|l| l.contains("-->")) else {
            // Headers (WEBVTT), NOTE, STYLE and REGION blocks have no timing line.
            continue;
        };
        for line in &lines[timing + 1..] {
            out.push_str(&strip_tags(line));
            out.push('\n');
        }
    }
    out
}

fn strip_tags(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_tag = false;
    for c in line.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_keeps_readable_text_only() {
        let page = "<html><head><title>T</title><style>p{color:red}</style>\
                    <script>var secret = 1;</script></head>\
                    <body><h1>Heading</h1><p>First &amp; second.</p><p>Next</p></body></html>";
        let (text, _, _) = extract(Format::Html, page, usize::MAX).unwrap();
        assert!(
            text.contains("Heading") && text.contains("First & second."),
            "{text}"
        );
        assert!(
            !text.contains("secret") && !text.contains("color"),
            "{text}"
        );
        assert!(!text.contains('<'), "{text}");
    }

    #[test]
    fn html_tables_do_not_grow_with_cell_width() {
        let wide = "w".repeat(5_000);
        let page = format!(
            "<table><tr><td>{wide}</td><td>b</td></tr><tr><td>a</td><td>c</td></tr></table>"
        );
        let (text, _, _) = extract(Format::Html, &page, usize::MAX).unwrap();
        assert!(
            text.len() < page.len(),
            "{} bytes from {}",
            text.len(),
            page.len()
        );
        assert!(text.contains(&wide) && text.contains('c'));
    }

    #[test]
    fn hostile_html_nesting_is_linear() {
        let depth = 200_000;
        let page = format!(
            "{}deep text{}",
            "<div>".repeat(depth),
            "</div>".repeat(depth)
        );
        let started = std::time::Instant::now();
        let (text, _, _) = extract(Format::Html, &page, usize::MAX).unwrap();
        assert_eq!(text, "deep text");
        // A tree-building parser takes minutes here; linear work takes milliseconds.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn html_keeps_structure_and_preformatted_text() {
        let page =
            "<ul><li>one</li><li>two</li></ul><pre>a  b\n  c</pre><p>x<br>y &eacute;&#233;</p>";
        let (text, _, _) = extract(Format::Html, page, usize::MAX).unwrap();
        assert_eq!(text, "one\ntwo\n\na  b\n  c\n\nx\ny éé");
    }

    #[test]
    fn html_without_a_closing_head_keeps_its_body() {
        let (text, _, _) = extract(
            Format::Html,
            "<head><title>T</title><body><p>body text</p>",
            usize::MAX,
        )
        .unwrap();
        assert_eq!(text, "T\n\nbody text");
    }

    #[test]
    fn expanding_formats_stop_at_the_limit() {
        let header = "h".repeat(1000);
        let csv = format!("{header}\n{}", "a\n".repeat(1000));
        let err = extract(Format::Csv, &csv, 100_000).unwrap_err();
        assert_eq!(err.code, ErrorCode::LimitExceeded);
        let json = format!("{{\"{header}\": [{}1]}}", "1,".repeat(1000));
        assert_eq!(
            extract(Format::Json, &json, 100_000).unwrap_err().code,
            ErrorCode::LimitExceeded
        );
    }

    #[test]
    fn xml_text_and_entities() {
        let (text, _, _) = extract(
            Format::Xml,
            "<?xml version=\"1.0\"?><a><b>x &lt; y</b><c><![CDATA[z]]></c></a>",
            usize::MAX,
        )
        .unwrap();
        assert_eq!(text, "x < y\nz");
        assert_eq!(
            extract(Format::Xml, "<a><b></a>", usize::MAX)
                .unwrap_err()
                .code,
            ErrorCode::CorruptFile
        );
    }

    #[test]
    fn tables_name_their_columns() {
        let (text, _, _) = extract(
            Format::Csv,
            "name,year\nAda,1815\n\"Lovelace, A\",\n",
            usize::MAX,
        )
        .unwrap();
        assert_eq!(text, "name: Ada; year: 1815\nname: Lovelace, A\n");
        let (text, _, _) = extract(Format::Tsv, "a\tb\n1\t2\n", usize::MAX).unwrap();
        assert_eq!(text, "a: 1; b: 2\n");
    }

    #[test]
    fn rows_and_items_are_where_their_lines_start() {
        let (text, _, items) = extract(
            Format::Csv,
            "name,year\nAda,1815\n,\nAlan,1912\n",
            usize::MAX,
        )
        .unwrap();
        let starts: Vec<&str> = items.iter().map(|&i| &text[i..]).collect();
        assert_eq!(
            starts,
            [
                "name: Ada; year: 1815\nname: Alan; year: 1912\n",
                "name: Alan; year: 1912\n"
            ]
        );
        let (text, _, items) =
            extract(Format::Json, r#"[{"a":1,"b":2},{"a":3},[]]"#, usize::MAX).unwrap();
        assert_eq!(text, "[0].a: 1\n[0].b: 2\n[1].a: 3\n");
        assert_eq!(items, [0, text.find("[1]").unwrap()]);
        let (text, _, items) =
            extract(Format::JsonLines, "{\"a\":1}\n\n{\"a\":2}\n", usize::MAX).unwrap();
        assert_eq!(items, [0, text.rfind("a: 2").unwrap()]);
    }

    #[test]
    fn json_is_flattened_to_paths() {
        let (text, _, _) = extract(
            Format::Json,
            r#"{"users":[{"name":"Ada","age":36}],"ok":true}"#,
            usize::MAX,
        )
        .unwrap();
        assert_eq!(text, "users[0].name: Ada\nusers[0].age: 36\nok: true\n");
        let err = extract(Format::JsonLines, "{\"a\":1}\n{oops\n", usize::MAX).unwrap_err();
        assert!(err.message.contains("line 2"), "{}", err.message);
    }

    #[test]
    fn subtitles_keep_cue_text() {
        let srt = "1\n00:00:01,000 --> 00:00:02,000\n<i>Hello</i> there\n\n2\n00:00:03,000 --> 00:00:04,000\nGeneral Kenobi\n";
        assert_eq!(
            extract(Format::Srt, srt, usize::MAX).unwrap().0,
            "Hello there\nGeneral Kenobi\n"
        );
        let vtt = "WEBVTT\n\nNOTE a comment\n\nintro\n00:01.000 --> 00:02.000\nWelcome\n";
        assert_eq!(
            extract(Format::WebVtt, vtt, usize::MAX).unwrap().0,
            "Welcome\n"
        );
    }
}
