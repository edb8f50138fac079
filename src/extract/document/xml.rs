//! One pass over an XML part, as the document readers need it: elements by local name, text
//! with character references resolved. Entities a document declares are never expanded (a
//! reference to one is dropped), and nothing outside the part is ever loaded.

use quick_xml::events::{BytesStart, Event};

use super::{Budget, corrupt};
use crate::error::FileError;

/// What the walk meets, in document order.
#[derive(Clone, Copy)]
pub enum Node<'a> {
    /// An element opens (empty elements open and close at once).
    Open(&'a BytesStart<'a>),
    /// An element closes: its local name.
    Close(&'a str),
    /// Character data.
    Text(&'a str),
}

/// Events between two checks of the deadline.
const EVENTS_PER_CHECK: u32 = 4096;

/// Walks the XML in `bytes`, handing each node to `visit`.
///
/// # Errors
/// `CORRUPT_FILE` (naming `what`) when the XML is malformed; `LIMIT_EXCEEDED` past the deadline;
/// whatever `visit` returns.
pub fn walk(
    bytes: &[u8],
    what: &str,
    budget: &Budget,
    mut visit: impl FnMut(Node<'_>) -> Result<(), FileError>,
) -> Result<(), FileError> {
    let mut reader = quick_xml::Reader::from_reader(bytes);
    let mut buf = Vec::new();
    let mut events = 0u32;
    loop {
        events += 1;
        if events.is_multiple_of(EVENTS_PER_CHECK) {
            budget.check_time()?;
        }
        buf.clear();
        match reader
            .read_event_into(&mut buf)
            .map_err(|err| corrupt(what, err))?
        {
            Event::Start(start) => visit(Node::Open(&start))?,
            Event::Empty(start) => {
                visit(Node::Open(&start))?;
                visit(Node::Close(start.local_name().as_ref()))?;
            }
            Event::End(end) => visit(Node::Close(end.local_name().as_ref()))?,
            Event::Text(text) => visit(Node::Text(&text.xml10_content()))?,
            Event::CData(data) => visit(Node::Text(&data))?,
            Event::GeneralRef(reference) => {
                if let Some(c) = entity(&reference) {
                    visit(Node::Text(c.encode_utf8(&mut [0; 4])))?;
                }
            }
            Event::Eof => return Ok(()),
            // Declarations, DOCTYPEs (with any entities they declare), comments and
            // processing instructions carry no text.
            _ => {}
        }
    }
}

/// The character a reference stands for: a character reference, or one of XML's five
/// predefined entities. Anything else (an entity the document declares) stands for nothing.
fn entity(reference: &quick_xml::events::BytesRef<'_>) -> Option<char> {
    if reference.is_char_ref() {
        return reference.resolve_char_ref().ok().flatten();
    }
    match reference.as_ref() {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        _ => None,
    }
}

/// The value of the attribute with local name `name`, references resolved.
pub fn attr(start: &BytesStart<'_>, name: &str) -> Option<String> {
    start
        .attributes()
        .with_checks(false)
        .filter_map(Result::ok)
        .find(|a| a.key.local_name().as_ref() == name)
        .map(|a| unescape(&a.value))
}

/// The value of the attribute with qualified name `name` (`r:id`, `xlink:href`).
pub fn qattr(start: &BytesStart<'_>, name: &str) -> Option<String> {
    start
        .attributes()
        .with_checks(false)
        .filter_map(Result::ok)
        .find(|a| a.key.as_ref() == name)
        .map(|a| unescape(&a.value))
}

/// The local name of an element.
pub fn local<'a>(start: &'a BytesStart<'a>) -> &'a str {
    let name: &str = start.name().into_inner();
    name.split_once(':').map_or(name, |(_, local)| local)
}

fn unescape(value: &str) -> String {
    if !value.contains('&') {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let Some(end) = rest.find(';') else { break };
        let name = &rest[1..end];
        let c = match name {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => name
                .strip_prefix("#x")
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .or_else(|| name.strip_prefix('#').and_then(|dec| dec.parse().ok()))
                .and_then(char::from_u32),
        };
        if let Some(c) = c {
            out.push(c);
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::document::DocumentsConfig;

    fn texts(xml: &str) -> Result<String, FileError> {
        let budget = Budget::starting_now(&DocumentsConfig::default(), None, usize::MAX);
        let mut out = String::new();
        walk(xml.as_bytes(), "test", &budget, |node| {
            if let Node::Text(t) = node {
                out.push_str(t);
            }
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn declared_entities_are_never_expanded() {
        let laughs = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">
<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<t>a&lol2;b&xxe;c &amp; &#233;&#x263A;</t>"#;
        assert_eq!(texts(laughs).unwrap().trim(), "abc & é☺");
    }

    #[test]
    fn malformed_xml_is_corrupt() {
        let err = texts("<a><b></a>").unwrap_err();
        assert_eq!(err.code, crate::error::ErrorCode::CorruptFile);
    }

    #[test]
    fn attribute_values_are_unescaped() {
        assert_eq!(unescape("a&amp;b&#x41;&lt;"), "a&bA<");
        assert_eq!(unescape("no refs"), "no refs");
    }
}
