//! E-mail: EML (RFC 5322, read by mail-parser) and Outlook MSG (an OLE compound file of MAPI
//! properties). Subject, sender, recipients, date, the plain body (or the HTML body as readable
//! text), then each attachment by name — and the text of attachments that are themselves
//! documents or text, or attached e-mails, down to `documents.max_depth`.

use std::fmt::Write as _;
use std::io::Read;

use mail_parser::{MessageParser, MimeHeaders, PartType};

use super::{Budget, Builder, Extracted, Input, Seekable, corrupt, extract_at};
use crate::detect::{self, Family};
use crate::error::{ErrorCode, FileError};
use crate::extract::Rejection;

/// An EML message.
///
/// # Errors
/// `CORRUPT_FILE` when it is not a message; `LIMIT_EXCEEDED` past the text limit or the
/// deadline.
pub fn eml(input: Input<'_>, budget: &Budget, depth: usize) -> Result<Extracted, FileError> {
    let bytes = match input {
        Input::Bytes(bytes) => std::borrow::Cow::Borrowed(bytes),
        Input::File(path) => std::borrow::Cow::Owned(std::fs::read(path).map_err(|err| {
            FileError::transient(
                ErrorCode::Internal,
                format!("reading the spooled e-mail: {err}"),
            )
        })?),
    };
    let message = MessageParser::default()
        .parse(bytes.as_ref())
        .ok_or_else(|| corrupt("eml", "no message headers"))?;
    let mut out = Builder::new(budget.max_text_bytes);
    write_message(&message, budget, depth, &mut out)?;
    Ok(out.finish())
}

fn write_message(
    message: &mail_parser::Message<'_>,
    budget: &Budget,
    depth: usize,
    out: &mut Builder,
) -> Result<(), FileError> {
    let addresses = |list: Option<&mail_parser::Address<'_>>| {
        list.map(|list| {
            list.iter()
                .map(|addr| match (addr.name(), addr.address()) {
                    (Some(name), Some(address)) => format!("{name} <{address}>"),
                    (Some(only), None) | (None, Some(only)) => only.to_owned(),
                    (None, None) => String::new(),
                })
                .filter(|a| !a.is_empty())
                .collect::<Vec<_>>()
                .join(", ")
        })
    };
    let header = Header {
        subject: message.subject().map(str::to_owned),
        from: addresses(message.from()),
        to: addresses(message.to()),
        cc: addresses(message.cc()),
        date: message.date().map(mail_parser::DateTime::to_rfc3339),
    };
    header.write(out)?;
    // Every text part of the body, in order (a message may interleave text and pictures).
    for part in message.text_bodies() {
        let text = match &part.body {
            PartType::Text(text) => text.to_string(),
            PartType::Html(html) => crate::extract::html::text(html),
            _ => continue,
        };
        out.push(text.trim())?;
        out.end_paragraph()?;
    }
    for part in message.attachments() {
        budget.check_time()?;
        let name = part.attachment_name().unwrap_or("(unnamed)");
        out.end_paragraph()?;
        out.push("Attachment: ")?;
        out.push(name)?;
        out.push("\n")?;
        if let PartType::Message(nested) = &part.body {
            if depth < budget.config.max_depth {
                write_message(nested, budget, depth + 1, out)?;
            } else {
                out.push(&too_deep(budget))?;
            }
            continue;
        }
        let content_type = part.content_type().map(|ct| match ct.subtype() {
            Some(sub) => format!("{}/{sub}", ct.ctype()),
            None => ct.ctype().to_owned(),
        });
        attachment(
            part.contents(),
            name,
            content_type.as_deref(),
            budget,
            depth,
            out,
        )?;
    }
    Ok(())
}

/// The head of a message.
struct Header {
    subject: Option<String>,
    from: Option<String>,
    to: Option<String>,
    cc: Option<String>,
    date: Option<String>,
}

impl Header {
    fn write(&self, out: &mut Builder) -> Result<(), FileError> {
        let mut head = String::new();
        for (label, value) in [
            ("Subject", &self.subject),
            ("From", &self.from),
            ("To", &self.to),
            ("Cc", &self.cc),
            ("Date", &self.date),
        ] {
            if let Some(value) = value.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
                let _ = writeln!(head, "{label}: {value}");
            }
        }
        out.push(&head)?;
        out.end_paragraph()
    }
}

fn too_deep(budget: &Budget) -> String {
    format!(
        "(not read: attachments nest deeper than documents.max_depth, {})\n",
        budget.config.max_depth
    )
}

/// The text of one attached file, when it is a document or text; a note when it cannot be
/// read. Only the deadline fails the whole message.
fn attachment(
    bytes: &[u8],
    name: &str,
    content_type: Option<&str>,
    budget: &Budget,
    depth: usize,
    out: &mut Builder,
) -> Result<(), FileError> {
    if depth >= budget.config.max_depth {
        return out.push(&too_deep(budget));
    }
    let detected = detect::detect(bytes, content_type, name);
    let family = detected.format.family();
    let read = if super::spooled(detected.format) {
        extract_at(
            Input::Bytes(bytes),
            detected.format.name(),
            budget,
            depth + 1,
        )
        .map(|(_, extracted)| extracted)
    } else if family == Family::Text {
        crate::extract::extract(bytes, detected, None, budget.max_text_bytes)
    } else {
        // Pictures, recordings and other files are named, not read.
        return Ok(());
    };
    budget.check_time()?;
    match read {
        Ok(extracted) => out.push(&extracted.text)?,
        Err(Rejection::Skip { message, .. }) => {
            out.push(&format!("(not read: {message})"))?;
        }
        Err(Rejection::Error(err)) => {
            out.push(&format!("(not read: {})", err.message))?;
        }
    }
    out.end_paragraph()
}

/// An Outlook MSG file.
///
/// # Errors
/// `CORRUPT_FILE` when its properties cannot be read; `LIMIT_EXCEEDED` past the text limit or
/// the deadline.
pub fn msg(
    reader: Box<dyn Seekable + '_>,
    budget: &Budget,
    depth: usize,
) -> Result<Extracted, FileError> {
    let mut file = cfb::CompoundFile::open(reader).map_err(|err| corrupt("msg", err))?;
    let mut out = Builder::new(budget.max_text_bytes);
    write_msg(&mut file, "", budget, depth, &mut out)?;
    Ok(out.finish())
}

/// Largest property stream read (bytes).
const MAX_PROPERTY_BYTES: u64 = 64 * 1024 * 1024;

/// Writes the message stored at `root` (`""` for the file's own; an attached message's storage
/// otherwise).
fn write_msg<F: Read + std::io::Seek>(
    file: &mut cfb::CompoundFile<F>,
    root: &str,
    budget: &Budget,
    depth: usize,
    out: &mut Builder,
) -> Result<(), FileError> {
    let sender = string_property(file, root, 0x0C1A)?;
    let sender_address =
        string_property(file, root, 0x5D01)?.or(string_property(file, root, 0x0C1F)?);
    let from = match (sender, sender_address) {
        (Some(name), Some(address)) if name != address => Some(format!("{name} <{address}>")),
        (name, address) => name.or(address),
    };
    let (to, cc) = recipients(file, root)?;
    let header = Header {
        subject: string_property(file, root, 0x0037)?,
        from,
        to: to.or(string_property(file, root, 0x0E04)?),
        cc: cc.or(string_property(file, root, 0x0E03)?),
        date: sent_at(file, root),
    };
    header.write(out)?;
    let body = match string_property(file, root, 0x1000)? {
        Some(body) if !body.trim().is_empty() => Some(body),
        _ => binary_property(file, root, 0x1013)?
            .map(|html| crate::extract::html::text(&String::from_utf8_lossy(&html))),
    };
    if let Some(body) = body {
        out.push(body.trim())?;
        out.end_paragraph()?;
    }
    let attachments: Vec<String> = file
        .read_storage(if root.is_empty() { "/" } else { root })
        .map_err(|err| corrupt("msg", err))?
        .filter(|entry| entry.is_storage() && entry.name().starts_with("__attach_version1.0_#"))
        .map(|entry| entry.path().to_string_lossy().into_owned())
        .collect();
    for storage in attachments {
        budget.check_time()?;
        let name = string_property(file, &storage, 0x3707)?
            .or(string_property(file, &storage, 0x3001)?)
            .or(string_property(file, &storage, 0x3704)?)
            .unwrap_or_else(|| "(unnamed)".to_owned());
        out.end_paragraph()?;
        out.push("Attachment: ")?;
        out.push(&name)?;
        out.push("\n")?;
        let embedded = format!("{storage}/__substg1.0_3701000D");
        if file.is_storage(&embedded) {
            if depth < budget.config.max_depth {
                write_msg(file, &embedded, budget, depth + 1, out)?;
            } else {
                out.push(&too_deep(budget))?;
            }
            continue;
        }
        let data = format!("{storage}/__substg1.0_37010102");
        let size = file.entry(&data).map_or(0, |entry| entry.len());
        if size > MAX_PROPERTY_BYTES {
            out.push(&format!(
                "(not read: {size} bytes, over {MAX_PROPERTY_BYTES})\n"
            ))?;
        } else if let Some(data) = binary_property(file, &storage, 0x3701)? {
            let mime = string_property(file, &storage, 0x370E)?;
            attachment(&data, &name, mime.as_deref(), budget, depth, out)?;
        }
    }
    Ok(())
}

/// The To and Cc lines of the message at `root`, from its recipient storages: each recipient's
/// name and address (`Name <address>`), by its type (1 To, 2 Cc; Bcc is left out). `None`
/// where it has none of that type.
fn recipients<F: Read + std::io::Seek>(
    file: &mut cfb::CompoundFile<F>,
    root: &str,
) -> Result<(Option<String>, Option<String>), FileError> {
    const RECIPIENT_TYPE: u32 = 0x0C15_0003;
    let storages: Vec<String> = file
        .read_storage(if root.is_empty() { "/" } else { root })
        .map_err(|err| corrupt("msg", err))?
        .filter(|entry| entry.is_storage() && entry.name().starts_with("__recip_version1.0_#"))
        .map(|entry| entry.path().to_string_lossy().into_owned())
        .collect();
    let (mut to, mut cc) = (Vec::new(), Vec::new());
    for storage in storages {
        let name = string_property(file, &storage, 0x3001)?;
        let address = string_property(file, &storage, 0x39FE)?
            .or(string_property(file, &storage, 0x3003)?)
            .filter(|a| a.contains('@'));
        let shown = match (name, address) {
            (Some(name), Some(address)) if name != address => format!("{name} <{address}>"),
            (Some(one), _) | (None, Some(one)) => one,
            (None, None) => continue,
        };
        // Recipient storages have an 8-byte header before their fixed-size properties.
        let kind = stream(file, &format!("{storage}/__properties_version1.0"))?
            .and_then(|bytes| fixed_property(bytes.get(8..)?, RECIPIENT_TYPE))
            .unwrap_or(1);
        match kind & 0xFF {
            2 => cc.push(shown),
            3 => {}
            _ => to.push(shown),
        }
    }
    let line = |list: Vec<String>| (!list.is_empty()).then(|| list.join(", "));
    Ok((line(to), line(cc)))
}

/// The 8-byte value of the fixed-size property `tag` among `entries` (16 bytes each).
fn fixed_property(entries: &[u8], tag: u32) -> Option<u64> {
    entries.chunks_exact(16).find_map(|entry| {
        let found = u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]);
        let mut value = [0; 8];
        value.copy_from_slice(&entry[8..16]);
        (found == tag).then(|| u64::from_le_bytes(value))
    })
}

/// A string property: Unicode (`001F`) or 8-bit (`001E`, taken as Windows-1252).
fn string_property<F: Read + std::io::Seek>(
    file: &mut cfb::CompoundFile<F>,
    root: &str,
    id: u16,
) -> Result<Option<String>, FileError> {
    if let Some(bytes) = stream(file, &format!("{root}/__substg1.0_{id:04X}001F"))? {
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
            .collect();
        let text = String::from_utf16_lossy(&units);
        return Ok(Some(text.trim_end_matches('\0').to_owned()));
    }
    Ok(
        stream(file, &format!("{root}/__substg1.0_{id:04X}001E"))?.map(|bytes| {
            let (text, _, _) = encoding_rs::WINDOWS_1252.decode(&bytes);
            text.trim_end_matches('\0').to_owned()
        }),
    )
}

/// A binary property (`0102`).
fn binary_property<F: Read + std::io::Seek>(
    file: &mut cfb::CompoundFile<F>,
    root: &str,
    id: u16,
) -> Result<Option<Vec<u8>>, FileError> {
    stream(file, &format!("{root}/__substg1.0_{id:04X}0102"))
}

fn stream<F: Read + std::io::Seek>(
    file: &mut cfb::CompoundFile<F>,
    path: &str,
) -> Result<Option<Vec<u8>>, FileError> {
    if !file.is_stream(path) {
        return Ok(None);
    }
    let stream = file.open_stream(path).map_err(|err| corrupt("msg", err))?;
    let mut bytes = Vec::new();
    stream
        .take(MAX_PROPERTY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| corrupt("msg", err))?;
    if bytes.len() as u64 > MAX_PROPERTY_BYTES {
        return Err(FileError::permanent(
            ErrorCode::LimitExceeded,
            format!("the MSG property {path} is over {MAX_PROPERTY_BYTES} bytes"),
        ));
    }
    Ok(Some(bytes))
}

/// When the message was sent (or delivered), from the fixed-size properties stream.
fn sent_at<F: Read + std::io::Seek>(file: &mut cfb::CompoundFile<F>, root: &str) -> Option<String> {
    const SUBMITTED: u32 = 0x0039_0040;
    const DELIVERED: u32 = 0x0E06_0040;
    let bytes = stream(file, &format!("{root}/__properties_version1.0"))
        .ok()
        .flatten()?;
    // The file's own message has a 32-byte header; an attached one 24 bytes.
    let header = if root.is_empty() { 32 } else { 24 };
    let entries = bytes.get(header..)?;
    let found =
        fixed_property(entries, SUBMITTED).or_else(|| fixed_property(entries, DELIVERED))?;
    // FILETIME: 100 ns ticks since 1601.
    let unix = (found / 10_000_000).checked_sub(11_644_473_600)?;
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix);
    Some(humantime::format_rfc3339_seconds(at).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::document::DocumentsConfig;

    #[test]
    fn every_text_part_of_the_body_is_kept() {
        let message = "From: A <a@example.com>\r\nTo: B <b@example.com>\r\nSubject: Parts\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\
Content-Type: text/plain\r\n\r\nFirst part.\r\n--x\r\nContent-Type: image/png\r\n\
Content-Disposition: inline; filename=dot.png\r\nContent-Transfer-Encoding: base64\r\n\r\n\
iVBORw0KGgo=\r\n--x\r\nContent-Type: text/plain\r\n\r\nSecond part.\r\n--x--\r\n";
        let budget = Budget::starting_now(&DocumentsConfig::default(), None, usize::MAX);
        let text = eml(Input::Bytes(message.as_bytes()), &budget, 1)
            .unwrap()
            .text;
        assert!(
            text.starts_with("Subject: Parts\nFrom: A <a@example.com>\nTo: B <b@example.com>"),
            "{text}"
        );
        let (first, second) = (
            text.find("First part.").unwrap(),
            text.find("Second part.").unwrap(),
        );
        assert!(first < second, "{text}");
        assert!(text.contains("Attachment: dot.png"), "{text}");
    }
}
