//! What an object is: its bytes decide first (magic numbers, then whether they are text at all),
//! then its declared content type, then its name. The extension alone never makes a file text.

use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How many leading bytes detection looks at.
pub const SNIFF_BYTES: usize = 8 * 1024;

/// The coarse kind of content, as carried on records (`file.media_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MediaType {
    /// Text and documents.
    Text,
    /// Still images.
    Image,
    /// Sound.
    Audio,
    /// Moving images.
    Video,
}

impl MediaType {
    /// The name on the wire (`TEXT`, `IMAGE`, `AUDIO`, `VIDEO`), as serde writes it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            MediaType::Text => "TEXT",
            MediaType::Image => "IMAGE",
            MediaType::Audio => "AUDIO",
            MediaType::Video => "VIDEO",
        }
    }
}

/// Which extractor handles a format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Character data: decoded and read directly.
    Text,
    /// Office documents, PDF, e-books.
    Document,
    /// Images.
    Image,
    /// Audio.
    Audio,
    /// Video.
    Video,
    /// Archives and binary data of no known format.
    Other,
}

/// A detected format. Adding a format means adding a variant here and its extractor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Plain text.
    Plain,
    /// Markdown.
    Markdown,
    /// HTML.
    Html,
    /// XML.
    Xml,
    /// Comma-separated values.
    Csv,
    /// Tab-separated values.
    Tsv,
    /// A JSON document.
    Json,
    /// One JSON document per line.
    JsonLines,
    /// SubRip subtitles.
    Srt,
    /// WebVTT subtitles.
    WebVtt,
    /// Source code in the named language.
    Code(&'static str),
    /// A document format (pdf, docx, …), named.
    Document(&'static str),
    /// An image format, named.
    Image(&'static str),
    /// An audio format, named.
    Audio(&'static str),
    /// A video format, named.
    Video(&'static str),
    /// An archive or other recognised binary format, named.
    Binary(&'static str),
    /// Bytes that are neither text nor a format we recognise.
    Unknown,
}

impl Format {
    /// The format's name on records (`file.format`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Format::Plain => "text",
            Format::Markdown => "markdown",
            Format::Html => "html",
            Format::Xml => "xml",
            Format::Csv => "csv",
            Format::Tsv => "tsv",
            Format::Json => "json",
            Format::JsonLines => "jsonl",
            Format::Srt => "srt",
            Format::WebVtt => "vtt",
            Format::Code(name)
            | Format::Document(name)
            | Format::Image(name)
            | Format::Audio(name)
            | Format::Video(name)
            | Format::Binary(name) => name,
            Format::Unknown => "unknown",
        }
    }

    /// Which extractor handles it.
    #[must_use]
    pub fn family(self) -> Family {
        match self {
            Format::Document(_) => Family::Document,
            Format::Image(_) => Family::Image,
            Format::Audio(_) => Family::Audio,
            Format::Video(_) => Family::Video,
            Format::Binary(_) | Format::Unknown => Family::Other,
            _ => Family::Text,
        }
    }

    /// The media type carried on records, when it has one.
    #[must_use]
    pub fn media_type(self) -> Option<MediaType> {
        match self.family() {
            Family::Text | Family::Document => Some(MediaType::Text),
            Family::Image => Some(MediaType::Image),
            Family::Audio => Some(MediaType::Audio),
            Family::Video => Some(MediaType::Video),
            Family::Other => None,
        }
    }
}

/// What detection concluded about an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detected {
    /// The format.
    pub format: Format,
    /// For text: the byte order or unit width the sniffer saw (decoding decides the rest).
    pub text_hint: Option<TextHint>,
}

/// What the sniffer learnt about text bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextHint {
    /// A byte order mark (UTF-8, UTF-16 or UTF-32) is present.
    Bom,
    /// UTF-16 without a BOM, little-endian.
    Utf16Le,
    /// UTF-16 without a BOM, big-endian.
    Utf16Be,
    /// Single- or multi-byte text without a BOM (UTF-8 or a legacy encoding).
    Bytes,
}

/// Detects the format of an object from its first bytes (`head`, up to [`SNIFF_BYTES`]), its
/// declared content type and its name.
#[must_use]
pub fn detect(head: &[u8], content_type: Option<&str>, name: &str) -> Detected {
    let head = &head[..head.len().min(SNIFF_BYTES)];
    let mime = content_type.map(|ct| {
        ct.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    let extension = Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();

    if let Some(format) = magic(head).or_else(|| text_image(head, &extension)) {
        return Detected {
            format,
            text_hint: None,
        };
    }
    let Some(hint) = sniff_text(head) else {
        return Detected {
            format: Format::Unknown,
            text_hint: None,
        };
    };
    let format = mime
        .as_deref()
        .and_then(text_format_from_mime)
        .or_else(|| text_format_from_extension(&extension, name))
        .or_else(|| text_format_from_content(head))
        .unwrap_or(Format::Plain);
    Detected {
        format,
        text_hint: Some(hint),
    }
}

/// Binary formats recognised by their magic numbers.
/// The format an object's declared content type and name say, without reading it (for files
/// registered but not processed). Never used where the bytes can be looked at.
#[must_use]
pub fn declared(content_type: Option<&str>, name: &str) -> Format {
    let mime = content_type.map(str::to_ascii_lowercase);
    let extension = Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    if let Some(format) = mime.as_deref().and_then(text_format_from_mime) {
        return format;
    }
    let by_extension = match extension.as_str() {
        "pdf" | "docx" | "docm" | "doc" | "pptx" | "pptm" | "ppt" | "xlsx" | "xlsm" | "xls"
        | "odt" | "odp" | "ods" | "rtf" | "eml" | "msg" | "epub" => DOCUMENTS
            .iter()
            .find(|d| **d == extension)
            .map(|d| Format::Document(d)),
        "png" | "jpg" | "jpeg" | "gif" | "webp" | "bmp" | "tif" | "tiff" | "heic" | "avif"
        | "svg" | "ppm" | "pgm" | "pbm" | "pnm" | "pam" | "xbm" | "xpm" => {
            Some(Format::Image(match extension.as_str() {
                "jpg" | "jpeg" => "jpeg",
                "tif" | "tiff" => "tiff",
                "ppm" | "pgm" | "pbm" | "pnm" | "pam" => "pnm",
                "svg" => "svg",
                "xbm" => "xbm",
                "xpm" => "xpm",
                "png" => "png",
                "gif" => "gif",
                "webp" => "webp",
                "bmp" => "bmp",
                "heic" => "heif",
                _ => "avif",
            }))
        }
        "mp3" | "wav" | "flac" | "m4a" | "aac" | "ogg" | "opus" => {
            Some(Format::Audio(match extension.as_str() {
                "mp3" => "mp3",
                "wav" => "wav",
                "flac" => "flac",
                "m4a" => "m4a",
                "aac" => "aac",
                _ => "ogg",
            }))
        }
        "mp4" | "mov" | "mkv" | "webm" | "avi" => Some(Format::Video(match extension.as_str() {
            "mp4" => "mp4",
            "mov" => "mov",
            "mkv" => "mkv",
            "webm" => "webm",
            _ => "avi",
        })),
        _ => text_format_from_extension(&extension, name),
    };
    by_extension.unwrap_or(Format::Unknown)
}

/// Document formats by name.
const DOCUMENTS: [&str; 17] = [
    "pdf", "docx", "docm", "doc", "pptx", "pptm", "ppt", "xlsx", "xlsm", "xls", "odt", "odp",
    "ods", "rtf", "eml", "msg", "epub",
];

fn magic(head: &[u8]) -> Option<Format> {
    if let Some(format) = audio_magic(head).or_else(|| media_magic(head)) {
        return Some(format);
    }
    // OLE compound files (legacy Office, Outlook MSG) and ZIPs are told apart by their own
    // directory when they are read; RTF is text that starts with its signature.
    if head.starts_with(&[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1]) {
        return Some(Format::Binary("ole"));
    }
    if head.starts_with(b"{\\rtf") {
        return Some(Format::Document("rtf"));
    }
    let kind = infer::get(head)?;
    let format = match kind.mime_type() {
        "image/jpeg" => Format::Image("jpeg"),
        "image/png" => Format::Image("png"),
        "image/gif" => Format::Image("gif"),
        "image/webp" => Format::Image("webp"),
        "image/bmp" => Format::Image("bmp"),
        "image/tiff" => Format::Image("tiff"),
        "image/vnd.microsoft.icon" | "image/x-icon" => Format::Image("ico"),
        "image/heif" => Format::Image("heif"),
        "image/avif" => Format::Image("avif"),
        "image/vnd.adobe.photoshop" => Format::Image("psd"),
        "image/jxl" => Format::Image("jxl"),
        "image/svg+xml" => Format::Image("svg"),
        "audio/mpeg" => Format::Audio("mp3"),
        "audio/x-wav" | "audio/wav" => Format::Audio("wav"),
        "audio/x-flac" | "audio/flac" => Format::Audio("flac"),
        "audio/ogg" | "audio/opus" => Format::Audio("ogg"),
        "audio/aac" => Format::Audio("aac"),
        "audio/m4a" | "audio/mp4" => Format::Audio("m4a"),
        "audio/x-aiff" | "audio/aiff" => Format::Audio("aiff"),
        "audio/midi" => Format::Audio("midi"),
        "audio/amr" => Format::Audio("amr"),
        "video/mp4" => Format::Video("mp4"),
        "video/x-m4v" => Format::Video("m4v"),
        "video/quicktime" => Format::Video("mov"),
        "video/x-matroska" => Format::Video("mkv"),
        "video/webm" => Format::Video("webm"),
        "video/x-msvideo" => Format::Video("avi"),
        "video/x-flv" => Format::Video("flv"),
        "video/mpeg" => Format::Video("mpeg"),
        "video/x-ms-wmv" => Format::Video("wmv"),
        "video/3gpp" => Format::Video("3gp"),
        "application/pdf" => Format::Document("pdf"),
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => {
            Format::Document("docx")
        }
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" => {
            Format::Document("xlsx")
        }
        "application/vnd.openxmlformats-officedocument.presentationml.presentation" => {
            Format::Document("pptx")
        }
        "application/msword" => Format::Document("doc"),
        "application/vnd.ms-excel" => Format::Document("xls"),
        "application/vnd.ms-powerpoint" => Format::Document("ppt"),
        "application/vnd.oasis.opendocument.text" => Format::Document("odt"),
        "application/vnd.oasis.opendocument.spreadsheet" => Format::Document("ods"),
        "application/vnd.oasis.opendocument.presentation" => Format::Document("odp"),
        "application/epub+zip" => Format::Document("epub"),
        "application/rtf" => Format::Document("rtf"),
        // Text formats infer knows (html, xml, shell scripts) are left to the text sniffer.
        mime if mime.starts_with("text/") => return None,
        _ => Format::Binary(kind.extension()),
    };
    Some(format)
}

/// Audio infer does not know: Core Audio files, and MPEG audio (layer I, II or III) and ADTS
/// AAC that start with a frame rather than a tag. The frame header must be valid (no reserved
/// version, bitrate or rate) and a second frame must start where the first says it ends: text
/// that happens to begin with `FF Fx` (a UTF-16 byte order mark) is not audio.
fn audio_magic(head: &[u8]) -> Option<Format> {
    if head.starts_with(b"caff") {
        return Some(Format::Audio("caf"));
    }
    let frame = head.get(..6)?;
    if frame[0] != 0xFF || frame[1] & 0xE0 != 0xE0 {
        return None;
    }
    let layer = (frame[1] >> 1) & 0b11;
    let (format, length) = if layer == 0 {
        // ADTS: MPEG-4 or MPEG-2 AAC; a sampling index of 13 or more is reserved.
        if frame[1] & 0xF6 != 0xF0 || (frame[2] >> 2) & 0b1111 >= 13 {
            return None;
        }
        let length = (usize::from(frame[3] & 0b11) << 11)
            | (usize::from(frame[4]) << 3)
            | usize::from(frame[5] >> 5);
        ("aac", length)
    } else {
        mpeg_frame(frame)?
    };
    let next = head.get(length..length + 2)?;
    (length >= 7 && next[0] == 0xFF && next[1] & 0xE0 == 0xE0).then_some(Format::Audio(format))
}

/// Media formats `infer` does not know, by their own signatures: BigTIFF, MPEG transport
/// streams, AIFF-C, 3GPP and 3GPP2 (of every brand), FLIC animations, AC-3 and E-AC-3.
fn media_magic(head: &[u8]) -> Option<Format> {
    if head.starts_with(b"II\x2B\x00\x08\x00\x00\x00")
        || head.starts_with(b"MM\x00\x2B\x00\x08\x00\x00")
    {
        return Some(Format::Image("tiff"));
    }
    // A transport stream's packets start with 0x47 every 188 bytes (192 in M2TS, after a
    // timestamp); several in a row, as many as the head holds up to seven.
    for (first, step) in [(0, 188), (4, 192)] {
        let packets = (head.len().saturating_sub(first) / step).clamp(0, 7);
        if packets >= 3 && (0..packets).all(|i| head.get(first + i * step) == Some(&0x47)) {
            return Some(Format::Video("mpegts"));
        }
    }
    if head.starts_with(b"FORM") && head.get(8..12) == Some(b"AIFC") {
        return Some(Format::Audio("aiff"));
    }
    if head.get(4..8) == Some(b"ftyp") {
        match head.get(8..11) {
            Some(b"3gp") => return Some(Format::Video("3gp")),
            Some(b"3g2") => return Some(Format::Video("3g2")),
            _ => {}
        }
    }
    if let Some(header) = head.get(..128) {
        let word = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]);
        let (magic, width, height, depth) = (word(4), word(8), word(10), word(12));
        let flic = match magic {
            0xAF11 | 0xAF12 => depth == 8,
            0xAF44 => matches!(depth, 15 | 16 | 24),
            _ => false,
        };
        if flic && width > 0 && height > 0 {
            return Some(Format::Video("flic"));
        }
    }
    ac3_frame(head)
}

/// AC-3 or E-AC-3: a sync frame whose length, read from its header, ends where the next one
/// starts.
fn ac3_frame(head: &[u8]) -> Option<Format> {
    /// 16-bit words in an AC-3 frame, by frame size code, at 48, 44.1 and 32 kHz.
    const WORDS: [[u16; 38]; 3] = [
        [
            64, 64, 80, 80, 96, 96, 112, 112, 128, 128, 160, 160, 192, 192, 224, 224, 256, 256,
            320, 320, 384, 384, 448, 448, 512, 512, 640, 640, 768, 768, 896, 896, 1024, 1024, 1152,
            1152, 1280, 1280,
        ],
        [
            69, 70, 87, 88, 104, 105, 121, 122, 139, 140, 174, 175, 208, 209, 243, 244, 278, 279,
            348, 349, 417, 418, 487, 488, 557, 558, 696, 697, 835, 836, 975, 976, 1114, 1115, 1253,
            1254, 1393, 1394,
        ],
        [
            96, 96, 120, 120, 144, 144, 168, 168, 192, 192, 240, 240, 288, 288, 336, 336, 384, 384,
            480, 480, 576, 576, 672, 672, 768, 768, 960, 960, 1152, 1152, 1344, 1344, 1536, 1536,
            1728, 1728, 1920, 1920,
        ],
    ];
    let header = head.get(..6)?;
    if header[..2] != [0x0B, 0x77] {
        return None;
    }
    let bsid = header[5] >> 3;
    let (format, length) = match bsid {
        0..=8 => {
            let rate = usize::from(header[4] >> 6);
            let code = usize::from(header[4] & 0x3F);
            let words = WORDS.get(rate)?.get(code)?;
            ("ac3", usize::from(*words) * 2)
        }
        11..=16 => {
            let words = (usize::from(header[2] & 0x07) << 8) | usize::from(header[3]);
            ("eac3", (words + 1) * 2)
        }
        _ => return None,
    };
    (head.get(length..length + 2)? == [0x0B, 0x77]).then_some(Format::Audio(format))
}

/// The format and length in bytes of the MPEG audio frame whose header `frame` starts with.
fn mpeg_frame(frame: &[u8]) -> Option<(&'static str, usize)> {
    const V1: [[u32; 15]; 3] = [
        [
            0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448,
        ],
        [
            0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384,
        ],
        [
            0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
        ],
    ];
    const V2: [[u32; 15]; 2] = [
        [
            0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256,
        ],
        [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160],
    ];
    let version = (frame[1] >> 3) & 0b11;
    // 3 = layer I, 2 = layer II, 1 = layer III.
    let layer = (frame[1] >> 1) & 0b11;
    let bitrate = usize::from(frame[2] >> 4);
    let rate = usize::from((frame[2] >> 2) & 0b11);
    let padding = u32::from((frame[2] >> 1) & 1);
    if version == 1 || bitrate == 0 || bitrate == 0xF || rate == 3 {
        return None;
    }
    let index = usize::from(3 - layer);
    let kbps = if version == 3 {
        V1[index][bitrate]
    } else {
        V2[index.min(1)][bitrate]
    };
    let hz = [
        [11_025, 12_000, 8_000],
        [0, 0, 0],
        [22_050, 24_000, 16_000],
        [44_100, 48_000, 32_000],
    ][usize::from(version)][rate];
    let bits = kbps * 1000;
    let length = match layer {
        3 => (12 * bits / hz + padding) * 4,
        1 if version != 3 => 72 * bits / hz + padding,
        _ => 144 * bits / hz + padding,
    };
    let format = match layer {
        1 => "mp3",
        2 => "mp2",
        _ => "mp1",
    };
    Some((format, usize::try_from(length).ok()?))
}

/// Whether `head` is text, and what kind. Text has a BOM, or is UTF-16 by its zero bytes, or
/// has no NUL and almost no control characters.
fn sniff_text(head: &[u8]) -> Option<TextHint> {
    if head.is_empty() {
        return Some(TextHint::Bytes);
    }
    if head.starts_with(&[0xEF, 0xBB, 0xBF])
        || head.starts_with(&[0xFF, 0xFE])
        || head.starts_with(&[0xFE, 0xFF])
        || head.starts_with(&[0, 0, 0xFE, 0xFF])
    {
        return Some(TextHint::Bom);
    }
    sniff_without_bom(head)
}

/// [`sniff_text`] of a head without a BOM: UTF-16 by its zero bytes, or text with no NUL and
/// almost no control characters.
fn sniff_without_bom(head: &[u8]) -> Option<TextHint> {
    // Most heads have no zero byte, which one fast search tells: then they are neither
    // UTF-16 nor binary by a NUL, and only their control characters are left to count.
    if head.contains(&0) {
        return sniff_utf16(head);
    }
    let controls = head.iter().filter(|&&b| is_control(b)).count();
    // A stray control character or two happens in real text; many means binary data.
    (controls * 100 <= head.len()).then_some(TextHint::Bytes)
}

/// A control character that text does not use (tab, line breaks, form feed and escape are
/// used). Comparisons only, so that counting them over a head runs many bytes at a time.
fn is_control(b: u8) -> bool {
    (b < 0x20 && b != b'\t' && b != b'\n' && b != b'\r' && b != 0x0C && b != 0x1B) || b == 0x7F
}

/// UTF-16 without a BOM: most code units of Latin-script text have a zero high byte.
fn sniff_utf16(head: &[u8]) -> Option<TextHint> {
    let units = head.len() / 2;
    if units < 2 {
        return None;
    }
    let zeros_at = |parity: usize| {
        head.iter()
            .skip(parity)
            .step_by(2)
            .filter(|&&b| b == 0)
            .count()
    };
    let (even, odd) = (zeros_at(0), zeros_at(1));
    if odd * 10 >= units * 6 && even * 20 <= units {
        return Some(TextHint::Utf16Le);
    }
    if even * 10 >= units * 6 && odd * 20 <= units {
        return Some(TextHint::Utf16Be);
    }
    None
}

fn text_format_from_mime(mime: &str) -> Option<Format> {
    Some(match mime {
        "text/markdown" | "text/x-markdown" => Format::Markdown,
        "text/html" | "application/xhtml+xml" => Format::Html,
        "text/xml" | "application/xml" => Format::Xml,
        "text/csv" => Format::Csv,
        "text/tab-separated-values" => Format::Tsv,
        "application/json" => Format::Json,
        "application/x-ndjson" | "application/jsonl" | "application/x-jsonlines" => {
            Format::JsonLines
        }
        "application/x-subrip" => Format::Srt,
        "text/vtt" => Format::WebVtt,
        "message/rfc822" => Format::Document("eml"),
        _ => return None,
    })
}

fn text_format_from_extension(extension: &str, name: &str) -> Option<Format> {
    Some(match extension {
        "txt" | "text" | "log" => Format::Plain,
        "md" | "markdown" | "mdx" => Format::Markdown,
        "html" | "htm" | "xhtml" => Format::Html,
        "xml" | "xsd" | "rss" | "atom" => Format::Xml,
        "csv" => Format::Csv,
        "tsv" | "tab" => Format::Tsv,
        "json" => Format::Json,
        "jsonl" | "ndjson" => Format::JsonLines,
        "srt" => Format::Srt,
        "vtt" => Format::WebVtt,
        "eml" => Format::Document("eml"),
        _ => return code_language(extension, name).map(Format::Code),
    })
}

/// Source-code languages by extension (or file name, for the usual extension-less files).
fn code_language(extension: &str, name: &str) -> Option<&'static str> {
    let file_name = Path::new(name)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    Some(match (extension, file_name) {
        ("rs", _) => "rust",
        ("py" | "pyi", _) => "python",
        ("js" | "mjs" | "cjs" | "jsx", _) => "javascript",
        ("ts" | "tsx", _) => "typescript",
        ("go", _) => "go",
        ("java", _) => "java",
        ("kt" | "kts", _) => "kotlin",
        ("c" | "h", _) => "c",
        ("cc" | "cpp" | "cxx" | "hpp" | "hh", _) => "cpp",
        ("cs", _) => "csharp",
        ("rb", _) => "ruby",
        ("php", _) => "php",
        ("swift", _) => "swift",
        ("scala", _) => "scala",
        ("sh" | "bash" | "zsh", _) => "shell",
        ("sql", _) => "sql",
        ("css" | "scss" | "less", _) => "css",
        ("yaml" | "yml", _) => "yaml",
        ("toml", _) => "toml",
        ("ini" | "cfg" | "conf", _) => "ini",
        ("tex", _) => "latex",
        ("rst", _) => "restructuredtext",
        (_, "Dockerfile" | "Makefile" | "Rakefile" | "Gemfile") => "build",
        _ => return None,
    })
}

/// Images that are text, or start like it: PNM (`P1`–`P7`), XBM and XPM (C source) and SVG
/// (XML whose root is `svg`, in SVG's namespace or in a file named `.svg`). Told by their
/// content.
fn text_image(head: &[u8], extension: &str) -> Option<Format> {
    let head = head.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(head);
    if pnm_header(head, extension) {
        return Some(Format::Image("pnm"));
    }
    let start = head.iter().position(|b| !b.is_ascii_whitespace())?;
    let text = &head[start..];
    if text.starts_with(b"/* XPM */") || text.starts_with(b"! XPM2") {
        return Some(Format::Image("xpm"));
    }
    if text.starts_with(b"#define ") {
        // `#define NAME_width N`, `#define NAME_height N`, then `NAME_bits[]`.
        let text = String::from_utf8_lossy(text);
        let mut defines = text.lines().take(2).map(|line| {
            let mut words = line.split_ascii_whitespace();
            let (define, name, value) = (words.next()?, words.next()?, words.next()?);
            (define == "#define" && value.parse::<u32>().is_ok()).then_some(name)
        });
        let (width, height) = (defines.next()??, defines.next()??);
        let name = width.strip_suffix("_width")?;
        let bits = format!("{name}_bits");
        return (height.strip_suffix("_height") == Some(name) && text.contains(&bits))
            .then_some(Format::Image("xbm"));
    }
    let root = svg_root(text)?;
    (extension == "svg"
        || root
            .windows(SVG_NAMESPACE.len())
            .any(|w| w == SVG_NAMESPACE))
    .then_some(Format::Image("svg"))
}

const SVG_NAMESPACE: &[u8] = b"http://www.w3.org/2000/svg";

/// Whether `head` starts with a Netpbm header: `P1`–`P6` and its numbers (width, height and,
/// but for bitmaps, the largest value), comments allowed between them; the numbers of the
/// plain (text) variants follow, and the raster of the binary ones is not text (unless the
/// file is named as Netpbm). `P7` (PAM) starts its header lines with `WIDTH` and the like.
fn pnm_header(head: &[u8], extension: &str) -> bool {
    let [b'P', kind @ b'1'..=b'7', rest @ ..] = head else {
        return false;
    };
    if !rest.first().is_some_and(u8::is_ascii_whitespace) {
        return false;
    }
    if *kind == b'7' {
        let lead = rest.trim_ascii_start();
        return ["WIDTH", "HEIGHT", "DEPTH", "MAXVAL", "TUPLTYPE"]
            .iter()
            .any(|field| lead.starts_with(field.as_bytes()));
    }
    let numbers = if matches!(kind, b'1' | b'4') { 2 } else { 3 };
    let mut at = rest;
    for _ in 0..numbers {
        loop {
            at = at.trim_ascii_start();
            match at.strip_prefix(b"#") {
                Some(comment) => {
                    let end = comment.iter().position(|&b| b == b'\n');
                    at = end.map_or(&[][..], |end| &comment[end..]);
                }
                None => break,
            }
        }
        let digits = at.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 10 {
            return false;
        }
        at = &at[digits..];
        if !at.first().is_some_and(u8::is_ascii_whitespace) {
            return false;
        }
    }
    if matches!(kind, b'1'..=b'3') {
        // The plain variants hold numbers only.
        return at
            .iter()
            .all(|b| b.is_ascii_digit() || b.is_ascii_whitespace() || *b == b'#');
    }
    // A binary raster has bytes text does not (a black pixel is a zero), or the name says it.
    matches!(extension, "pbm" | "pgm" | "ppm" | "pnm" | "pam")
        || at
            .get(1..)
            .is_some_and(|raster| !raster.is_empty() && sniff_text(raster).is_none())
}

/// The start tag of XML text's root element when it is `svg` (after its declaration, comments
/// and doctype), whole within `text`.
fn svg_root(mut text: &[u8]) -> Option<&[u8]> {
    loop {
        text = text.trim_ascii_start();
        let skip = if text.starts_with(b"<?") {
            b"?>".as_slice()
        } else if text.starts_with(b"<!--") {
            b"-->".as_slice()
        } else if text.starts_with(b"<!") {
            // A doctype's internal subset holds declarations of its own.
            let subset = text.iter().position(|&b| b == b'[' || b == b'>');
            if subset.and_then(|at| text.get(at)) == Some(&b'[') {
                b"]>".as_slice()
            } else {
                b">".as_slice()
            }
        } else {
            break;
        };
        let end = text.windows(skip.len()).position(|w| w == skip)?;
        text = &text[end + skip.len()..];
    }
    let name = text.strip_prefix(b"<")?;
    let end = name
        .iter()
        .position(|b| b.is_ascii_whitespace() || *b == b'>' || *b == b'/')
        .unwrap_or(name.len());
    let name = &name[..end];
    let local = name.rsplit(|&b| b == b':').next().unwrap_or(name);
    let close = text.iter().position(|&b| b == b'>')?;
    (local == b"svg").then(|| &text[..close])
}

/// Text formats recognisable from their first characters.
fn text_format_from_content(head: &[u8]) -> Option<Format> {
    let start = head
        .iter()
        .position(|b| !b.is_ascii_whitespace() && *b != 0xEF && *b != 0xBB && *b != 0xBF)?;
    let lead: Vec<u8> = head[start..]
        .iter()
        .take(64)
        .map(u8::to_ascii_lowercase)
        .collect();
    if lead.starts_with(b"<!doctype html") || lead.starts_with(b"<html") {
        Some(Format::Html)
    } else if lead.starts_with(b"<?xml") {
        Some(Format::Xml)
    } else if lead.starts_with(b"webvtt") {
        Some(Format::WebVtt)
    } else if mail_headers(&head[start..]) {
        Some(Format::Document("eml"))
    } else if lead.starts_with(b"{") || lead.starts_with(b"[") {
        serde_json::from_slice::<serde::de::IgnoredAny>(head)
            .is_ok()
            .then_some(Format::Json)
    } else {
        None
    }
}

/// Whether text starts with the header block of an e-mail: `Name: value` fields (folded lines
/// allowed) up to a blank line, with a sender and at least two other fields.
fn mail_headers(head: &[u8]) -> bool {
    let mut names = Vec::new();
    for line in head.split(|&b| b == b'\n').take(200) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if names.is_empty() {
                return false;
            }
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return false;
        };
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-') {
            return false;
        }
        names.push(name.to_ascii_lowercase());
    }
    let has = |field: &[u8]| names.iter().any(|n| n == field);
    has(b"from")
        && names.len() >= 3
        && [
            &b"date"[..],
            b"subject",
            b"message-id",
            b"to",
            b"mime-version",
        ]
        .iter()
        .any(|f| has(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_is_told_from_text_by_its_headers() {
        let mail = b"Received: by x\r\nFrom: A <a@b.c>\r\nSubject: Hi\r\n folded\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nBody";
        assert_eq!(detect(mail, None, "x").format, Format::Document("eml"));
        let prose = b"From: the start of a story\nit was a dark night.\n";
        assert_eq!(detect(prose, None, "x.txt").format, Format::Plain);
        let ole = [0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1, 0, 0];
        assert_eq!(detect(&ole, None, "x.doc").format, Format::Binary("ole"));
        assert_eq!(
            detect(b"{\\rtf1\\ansi hi}", None, "x.txt").format,
            Format::Document("rtf")
        );
    }

    #[test]
    fn media_type_names_are_the_wire_names() {
        for media in [
            MediaType::Text,
            MediaType::Image,
            MediaType::Audio,
            MediaType::Video,
        ] {
            assert_eq!(serde_json::to_value(media).unwrap(), media.as_str());
        }
    }

    const PNG: &[u8] = &[
        0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1A, b'\n', 0, 0, 0, 13, b'I', b'H', b'D', b'R',
    ];

    #[test]
    fn mpeg_audio_and_adts_need_a_second_frame_where_the_first_ends() {
        for (bytes, format) in [
            (
                &include_bytes!("../fixtures/audio/speech/speech.mp2")[..],
                "mp2",
            ),
            (
                &include_bytes!("../fixtures/audio/speech/speech.aac")[..],
                "aac",
            ),
            (
                &include_bytes!("../fixtures/audio/speech/speech.caf")[..],
                "caf",
            ),
        ] {
            let detected = detect(&bytes[..SNIFF_BYTES.min(bytes.len())], None, "a.bin");
            assert_eq!(detected.format, Format::Audio(format));
            assert_eq!(detected.format.media_type(), Some(MediaType::Audio));
        }
        // UTF-16LE text starts with FF FE, which looks like a layer I frame header.
        let text: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain(
                "Hello, world. "
                    .repeat(40)
                    .encode_utf16()
                    .flat_map(u16::to_le_bytes),
            )
            .collect();
        assert_eq!(detect(&text, None, "a.txt").format, Format::Plain);
        // One valid frame header alone is not enough.
        let mp2 = include_bytes!("../fixtures/audio/speech/speech.mp2");
        assert_ne!(
            detect(&mp2[..100], None, "a.mp2").format,
            Format::Audio("mp2")
        );
    }

    #[test]
    fn magic_beats_the_extension() {
        let detected = detect(PNG, Some("text/plain"), "notes.txt");
        assert_eq!(detected.format, Format::Image("png"));
        assert_eq!(detected.format.media_type(), Some(MediaType::Image));
    }

    #[test]
    fn random_bytes_named_txt_are_not_text() {
        let noise: Vec<u8> = (0u32..4096)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert_eq!(detect(&noise, None, "notes.txt").format, Format::Unknown);
    }

    #[test]
    fn text_formats_come_from_content_type_then_extension_then_content() {
        assert_eq!(
            detect(b"a,b\n1,2\n", Some("text/csv; charset=utf-8"), "x").format,
            Format::Csv
        );
        assert_eq!(
            detect(b"# Title\n", None, "README.md").format,
            Format::Markdown
        );
        assert_eq!(
            detect(b"<!DOCTYPE html><p>x", None, "page").format,
            Format::Html
        );
        assert_eq!(detect(b"{\"a\": 1}", None, "data").format, Format::Json);
        assert_eq!(
            detect(b"fn main() {}", None, "src/main.rs").format,
            Format::Code("rust")
        );
        assert_eq!(detect(b"just words", None, "notes").format, Format::Plain);
    }

    /// How `sniff_text` looked at a head without a BOM before its zero-byte search: every
    /// byte in turn. The reference for the test below.
    fn sniff_byte_by_byte(head: &[u8]) -> Option<TextHint> {
        if let Some(hint) = sniff_utf16(head) {
            return Some(hint);
        }
        let mut controls = 0usize;
        for &b in head {
            match b {
                0 => return None,
                b'\t' | b'\n' | b'\r' | 0x0C | 0x1B => {}
                0x01..=0x1F | 0x7F => controls += 1,
                _ => {}
            }
        }
        (controls * 100 <= head.len()).then_some(TextHint::Bytes)
    }

    proptest::proptest! {
        #[test]
        fn sniffing_text_agrees_with_looking_at_every_byte(
            text in proptest::collection::vec(
                proptest::prop_oneof![20 => 0x20u8..0x7F, 1 => 0x80u8..=0xFF],
                0..600,
            ),
            // A few bytes of the kinds that decide, put anywhere: about as many as the
            // threshold of one control character in a hundred allows, around it.
            special in proptest::collection::vec(
                (
                    proptest::num::usize::ANY,
                    proptest::sample::select(vec![0u8, 0x01, 0x09, 0x0A, 0x0C, 0x0D, 0x1B, 0x1F, 0x7F]),
                ),
                0..10,
            ),
            utf16 in proptest::bool::ANY,
        ) {
            let mut head = text;
            for (at, byte) in special {
                head.insert(at % (head.len() + 1), byte);
            }
            // Half the cases as UTF-16 would be written: a zero byte beside every other.
            if utf16 {
                head = head.iter().flat_map(|&b| [b, 0]).collect();
            }
            proptest::prop_assert_eq!(sniff_without_bom(&head), sniff_byte_by_byte(&head));
        }
    }

    #[test]
    fn utf16_without_bom_is_text() {
        let le: Vec<u8> = "plain words here"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let be: Vec<u8> = "plain words here"
            .encode_utf16()
            .flat_map(u16::to_be_bytes)
            .collect();
        assert_eq!(
            detect(&le, None, "a.txt").text_hint,
            Some(TextHint::Utf16Le)
        );
        assert_eq!(
            detect(&be, None, "a.txt").text_hint,
            Some(TextHint::Utf16Be)
        );
    }

    #[test]
    fn media_infer_does_not_know_is_told_by_its_signature_whatever_its_name() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        for (path, format) in [
            ("audio/elsewhere/clip.ts", Format::Video("mpegts")),
            ("audio/elsewhere/clip.3gp", Format::Video("3gp")),
            ("audio/elsewhere/clip.3g2", Format::Video("3g2")),
            ("audio/elsewhere/speech.ac3", Format::Audio("ac3")),
            ("audio/elsewhere/speech.eac3", Format::Audio("eac3")),
            ("audio/elsewhere/alaw.aifc", Format::Audio("aiff")),
            ("audio/elsewhere/anim.flc", Format::Video("flic")),
            ("media/images/big.tiff", Format::Image("tiff")),
            ("media/images/gradient.ppm", Format::Image("pnm")),
            ("media/images/plain.pbm", Format::Image("pnm")),
            ("media/images/checker.xbm", Format::Image("xbm")),
            ("media/images/badge.xpm", Format::Image("xpm")),
            ("media/images/logo.svg", Format::Image("svg")),
            ("media/images/chart.svg", Format::Image("svg")),
        ] {
            let bytes = std::fs::read(fixtures.join(path)).unwrap();
            let head = &bytes[..bytes.len().min(SNIFF_BYTES)];
            assert_eq!(detect(head, None, "unnamed").format, format, "{path}");
        }
    }

    #[test]
    fn text_that_starts_like_such_media_stays_text() {
        for text in [
            "P1 2024 roadmap: ship the importer\n",
            "P3 10 20 30 items are left\n",
            "P6 1 2 3 go\n",
            "P5 2024 12 31 notes for the year\n",
            "#define LIMIT 4\n#define OTHER 5\n",
            "#define box_width 4\n#define box_height 5\nint main() {}\n",
            "<?xml version=\"1.0\"?><svgish/>",
            "<svg is the tag we talk about",
        ] {
            let format = detect(text.as_bytes(), None, "notes.txt").format;
            assert_eq!(format.family(), Family::Text, "{text}: {format:?}");
        }
        // A G every 188 bytes in text is not a transport stream when little else is.
        let mut text = "G".to_owned() + &"a".repeat(187);
        text = text.repeat(2) + "G";
        assert_eq!(detect(text.as_bytes(), None, "g.txt").format, Format::Plain);
        // An SVG with a doctype and comments before its root is still one.
        let svg = "<!-- drawn by hand --><!DOCTYPE svg [ <!ENTITY a \"b\"> ]>\n\
                   <svg:svg xmlns:svg=\"http://www.w3.org/2000/svg\"/>";
        assert_eq!(
            detect(svg.as_bytes(), None, "x").format,
            Format::Image("svg")
        );
    }
}
