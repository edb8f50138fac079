//! Turning text bytes into a `String`: byte order marks, declared charsets, UTF-16 without a
//! BOM, and legacy encodings guessed from the bytes.

use encoding_rs::{Encoding, UTF_8, UTF_16BE, UTF_16LE};

use crate::detect::TextHint;
use crate::error::{ErrorCode, FileError};

/// Decodes `bytes` to text.
///
/// `declared` is the charset the object declares (a `charset=` parameter of its content type).
/// A BOM or a declared UTF-8 is a promise: text that breaks it is an `INVALID_ENCODING` error
/// rather than silently repaired. Undeclared text is UTF-8 when valid, else the legacy encoding
/// chardetng finds most likely.
///
/// # Errors
/// `INVALID_ENCODING` when text breaks its declared or BOM-marked encoding.
pub fn decode(bytes: &[u8], hint: TextHint, declared: Option<&str>) -> Result<String, FileError> {
    if let Some(text) = decode_utf32_with_bom(bytes)? {
        return Ok(text);
    }
    if let Some((encoding, bom_len)) = Encoding::for_bom(bytes) {
        return strict(encoding, &bytes[bom_len..], "its byte order mark");
    }
    if let Some(label) = declared {
        match Encoding::for_label(label.trim().as_bytes()) {
            Some(encoding) if encoding == UTF_8 => {
                return strict(encoding, bytes, "its declared charset");
            }
            Some(encoding) => return Ok(lenient(encoding, bytes)),
            // An unknown label is no promise at all: fall through to detection.
            None => {}
        }
    }
    match hint {
        TextHint::Utf16Le => return Ok(lenient(UTF_16LE, bytes)),
        TextHint::Utf16Be => return Ok(lenient(UTF_16BE, bytes)),
        TextHint::Bom | TextHint::Bytes => {}
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Ok(text.to_owned());
    }
    let mut detector = chardetng::EncodingDetector::new(chardetng::Iso2022JpDetection::Allow);
    detector.feed(bytes, true);
    Ok(lenient(
        detector.guess(None, chardetng::Utf8Detection::Allow),
        bytes,
    ))
}

fn strict(encoding: &'static Encoding, bytes: &[u8], promise: &str) -> Result<String, FileError> {
    encoding
        .decode_without_bom_handling_and_without_replacement(bytes)
        .map(std::borrow::Cow::into_owned)
        .ok_or_else(|| {
            let at = if encoding == UTF_8 {
                std::str::from_utf8(bytes).err().map(|e| e.valid_up_to())
            } else {
                None
            };
            let position = at.map(|at| format!(" at byte {at}")).unwrap_or_default();
            FileError::permanent(
                ErrorCode::InvalidEncoding,
                format!(
                    "text is not valid {} as {promise} says{position}",
                    encoding.name()
                ),
            )
        })
}

fn lenient(encoding: &'static Encoding, bytes: &[u8]) -> String {
    encoding.decode_without_bom_handling(bytes).0.into_owned()
}

/// UTF-32 (which encoding_rs leaves out, as the web does), recognised only by its BOM.
fn decode_utf32_with_bom(bytes: &[u8]) -> Result<Option<String>, FileError> {
    let from: fn([u8; 4]) -> u32 = if bytes.starts_with(&[0xFF, 0xFE, 0, 0]) {
        u32::from_le_bytes
    } else if bytes.starts_with(&[0, 0, 0xFE, 0xFF]) {
        u32::from_be_bytes
    } else {
        return Ok(None);
    };
    let body = &bytes[4..];
    let invalid = || {
        FileError::permanent(
            ErrorCode::InvalidEncoding,
            "text is not valid UTF-32 as its byte order mark says",
        )
    };
    if !body.len().is_multiple_of(4) {
        return Err(invalid());
    }
    body.chunks_exact(4)
        .map(|unit| char::from_u32(from([unit[0], unit[1], unit[2], unit[3]])).ok_or_else(invalid))
        .collect::<Result<String, _>>()
        .map(Some)
}

/// Decodes text that arrives in pieces, in the encoding its head decides by the same rules as
/// [`decode`]. Undeclared text that is not UTF-8 in its head is guessed from the head alone.
pub struct StreamDecoder {
    decoder: encoding_rs::Decoder,
    /// What promised the encoding, when text breaking it is an error.
    promise: Option<&'static str>,
    /// Bytes decoded so far, for error positions.
    at: u64,
}

impl StreamDecoder {
    /// A decoder for text starting with `head`; `None` for UTF-32, which is only decoded whole.
    #[must_use]
    pub fn for_head(head: &[u8], hint: TextHint, declared: Option<&str>) -> Option<Self> {
        let make = |encoding: &'static Encoding, promise| StreamDecoder {
            decoder: encoding.new_decoder_with_bom_removal(),
            promise,
            at: 0,
        };
        if head.starts_with(&[0xFF, 0xFE, 0, 0]) || head.starts_with(&[0, 0, 0xFE, 0xFF]) {
            return None;
        }
        if let Some((encoding, _)) = Encoding::for_bom(head) {
            return Some(make(encoding, Some("its byte order mark")));
        }
        match declared.and_then(|label| Encoding::for_label(label.trim().as_bytes())) {
            Some(encoding) if encoding == UTF_8 => {
                return Some(make(encoding, Some("its declared charset")));
            }
            Some(encoding) => return Some(make(encoding, None)),
            None => {}
        }
        match hint {
            TextHint::Utf16Le => return Some(make(UTF_16LE, None)),
            TextHint::Utf16Be => return Some(make(UTF_16BE, None)),
            TextHint::Bom | TextHint::Bytes => {}
        }
        // A head cut inside a character is still UTF-8.
        let utf8 = match std::str::from_utf8(head) {
            Ok(_) => true,
            Err(err) => err.error_len().is_none(),
        };
        if utf8 {
            return Some(make(UTF_8, None));
        }
        let mut detector = chardetng::EncodingDetector::new(chardetng::Iso2022JpDetection::Allow);
        detector.feed(head, false);
        Some(make(
            detector.guess(None, chardetng::Utf8Detection::Allow),
            None,
        ))
    }

    /// Appends the text of `bytes` to `out`; `last` on the final piece.
    ///
    /// # Errors
    /// `INVALID_ENCODING` when text breaks an encoding its BOM or charset promised.
    pub fn push(
        &mut self,
        mut bytes: &[u8],
        last: bool,
        out: &mut String,
    ) -> Result<(), FileError> {
        loop {
            let room = self
                .decoder
                .max_utf8_buffer_length(bytes.len())
                .unwrap_or(bytes.len().saturating_mul(3))
                .max(4);
            out.reserve(room);
            let (read, done) = if let Some(promise) = self.promise {
                let (result, read) = self
                    .decoder
                    .decode_to_string_without_replacement(bytes, out, last);
                match result {
                    encoding_rs::DecoderResult::InputEmpty => (read, true),
                    encoding_rs::DecoderResult::OutputFull => (read, false),
                    encoding_rs::DecoderResult::Malformed(..) => {
                        return Err(FileError::permanent(
                            ErrorCode::InvalidEncoding,
                            format!(
                                "text is not valid {} as {promise} says, near byte {}",
                                self.decoder.encoding().name(),
                                self.at + read as u64
                            ),
                        ));
                    }
                }
            } else {
                let (result, read, _) = self.decoder.decode_to_string(bytes, out, last);
                (read, result == encoding_rs::CoderResult::InputEmpty)
            };
            self.at += read as u64;
            bytes = &bytes[read..];
            if done {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Grüße, café — naïve façade";

    #[test]
    fn boms_decide_the_encoding() {
        let mut utf8 = vec![0xEF, 0xBB, 0xBF];
        utf8.extend_from_slice(SAMPLE.as_bytes());
        assert_eq!(decode(&utf8, TextHint::Bom, None).unwrap(), SAMPLE);
        let mut utf16 = vec![0xFF, 0xFE];
        utf16.extend(SAMPLE.encode_utf16().flat_map(u16::to_le_bytes));
        assert_eq!(decode(&utf16, TextHint::Bom, None).unwrap(), SAMPLE);
        let mut utf32 = vec![0, 0, 0xFE, 0xFF];
        utf32.extend(SAMPLE.chars().flat_map(|c| u32::from(c).to_be_bytes()));
        assert_eq!(decode(&utf32, TextHint::Bom, None).unwrap(), SAMPLE);
    }

    #[test]
    fn invalid_utf8_after_a_bom_is_an_error() {
        let bytes = [0xEF, 0xBB, 0xBF, b'o', b'k', 0xC3, 0x28];
        let err = decode(&bytes, TextHint::Bom, None).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidEncoding);
        assert!(err.message.contains("byte 2"), "{}", err.message);
    }

    #[test]
    fn invalid_utf8_declared_by_charset_is_an_error() {
        let err = decode(b"ok \xff", TextHint::Bytes, Some("utf-8")).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidEncoding);
    }

    #[test]
    fn legacy_encodings_are_detected() {
        let (latin1, _, _) = encoding_rs::WINDOWS_1252.encode(SAMPLE);
        assert_eq!(decode(&latin1, TextHint::Bytes, None).unwrap(), SAMPLE);
        let japanese = "日本語の文章を正しく読み取れるかどうかを確かめるための例文です。";
        let (sjis, _, _) = encoding_rs::SHIFT_JIS.encode(japanese);
        assert_eq!(decode(&sjis, TextHint::Bytes, None).unwrap(), japanese);
    }

    fn stream(bytes: &[u8], piece: usize, declared: Option<&str>) -> Result<String, FileError> {
        let hint = crate::detect::detect(bytes, None, "x.txt")
            .text_hint
            .unwrap_or(TextHint::Bytes);
        let mut decoder = StreamDecoder::for_head(&bytes[..bytes.len().min(64)], hint, declared)
            .ok_or_else(|| FileError::permanent(ErrorCode::Internal, "not streamable"))?;
        let mut out = String::new();
        for part in bytes.chunks(piece) {
            decoder.push(part, false, &mut out)?;
        }
        decoder.push(&[], true, &mut out)?;
        Ok(out)
    }

    #[test]
    fn streamed_text_decodes_like_whole_text_whatever_the_cuts() {
        let mut utf16 = vec![0xFF, 0xFE];
        utf16.extend(SAMPLE.encode_utf16().flat_map(u16::to_le_bytes));
        let (latin1, _, _) = encoding_rs::WINDOWS_1252.encode(SAMPLE);
        let samples: Vec<Vec<u8>> = vec![
            SAMPLE.as_bytes().to_vec(),
            [&[0xEF, 0xBB, 0xBF][..], SAMPLE.as_bytes()].concat(),
            utf16,
            latin1.repeat(3),
        ];
        for bytes in samples {
            let hint = crate::detect::detect(&bytes, None, "x.txt")
                .text_hint
                .unwrap_or(TextHint::Bytes);
            let whole = decode(&bytes, hint, None).unwrap();
            for piece in [1, 2, 3, 7, 1000] {
                assert_eq!(stream(&bytes, piece, None).unwrap(), whole, "piece {piece}");
            }
        }
    }

    #[test]
    fn streamed_text_breaking_its_promise_is_an_error() {
        let mut bytes = [&[0xEF, 0xBB, 0xBF][..], SAMPLE.as_bytes()].concat();
        bytes.extend_from_slice(&[b'a', 0xFF, b'b']);
        let err = stream(&bytes, 5, None).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidEncoding);
        let err = stream(b"abc \xC3(", 2, Some("utf-8")).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidEncoding);
        // Undeclared, the same bytes are guessed as a legacy encoding, as when decoded whole.
        let whole = decode(b"abc \xC3(", TextHint::Bytes, None).unwrap();
        assert_eq!(stream(b"abc \xC3(", 2, None).unwrap(), whole);
    }
}
