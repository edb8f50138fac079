//! OpenDocument text and presentations (ODT, ODP) from `content.xml` (and an ODT's headers and
//! footers from `styles.xml`), and EPUB chapters in their spine's order.

use super::container::Zip;
use super::ooxml::{MAX_PART_BYTES, resolve};
use super::xml::{self, Node};
use super::{Budget, Builder, Extracted, Tables, corrupt};
use crate::error::FileError;

/// An ODT or ODP: paragraphs and headings a line each, table rows a line each with their cells
/// between ` | `, footnotes after the body; each ODP slide a page, its notes after it.
///
/// # Errors
/// `CORRUPT_FILE` for a missing or malformed `content.xml`; `LIMIT_EXCEEDED` past any limit.
pub fn text(mut zip: Zip<'_>, budget: &Budget) -> Result<Extracted, FileError> {
    let mut out = Builder::new(budget.max_text_bytes);
    let content = zip.read("content.xml", MAX_PART_BYTES)?;
    let mut notes = Builder::new(budget.max_text_bytes);
    let mut state = Walk::default();
    xml::walk(&content, "content.xml", budget, |node| {
        state.visit(node, &mut out, &mut notes, false)
    })?;
    out.end_paragraph()?;
    out.push(notes.text())?;
    // Headers and footers of an ODT's page styles.
    if let Some(styles) = zip.read_opt("styles.xml", MAX_PART_BYTES)? {
        let mut state = Walk::default();
        let mut ignored = Builder::new(budget.max_text_bytes);
        out.end_paragraph()?;
        xml::walk(&styles, "styles.xml", budget, |node| {
            state.visit(node, &mut out, &mut ignored, true)
        })?;
    }
    Ok(out.finish())
}

/// Where a walk over OpenDocument XML is.
#[derive(Default)]
struct Walk {
    /// Depth inside elements whose text is left out.
    skip: usize,
    /// Depth inside footnote and endnote bodies (their text goes to the notes).
    note: usize,
    /// Depth inside headers and footers (styles.xml: only their text is kept).
    margin: usize,
    /// Depth inside paragraphs and headings: text outside them is layout whitespace.
    para: usize,
    /// The tables the walk is in.
    tables: Tables,
}

impl Walk {
    fn visit(
        &mut self,
        node: Node<'_>,
        body: &mut Builder,
        notes: &mut Builder,
        margins_only: bool,
    ) -> Result<(), FileError> {
        let in_note = self.note > 0;
        let out = if in_note { &mut *notes } else { &mut *body };
        match node {
            Node::Open(start) => {
                let local = xml::local(start);
                // Citations, tracked deletions, comments, fields that stand for a page number
                // or count, and the placeholders of slide numbers, dates, headers and footers.
                let placeholder = local == "frame"
                    && matches!(
                        xml::attr(start, "class").as_deref(),
                        Some("page-number" | "date-time" | "header" | "footer")
                    );
                if self.skip > 0
                    || placeholder
                    || matches!(
                        local,
                        "note-citation"
                            | "tracked-changes"
                            | "annotation"
                            | "page-number"
                            | "page-count"
                    )
                {
                    self.skip += 1;
                    return Ok(());
                }
                match local {
                    "p" | "h" => self.para += 1,
                    "note-body" => self.note += 1,
                    "header" | "footer" | "header-left" | "footer-left" => self.margin += 1,
                    "page" if AsRef::<str>::as_ref(&start.name()) == "draw:page" => out.page()?,
                    "tab" => out.push("\t")?,
                    "line-break" => out.push("\n")?,
                    "s" => {
                        let count = xml::attr(start, "c")
                            .and_then(|c| c.parse::<usize>().ok())
                            .unwrap_or(1)
                            .min(64);
                        out.push(&" ".repeat(count))?;
                    }
                    "table" => self.tables.open(out)?,
                    "table-row" => self.tables.row(),
                    "table-cell" => self.tables.cell(out)?,
                    _ => {}
                }
            }
            Node::Close(local) => {
                if self.skip > 0 {
                    self.skip -= 1;
                    return Ok(());
                }
                match local {
                    "note-body" => {
                        self.note = self.note.saturating_sub(1);
                        out.end_line()?;
                    }
                    "header" | "footer" | "header-left" | "footer-left" => {
                        self.margin = self.margin.saturating_sub(1);
                    }
                    "p" | "h" => {
                        self.para = self.para.saturating_sub(1);
                        self.tables.end_paragraph(out)?;
                    }
                    "table-row" => out.end_row()?,
                    "table" => self.tables.close(out)?,
                    _ => {}
                }
            }
            Node::Text(text)
                if self.skip == 0 && self.para > 0 && (!margins_only || self.margin > 0) =>
            {
                out.push_text(text)?;
            }
            Node::Text(_) => {}
        }
        Ok(())
    }
}

/// Whether an OpenDocument file's parts are encrypted (its manifest says how).
pub fn encrypted(zip: &mut Zip<'_>) -> bool {
    zip.read_opt("META-INF/manifest.xml", MAX_PART_BYTES)
        .ok()
        .flatten()
        .is_some_and(|manifest| memchr::memmem::find(&manifest, b"encryption-data").is_some())
}

/// An EPUB: the chapters its package's spine lists, in that order, each read as HTML.
///
/// # Errors
/// `CORRUPT_FILE` when the container or package file is missing or malformed; `LIMIT_EXCEEDED`
/// past any limit.
pub fn epub(mut zip: Zip<'_>, budget: &Budget) -> Result<Extracted, FileError> {
    let container = zip.read("META-INF/container.xml", MAX_PART_BYTES)?;
    let mut package = None;
    xml::walk(&container, "META-INF/container.xml", budget, |node| {
        if let Node::Open(start) = node
            && xml::local(start) == "rootfile"
            && package.is_none()
        {
            package = xml::attr(start, "full-path");
        }
        Ok(())
    })?;
    let package = package.ok_or_else(|| corrupt("epub", "the container names no package"))?;
    let package = resolve("", &package);
    let opf = zip.read(&package, MAX_PART_BYTES)?;
    let mut manifest = Vec::new();
    let mut spine = Vec::new();
    xml::walk(&opf, &package, budget, |node| {
        if let Node::Open(start) = node {
            match xml::local(start) {
                "item" => {
                    if let (Some(id), Some(href)) =
                        (xml::attr(start, "id"), xml::attr(start, "href"))
                    {
                        manifest.push((id, href));
                    }
                }
                "itemref" => {
                    if let Some(id) = xml::attr(start, "idref") {
                        spine.push(id);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    })?;
    let dir = package.rsplit_once('/').map_or("", |(dir, _)| dir);
    let mut out = Builder::new(budget.max_text_bytes);
    for id in spine {
        let Some((_, href)) = manifest.iter().find(|(item, _)| *item == id) else {
            continue;
        };
        // A link may carry a fragment; the file is what is read.
        let href = href.split('#').next().unwrap_or(href);
        let name = resolve(dir, &percent_decoded(href));
        let Some(chapter) = zip.read_opt(&name, MAX_PART_BYTES)? else {
            continue;
        };
        budget.check_time()?;
        out.end_paragraph()?;
        out.push(&crate::extract::html::body(&String::from_utf8_lossy(
            &chapter,
        )))?;
    }
    Ok(out.finish())
}

/// `%20` and the like in a manifest's `href`, decoded.
fn percent_decoded(href: &str) -> String {
    let bytes = href.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::document::DocumentsConfig;

    #[test]
    fn notes_go_after_the_body_and_slides_are_pages() {
        let content = r#"<office:document-content xmlns:office="o" xmlns:text="t" xmlns:draw="d"><office:body>
<draw:page><draw:frame><text:p>First<text:s text:c="2"/>slide<text:note><text:note-citation>1</text:note-citation><text:note-body><text:p>A note</text:p></text:note-body></text:note></text:p></draw:frame></draw:page>
<draw:page><text:h>Second</text:h></draw:page></office:body></office:document-content>"#;
        let budget = Budget::starting_now(&DocumentsConfig::default(), None, usize::MAX);
        let mut out = Builder::new(usize::MAX);
        let mut notes = Builder::new(usize::MAX);
        let mut walk = Walk::default();
        xml::walk(content.as_bytes(), "content.xml", &budget, |node| {
            walk.visit(node, &mut out, &mut notes, false)
        })
        .unwrap();
        out.end_paragraph().unwrap();
        out.push(notes.text()).unwrap();
        let done = out.finish();
        assert_eq!(done.text, "First  slide\n\nSecond\n\nA note");
        assert_eq!(done.pages, vec![0, 14]);
    }

    #[test]
    fn hrefs_are_percent_decoded() {
        assert_eq!(percent_decoded("chapter%201.xhtml"), "chapter 1.xhtml");
        assert_eq!(percent_decoded("bad%zz"), "bad%zz");
    }
}
