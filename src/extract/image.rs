//! Images described from their header alone: format, dimensions and colour type. No pixel is
//! decoded, so a decompression bomb costs no more than a thumbnail.

use std::io::Cursor;

use image::{ImageDecoder, ImageFormat, ImageReader, Limits};

use super::Rejection;
use super::image_size::{self, Size};
use crate::error::{ErrorCode, FileError, SkipReason};
use crate::job::{Exif, MediaInfo};

/// Bytes a decoder may allocate while it reads a header (a GIF's palette, a TIFF's directory).
const HEADER_ALLOCATION: u64 = 16 * 1024 * 1024;

/// Dimensions, colour type and EXIF (GPS only when `gps`) of an image in `format` (a name of
/// [`crate::detect`]), read from `bytes`, which hold at least its header. Images of more than
/// `max_pixels` pixels are refused.
///
/// # Errors
/// `UNSUPPORTED_FORMAT` (skipped) for formats no decoder here reads; `CORRUPT_FILE` for a header
/// that does not parse; `LIMIT_EXCEEDED` for too many pixels.
pub fn describe(
    bytes: &[u8],
    format: &str,
    max_pixels: u64,
    gps: bool,
) -> Result<MediaInfo, Rejection> {
    let corrupt = |why: String| {
        Rejection::Error(FileError::permanent(
            ErrorCode::CorruptFile,
            format!("{format} header: {}", why.trim()),
        ))
    };
    let own = match format {
        "xbm" => Some(image_size::xbm(bytes)),
        "xpm" => Some(image_size::xpm(bytes)),
        "svg" => Some(image_size::svg(bytes)),
        "png" => {
            image_size::check_png(bytes).map_err(corrupt)?;
            None
        }
        _ => None,
    };
    let Size { pixels, color } = match own {
        Some(size) => size.map_err(corrupt)?,
        None => decoded_header(bytes, format)?,
    };
    let Some((width, height)) = pixels else {
        // An SVG that states no size: described without one.
        return Ok(MediaInfo {
            color_type: color,
            ..MediaInfo::default()
        });
    };
    if width == 0 || height == 0 {
        return Err(corrupt(format!("it claims {width}×{height} pixels")));
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(Rejection::Error(FileError::permanent(
            ErrorCode::LimitExceeded,
            format!(
                "the {format} image claims {width}×{height} pixels, over \
                 limits.max_image_pixels ({max_pixels})"
            ),
        )));
    }
    Ok(MediaInfo {
        width: Some(width),
        height: Some(height),
        color_type: color,
        exif: exif(bytes, gps),
        ..MediaInfo::default()
    })
}

/// The size and colour type the image crate's decoder reads from a header; for a TIFF it
/// refuses (a variant it cannot decode), what its first directory says.
fn decoded_header(bytes: &[u8], format: &str) -> Result<Size, Rejection> {
    let Some(image_format) = decodable(format) else {
        return Err(Rejection::Skip {
            reason: SkipReason::UnsupportedFormat,
            message: format!("{format} images are recognised but cannot be read here"),
        });
    };
    let mut limits = Limits::default();
    limits.max_alloc = Some(HEADER_ALLOCATION);
    let header = std::panic::catch_unwind(|| {
        let mut reader = ImageReader::with_format(Cursor::new(bytes), image_format);
        reader.limits(limits);
        reader
            .into_decoder()
            .map(|decoder| (decoder.dimensions(), decoder.original_color_type()))
    });
    let corrupt = |why: String| {
        Rejection::Error(FileError::permanent(
            ErrorCode::CorruptFile,
            format!("{format} header: {}", why.trim()),
        ))
    };
    let ((width, height), color) = match header {
        Ok(Ok(header)) => header,
        Ok(Err(image::ImageError::Limits(err))) if format != "tiff" => {
            return Err(Rejection::Error(FileError::permanent(
                ErrorCode::LimitExceeded,
                format!("{format} header: {}", err.to_string().trim()),
            )));
        }
        // The TIFF decoder refuses variants it cannot decode, and checks more than the size
        // before it gives the size: the first directory says it all the same.
        Ok(Err(_)) | Err(_) if format == "tiff" => {
            return image_size::tiff(bytes).map_err(corrupt);
        }
        Ok(Err(image::ImageError::Unsupported(err))) => {
            return Err(Rejection::Skip {
                reason: SkipReason::UnsupportedFormat,
                message: format!("{format} image: {err}"),
            });
        }
        Ok(Err(err)) => return Err(corrupt(err.to_string())),
        Err(_) => return Err(corrupt("the decoder crashed on it".to_owned())),
    };
    Ok(Size {
        pixels: Some((width, height)),
        color: Some(format!("{color:?}")),
    })
}

/// The EXIF fields that matter, when the image has any. EXIF that does not parse is left out:
/// the image itself is fine.
fn exif(bytes: &[u8], gps: bool) -> Option<Exif> {
    use exif::{In, Tag, Value};
    let parsed = std::panic::catch_unwind(|| {
        exif::Reader::new().read_from_container(&mut std::io::BufReader::new(Cursor::new(bytes)))
    })
    .ok()?
    .ok()?;
    let field = |tag| parsed.get_field(tag, In::PRIMARY);
    let text = |tag| match &field(tag)?.value {
        Value::Ascii(parts) => parts
            .first()
            .map(|part| String::from_utf8_lossy(part).trim().to_owned())
            .filter(|s| !s.is_empty()),
        _ => None,
    };
    let degrees = |tag, reference, negative: &str| {
        let Value::Rational(parts) = &field(tag)?.value else {
            return None;
        };
        let [d, m, s] = parts.as_slice() else {
            return None;
        };
        let value = d.to_f64() + m.to_f64() / 60.0 + s.to_f64() / 3600.0;
        let sign = if text(reference).as_deref() == Some(negative) {
            -1.0
        } else {
            1.0
        };
        value.is_finite().then_some(sign * value)
    };
    let found = Exif {
        orientation: field(Tag::Orientation).and_then(|f| f.value.get_uint(0)),
        // `2024:05:01 10:20:30` → `2024-05-01 10:20:30`.
        captured_at: text(Tag::DateTimeOriginal).map(|t| t.replacen(':', "-", 2)),
        camera_make: text(Tag::Make),
        camera_model: text(Tag::Model),
        latitude: gps
            .then(|| degrees(Tag::GPSLatitude, Tag::GPSLatitudeRef, "S"))
            .flatten(),
        longitude: gps
            .then(|| degrees(Tag::GPSLongitude, Tag::GPSLongitudeRef, "W"))
            .flatten(),
    };
    (found != Exif::default()).then_some(found)
}

/// The decoder for a detected image format, when one is built in.
fn decodable(format: &str) -> Option<ImageFormat> {
    Some(match format {
        "jpeg" => ImageFormat::Jpeg,
        "png" => ImageFormat::Png,
        "gif" => ImageFormat::Gif,
        "webp" => ImageFormat::WebP,
        "bmp" => ImageFormat::Bmp,
        "tiff" => ImageFormat::Tiff,
        "ico" => ImageFormat::Ico,
        "pnm" => ImageFormat::Pnm,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        image::RgbaImage::new(width, height)
            .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
            .unwrap();
        bytes
    }

    fn code(result: Result<MediaInfo, Rejection>) -> String {
        match result {
            Ok(media) => format!("{media:?}"),
            Err(Rejection::Error(err)) => err.code.to_string(),
            Err(Rejection::Skip { reason, .. }) => reason.as_str().to_owned(),
        }
    }

    #[test]
    fn headers_give_dimensions_and_colour_and_bad_ones_their_codes() {
        let media = describe(&png(7, 3), "png", 1000, false).unwrap();
        assert_eq!((media.width, media.height), (Some(7), Some(3)));
        assert_eq!(media.color_type.as_deref(), Some("Rgba8"));
        assert_eq!(
            code(describe(&png(40, 30), "png", 1000, false)),
            "LIMIT_EXCEEDED"
        );
        assert_eq!(
            code(describe(&png(7, 3)[..20], "png", 1000, false)),
            "CORRUPT_FILE"
        );
        assert_eq!(
            code(describe(b"GIF89a", "gif", 1000, false)),
            "CORRUPT_FILE"
        );
        assert_eq!(
            code(describe(&png(7, 3), "psd", 1000, false)),
            "UNSUPPORTED_FORMAT"
        );
    }
}
