//! Office Open XML: Word (DOCX, DOCM) and PowerPoint (PPTX, PPTM) read from their XML parts.
//! Word: headers, the body (tables a row per line, text boxes once), footnotes, endnotes and
//! footers. PowerPoint: slides in the presentation's order, each a page, with its notes.

use super::container::Zip;
use super::xml::{self, Node};
use super::{Budget, Builder, Extracted, Tables};
use crate::error::FileError;

/// Largest XML part read (bytes): real parts are a few MB at most.
pub const MAX_PART_BYTES: u64 = 256 * 1024 * 1024;

/// A DOCX or DOCM.
///
/// # Errors
/// `CORRUPT_FILE` for a missing or malformed body; `LIMIT_EXCEEDED` past any limit.
pub fn word(mut zip: Zip<'_>, budget: &Budget) -> Result<Extracted, FileError> {
    let mut out = Builder::new(budget.max_text_bytes);
    let names = zip.names();
    let parts = |prefix: &str| {
        let mut found: Vec<&String> = names
            .iter()
            .filter(|n| {
                n.strip_prefix(prefix)
                    .and_then(|rest| rest.strip_suffix(".xml"))
                    .is_some_and(|number| number.chars().all(|c| c.is_ascii_digit()))
            })
            .collect();
        found.sort_by(|a, b| (a.len(), a).cmp(&(b.len(), b)));
        found.into_iter().cloned().collect::<Vec<_>>()
    };
    let (headers, footers) = (parts("word/header"), parts("word/footer"));
    let mut order: Vec<String> = headers;
    order.push("word/document.xml".to_owned());
    order.extend(
        ["word/footnotes.xml", "word/endnotes.xml"]
            .into_iter()
            .map(str::to_owned),
    );
    order.extend(footers);
    // Headers and footers come in up to three versions (first page, even pages, the rest),
    // often with the same text: each text is kept once.
    let mut seen = std::collections::HashSet::new();
    for name in order {
        let Some(part) = zip.read_opt(&name, MAX_PART_BYTES)? else {
            continue;
        };
        let mut text = Builder::new(budget.max_text_bytes);
        part_text(&part, &name, budget, &mut text, false)?;
        let text = text.finish().text;
        if !text.is_empty() && seen.insert(blake3::hash(text.as_bytes())) {
            out.push(&text)?;
            out.end_paragraph()?;
        }
    }
    if !zip.has("word/document.xml") {
        return Err(super::corrupt(
            "docx",
            "the part word/document.xml is missing",
        ));
    }
    Ok(out.finish())
}

/// Elements whose content is not text of the document: properties (tab stops are `w:tab`s
/// too), field codes, deleted text, and the fallback copies of text boxes.
fn skipped(name: &str) -> bool {
    matches!(
        name,
        "pPr" | "rPr" | "tblPr" | "sectPr" | "instrText" | "delText" | "moveFrom" | "Fallback"
    )
}

/// Text of one WordprocessingML or DrawingML part (a Word body, header or note; a slide): a
/// line per paragraph, a line per table row with its cells between ` | `. Of a notes slide
/// (`notes`), only the notes body — not the slide number or the slide's picture.
fn part_text(
    part: &[u8],
    name: &str,
    budget: &Budget,
    out: &mut Builder,
    notes: bool,
) -> Result<(), FileError> {
    let mut skip = 0usize;
    let mut in_text = false;
    // Whether the current shape's text is kept (notes: only the body placeholder's).
    let mut keep = !notes;
    let mut tables = Tables::default();
    xml::walk(part, name, budget, |node| {
        match node {
            Node::Open(start) => {
                let local = xml::local(start);
                if skip > 0 || skipped(local) {
                    skip += 1;
                    return Ok(());
                }
                match local {
                    "sp" if notes => keep = false,
                    "ph" if notes => keep = xml::attr(start, "type").as_deref() == Some("body"),
                    "t" => in_text = true,
                    "tab" => out.push("\t")?,
                    "noBreakHyphen" => out.push("-")?,
                    "sym" => {
                        // A symbol-font character: its code in the private-use area
                        // (F0xx) stands for the ASCII position xx.
                        let code = xml::attr(start, "char")
                            .and_then(|hex| u32::from_str_radix(&hex, 16).ok())
                            .map(|c| {
                                if (0xF020..=0xF0FF).contains(&c) {
                                    c - 0xF000
                                } else {
                                    c
                                }
                            })
                            .and_then(char::from_u32);
                        if let Some(c) = code {
                            out.push(c.encode_utf8(&mut [0; 4]))?;
                        }
                    }
                    "br" | "cr" => out.push("\n")?,
                    "tbl" => tables.open(out)?,
                    "tr" => tables.row(),
                    "tc" => tables.cell(out)?,
                    _ => {}
                }
            }
            Node::Close(local) => {
                if skip > 0 {
                    skip -= 1;
                    return Ok(());
                }
                match local {
                    "t" => in_text = false,
                    "p" => tables.end_paragraph(out)?,
                    "tr" => out.end_row()?,
                    "tbl" => tables.close(out)?,
                    _ => {}
                }
            }
            Node::Text(text) if in_text && keep && skip == 0 => out.push_text(text)?,
            Node::Text(_) => {}
        }
        Ok(())
    })
}

/// A PPTX or PPTM: one page per slide, in the presentation's order, its notes after it.
///
/// # Errors
/// `CORRUPT_FILE` for a missing or malformed presentation; `LIMIT_EXCEEDED` past any limit.
pub fn slides(mut zip: Zip<'_>, budget: &Budget) -> Result<Extracted, FileError> {
    let presentation = zip.read("ppt/presentation.xml", MAX_PART_BYTES)?;
    let mut ids = Vec::new();
    xml::walk(&presentation, "ppt/presentation.xml", budget, |node| {
        if let Node::Open(start) = node
            && xml::local(start) == "sldId"
            && let Some(id) = xml::qattr(start, "r:id")
        {
            ids.push(id);
        }
        Ok(())
    })?;
    let targets = relationships(&mut zip, "ppt/presentation.xml", budget)?;
    let mut out = Builder::new(budget.max_text_bytes);
    for id in ids {
        let Some((_, slide)) = targets.iter().find(|(rid, _)| rid.0 == id) else {
            continue;
        };
        out.page()?;
        let part = zip.read(slide, MAX_PART_BYTES)?;
        part_text(&part, slide, budget, &mut out, false)?;
        let notes = relationships(&mut zip, slide, budget)?
            .into_iter()
            .find(|(rel, _)| rel.1.ends_with("/notesSlide"));
        if let Some((_, notes)) = notes
            && let Some(part) = zip.read_opt(&notes, MAX_PART_BYTES)?
        {
            out.end_paragraph()?;
            part_text(&part, &notes, budget, &mut out, true)?;
        }
    }
    Ok(out.finish())
}

/// A relationship: its id and its type.
pub type Rel = (String, String);

/// The relationships of `part` (from its `_rels` file), each with its target resolved to an
/// entry name.
///
/// # Errors
/// As [`Zip::read`]; a part without relationships has none.
pub fn relationships(
    zip: &mut Zip<'_>,
    part: &str,
    budget: &Budget,
) -> Result<Vec<(Rel, String)>, FileError> {
    let (dir, file) = part.rsplit_once('/').unwrap_or(("", part));
    let rels_name = if dir.is_empty() {
        format!("_rels/{file}.rels")
    } else {
        format!("{dir}/_rels/{file}.rels")
    };
    let Some(rels) = zip.read_opt(&rels_name, MAX_PART_BYTES)? else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    xml::walk(&rels, &rels_name, budget, |node| {
        if let Node::Open(start) = node
            && xml::local(start) == "Relationship"
            && xml::attr(start, "TargetMode").as_deref() != Some("External")
            && let (Some(id), Some(kind), Some(target)) = (
                xml::attr(start, "Id"),
                xml::attr(start, "Type"),
                xml::attr(start, "Target"),
            )
        {
            found.push(((id, kind), resolve(dir, &target)));
        }
        Ok(())
    })?;
    Ok(found)
}

/// An entry name for `target` relative to the folder `dir` (`..` and `/`-rooted targets too).
pub fn resolve(dir: &str, target: &str) -> String {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        dir.split('/').filter(|p| !p.is_empty()).collect()
    };
    for piece in target.split('/') {
        match piece {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            piece => parts.push(piece),
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::document::DocumentsConfig;

    #[test]
    fn targets_resolve_against_their_folder() {
        assert_eq!(resolve("ppt", "slides/slide1.xml"), "ppt/slides/slide1.xml");
        assert_eq!(
            resolve("ppt/slides", "../notesSlides/notesSlide1.xml"),
            "ppt/notesSlides/notesSlide1.xml"
        );
        assert_eq!(resolve("ppt/slides", "/ppt/media/a.png"), "ppt/media/a.png");
    }

    #[test]
    fn word_text_keeps_cells_in_rows_and_skips_fallbacks_and_tab_stops() {
        let body = r#"<w:document xmlns:w="w" xmlns:mc="mc"><w:body>
<w:p><w:pPr><w:tabs><w:tab w:val="left"/></w:tabs></w:pPr><w:r><w:t>Intro</w:t><w:tab/><w:t>text</w:t></w:r></w:p>
<w:tbl><w:tr><w:tc><w:p><w:r><w:t>a</w:t></w:r></w:p></w:tc><w:tc><w:p><w:r><w:t>b</w:t></w:r></w:p></w:tc></w:tr>
<w:tr><w:tc><w:p><w:r><w:t>c</w:t></w:r></w:p></w:tc><w:tc><w:p><w:r><w:t>d</w:t></w:r></w:p></w:tc></w:tr></w:tbl>
<w:p><w:r><mc:AlternateContent><mc:Choice><w:txbxContent><w:p><w:r><w:t>Boxed</w:t></w:r></w:p></w:txbxContent></mc:Choice>
<mc:Fallback><w:txbxContent><w:p><w:r><w:t>Boxed</w:t></w:r></w:p></w:txbxContent></mc:Fallback></mc:AlternateContent></w:r></w:p>
<w:p><w:r><w:instrText>PAGE</w:instrText><w:delText>gone</w:delText><w:t>End</w:t></w:r></w:p>
<w:p><w:r><w:t>co</w:t><w:noBreakHyphen/><w:t>operate </w:t><w:sym w:font="Symbol" w:char="F061"/></w:r></w:p>
<w:p><w:moveFrom><w:r><w:t>Moved</w:t></w:r></w:moveFrom><w:moveTo><w:r><w:t>Moved</w:t></w:r></w:moveTo></w:p>
</w:body></w:document>"#;
        let budget = Budget::starting_now(&DocumentsConfig::default(), None, usize::MAX);
        let mut out = Builder::new(usize::MAX);
        part_text(body.as_bytes(), "document.xml", &budget, &mut out, false).unwrap();
        assert_eq!(
            out.finish().text,
            "Intro\ttext\na | b\nc | d\nBoxed\nEnd\nco-operate a\nMoved"
        );
    }
}
