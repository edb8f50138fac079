//! The two containers documents come in — ZIP (Office Open XML, OpenDocument, EPUB) and OLE
//! compound files (legacy Office, Outlook MSG) — opened within limits and told apart by what
//! they hold.

use std::io::{Read, Seek, SeekFrom};

use super::{DocumentsConfig, Seekable, corrupt};
use crate::error::{ErrorCode, FileError};

/// An opened container.
pub enum Container<'a> {
    /// A ZIP archive.
    Zip(Box<Zip<'a>>),
}

/// Entries smaller than this may have any ratio: only large ones are bombs.
const RATIO_FREE_BYTES: u64 = 1024 * 1024;

/// A ZIP archive whose entries are read within the `[documents]` limits.
pub struct Zip<'a> {
    archive: zip::ZipArchive<Box<dyn Seekable + 'a>>,
    /// Bytes still allowed to be inflated from it.
    budget: u64,
    /// The largest ratio of inflated to stored bytes an entry may have.
    max_ratio: u64,
}

impl<'a> Zip<'a> {
    /// Opens an archive: its entry count is read from its end record and checked before the
    /// directory is read; every entry's declared sizes are checked against the ratio limit.
    ///
    /// # Errors
    /// `CORRUPT_FILE` when it is not a readable ZIP, `LIMIT_EXCEEDED` when it has too many
    /// entries or one whose declared sizes make it a bomb.
    pub fn open(
        mut reader: Box<dyn Seekable + 'a>,
        config: &DocumentsConfig,
    ) -> Result<Self, FileError> {
        let entries = entry_count(&mut reader).map_err(|err| corrupt("zip", err))?;
        if entries > config.max_zip_entries as u64 {
            return Err(too_many(entries, config));
        }
        let archive = zip::ZipArchive::new(reader).map_err(|err| corrupt("zip", err))?;
        // The end record read above may not be the one the directory was read from.
        if archive.len() > config.max_zip_entries {
            return Err(too_many(archive.len() as u64, config));
        }
        let mut zip = Zip {
            archive,
            budget: config.max_unzipped_bytes,
            max_ratio: config.max_zip_ratio,
        };
        // Markup parts are what readers inflate (calamine opens the archive itself): together
        // they must fit the inflation budget, as each must the ratio limit.
        let mut markup = 0u64;
        for index in 0..zip.archive.len() {
            let entry = zip
                .archive
                .by_index_raw(index)
                .map_err(|err| corrupt("zip", err))?;
            let name = entry.name().map_err(|err| corrupt("zip", err))?;
            check_ratio(&name, entry.size(), entry.compressed_size(), zip.max_ratio)?;
            if [".xml", ".rels", ".xhtml", ".html", ".htm", ".opf", ".ncx"]
                .iter()
                .any(|ext| name.to_ascii_lowercase().ends_with(ext))
            {
                markup = markup.saturating_add(entry.size());
            }
        }
        if markup > config.max_unzipped_bytes {
            return Err(FileError::permanent(
                ErrorCode::LimitExceeded,
                format!(
                    "the zip container's markup parts inflate to {markup} bytes, over \
                     documents.max_unzipped_bytes ({})",
                    config.max_unzipped_bytes
                ),
            ));
        }
        Ok(zip)
    }

    /// Which document the archive is, from its parts; `None` for an archive of something else.
    pub fn kind(&mut self) -> Option<&'static str> {
        if self.has("word/document.xml") {
            return Some(if self.macros() { "docm" } else { "docx" });
        }
        if self.has("ppt/presentation.xml") {
            return Some(if self.macros() { "pptm" } else { "pptx" });
        }
        if self.has("xl/workbook.xml") {
            return Some(if self.macros() { "xlsm" } else { "xlsx" });
        }
        let mimetype = self
            .read_opt("mimetype", 256)
            .ok()
            .flatten()
            .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned());
        match mimetype.as_deref() {
            Some("application/vnd.oasis.opendocument.text") => Some("odt"),
            Some("application/vnd.oasis.opendocument.spreadsheet") => Some("ods"),
            Some("application/vnd.oasis.opendocument.presentation") => Some("odp"),
            Some("application/epub+zip") => Some("epub"),
            _ if self.has("META-INF/container.xml") && self.has("mimetype") => Some("epub"),
            _ => None,
        }
    }

    fn macros(&mut self) -> bool {
        self.read_opt("[Content_Types].xml", 1024 * 1024)
            .ok()
            .flatten()
            .is_some_and(|types| memchr::memmem::find(&types, b"macroEnabled").is_some())
    }

    /// Whether the archive has an entry of that name.
    pub fn has(&self, name: &str) -> bool {
        self.archive.index_for_name(name).is_some()
    }

    /// The names of the entries, in the archive's order.
    pub fn names(&self) -> Vec<String> {
        self.archive
            .file_names()
            .filter_map(Result::ok)
            .map(Into::into)
            .collect()
    }

    /// An entry's bytes, at most `max` of them, within the archive's inflation budget.
    ///
    /// # Errors
    /// `CORRUPT_FILE` when it is missing or does not inflate; `LIMIT_EXCEEDED` past `max` or
    /// the budget, or when it inflates past the size it declares.
    pub fn read(&mut self, name: &str, max: u64) -> Result<Vec<u8>, FileError> {
        self.read_opt(name, max)?
            .ok_or_else(|| corrupt("zip", format!("the part {name} is missing")))
    }

    /// [`Zip::read`] of an entry that may be absent.
    ///
    /// # Errors
    /// As [`Zip::read`], but a missing entry is `Ok(None)`.
    pub fn read_opt(&mut self, name: &str, max: u64) -> Result<Option<Vec<u8>>, FileError> {
        let name = name.trim_start_matches('/');
        let Some(index) = self.archive.index_for_name(name) else {
            return Ok(None);
        };
        let budget = self.budget;
        let entry = self
            .archive
            .by_index(index)
            .map_err(|err| corrupt("zip", format!("{name}: {err}")))?;
        let declared = entry.size();
        let allowed = max.min(budget);
        if declared > allowed {
            return Err(too_much(name, declared, max, budget));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(declared).unwrap_or(0).min(1 << 20));
        let inflated = entry.take(declared + 1).read_to_end(&mut bytes);
        // The zip reader itself may be the one to stop a part at its declared size (its only
        // word for it is its message; a bad checksum fails at the same place).
        let past_declared = inflated
            .as_ref()
            .is_err_and(|err| err.to_string().contains("larger than its declared"));
        if bytes.len() as u64 > declared || past_declared {
            return Err(FileError::permanent(
                ErrorCode::LimitExceeded,
                format!("the zip part {name} inflates past the {declared} bytes it declares"),
            ));
        }
        inflated.map_err(|err| corrupt("zip", format!("inflating {name}: {err}")))?;
        self.budget -= bytes.len() as u64;
        Ok(Some(bytes))
    }
}

fn too_many(entries: u64, config: &DocumentsConfig) -> FileError {
    FileError::permanent(
        ErrorCode::LimitExceeded,
        format!(
            "the zip container has {entries} entries, over documents.max_zip_entries ({})",
            config.max_zip_entries
        ),
    )
}

fn too_much(name: &str, declared: u64, max: u64, budget: u64) -> FileError {
    let limit = if declared > budget {
        "what remains of documents.max_unzipped_bytes"
    } else {
        "the most one part may hold"
    };
    FileError::permanent(
        ErrorCode::LimitExceeded,
        format!(
            "the zip part {name} inflates to {declared} bytes, over {limit} ({})",
            max.min(budget)
        ),
    )
}

fn check_ratio(name: &str, size: u64, compressed: u64, max_ratio: u64) -> Result<(), FileError> {
    if size > RATIO_FREE_BYTES && size / compressed.max(1) > max_ratio {
        return Err(FileError::permanent(
            ErrorCode::LimitExceeded,
            format!(
                "the zip part {name} inflates {}-fold ({compressed} to {size} bytes), over \
                 documents.max_zip_ratio ({max_ratio}): a zip bomb",
                size / compressed.max(1)
            ),
        ));
    }
    Ok(())
}

/// The number of entries a ZIP's end record (or its ZIP64 end record) declares, read before
/// the directory itself.
fn entry_count(reader: &mut (impl Read + Seek + ?Sized)) -> std::io::Result<u64> {
    const EOCD: [u8; 4] = [0x50, 0x4b, 0x05, 0x06];
    const LOCATOR: [u8; 4] = [0x50, 0x4b, 0x06, 0x07];
    const EOCD64: [u8; 4] = [0x50, 0x4b, 0x06, 0x06];
    let len = reader.seek(SeekFrom::End(0))?;
    // The end record is 22 bytes plus a comment of up to 65,535.
    let tail_len = len.min(22 + 65_535 + 20);
    reader.seek(SeekFrom::Start(len - tail_len))?;
    let mut tail = vec![0; usize::try_from(tail_len).unwrap_or(0)];
    reader.read_exact(&mut tail)?;
    let at = memchr::memmem::rfind(&tail, &EOCD)
        .filter(|&at| at + 22 <= tail.len())
        .ok_or_else(|| invalid("no end of central directory record"))?;
    let count = u64::from(u16::from_le_bytes([tail[at + 10], tail[at + 11]]));
    if count != 0xFFFF {
        return Ok(count);
    }
    // ZIP64: the locator just before the end record gives where the ZIP64 end record is.
    let locator = at
        .checked_sub(20)
        .map(|start| &tail[start..at])
        .filter(|l| l.starts_with(&LOCATOR))
        .ok_or_else(|| invalid("a zip64 archive without its locator"))?;
    let mut offset = [0; 8];
    offset.copy_from_slice(&locator[8..16]);
    reader.seek(SeekFrom::Start(u64::from_le_bytes(offset)))?;
    let mut record = [0; 56];
    reader.read_exact(&mut record)?;
    if !record.starts_with(&EOCD64) {
        return Err(invalid(
            "the zip64 end record is not where its locator says",
        ));
    }
    let mut count = [0; 8];
    count.copy_from_slice(&record[32..40]);
    Ok(u64::from_le_bytes(count))
}

fn invalid(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned())
}

/// Which document an OLE compound file is, from its streams.
///
/// # Errors
/// `CORRUPT_FILE` when it is not a readable compound file; an `UNSUPPORTED_FORMAT` skip when it
/// holds no document read here.
pub fn ole_kind(reader: Box<dyn Seekable + '_>) -> Result<&'static str, super::Rejection> {
    let file = cfb::CompoundFile::open(reader).map_err(|err| corrupt("ole", err))?;
    // Office's password protection: the real document, encrypted, inside an OLE file.
    if file.is_stream("EncryptedPackage") || file.is_stream("EncryptionInfo") {
        return Err(super::Rejection::Error(super::password_protected(
            "the Office document is encrypted with a password",
        )));
    }
    if file.is_stream("WordDocument") {
        return Ok("doc");
    }
    if file.is_stream("Workbook") || file.is_stream("Book") {
        return Ok("xls");
    }
    if file.is_stream("PowerPoint Document") {
        return Ok("ppt");
    }
    if file.is_stream("__properties_version1.0") {
        return Ok("msg");
    }
    Err(super::unsupported(
        "an OLE compound file that is not a Word, Excel, PowerPoint or Outlook file".to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Write};

    use super::*;

    fn archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        let mut writer = zip::ZipWriter::new(&mut out);
        for (name, bytes) in entries {
            writer
                .start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            writer.write_all(bytes).unwrap();
        }
        writer.finish().unwrap();
        out.into_inner()
    }

    #[test]
    fn entry_count_is_read_from_the_end_record() {
        let bytes = archive(&[("a", b"1"), ("b", b"2"), ("c", b"3")]);
        assert_eq!(entry_count(&mut Cursor::new(bytes)).unwrap(), 3);
        assert!(entry_count(&mut Cursor::new(b"not a zip".to_vec())).is_err());
    }

    #[test]
    fn archives_over_the_entry_limit_are_refused_before_reading() {
        let bytes = archive(&[("a", b"1"), ("b", b"2"), ("c", b"3")]);
        let config = DocumentsConfig {
            max_zip_entries: 2,
            ..DocumentsConfig::default()
        };
        let err = Zip::open(Box::new(Cursor::new(bytes)), &config)
            .err()
            .unwrap();
        assert_eq!(err.code, ErrorCode::LimitExceeded);
    }

    #[test]
    fn kinds_come_from_the_parts() {
        let config = DocumentsConfig::default();
        let docx = archive(&[
            ("[Content_Types].xml", b"<Types/>"),
            ("word/document.xml", b"<w/>"),
        ]);
        let mut zip = Zip::open(Box::new(Cursor::new(docx)), &config).unwrap();
        assert_eq!(zip.kind(), Some("docx"));
        let odp = archive(&[
            (
                "mimetype",
                b"application/vnd.oasis.opendocument.presentation",
            ),
            ("content.xml", b"<x/>"),
        ]);
        let mut zip = Zip::open(Box::new(Cursor::new(odp)), &config).unwrap();
        assert_eq!(zip.kind(), Some("odp"));
        let plain = archive(&[("notes.txt", b"hello")]);
        let mut zip = Zip::open(Box::new(Cursor::new(plain)), &config).unwrap();
        assert_eq!(zip.kind(), None);
    }

    #[test]
    fn parts_are_read_within_the_budget() {
        let big = vec![b' '; 4 * 1024 * 1024];
        let config = DocumentsConfig {
            max_zip_ratio: 1_000_000,
            max_unzipped_bytes: 1024 * 1024,
            ..DocumentsConfig::default()
        };
        // Markup parts declaring more than the budget: refused before any is read.
        let bytes = archive(&[("big.xml", &big)]);
        let err = Zip::open(Box::new(Cursor::new(bytes)), &config)
            .err()
            .unwrap();
        assert_eq!(err.code, ErrorCode::LimitExceeded);
        assert!(err.message.contains("markup parts"), "{}", err.message);
        // Any part read past the budget fails as it is read.
        let bytes = archive(&[("big.bin", &big)]);
        let mut zip = Zip::open(Box::new(Cursor::new(bytes.clone())), &config).unwrap();
        assert_eq!(
            zip.read("big.bin", u64::MAX).unwrap_err().code,
            ErrorCode::LimitExceeded
        );
        // The same part compresses far past the default ratio: refused on opening.
        let err = Zip::open(Box::new(Cursor::new(bytes)), &DocumentsConfig::default())
            .err()
            .unwrap();
        assert_eq!(err.code, ErrorCode::LimitExceeded);
        assert!(err.message.contains("zip bomb"), "{}", err.message);
    }
}
