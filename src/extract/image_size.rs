//! What the image crate does not read of a header: the size of TIFFs its decoder refuses
//! (BigTIFF, tiled, 12-bit, CIE Lab, old-style JPEG: their size is in the first directory
//! whatever the pixels are), of XBM, XPM and SVG; and PNG header fields that PNG fixes.
//! Nothing here allocates more than the directory entries it reads.

/// A header's size and colour model, as far as it says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Size {
    /// Width and height in pixels; `None` for an SVG that states neither a size nor a
    /// `viewBox`.
    pub pixels: Option<(u32, u32)>,
    /// The colour model and bits per sample (`Rgb8`, `L12`, `Lab8`), when the header says.
    pub color: Option<String>,
}

/// Why a header was refused.
pub type Bad = String;

/// The first directory of a classic TIFF or a BigTIFF.
///
/// # Errors
/// When the header or its first directory is damaged, or not within `bytes`.
pub fn tiff(bytes: &[u8]) -> Result<Size, Bad> {
    let little = match bytes.get(..2) {
        Some(b"II") => true,
        Some(b"MM") => false,
        _ => return Err("it does not start with II or MM".to_owned()),
    };
    let at = |offset: u64, len: usize| -> Result<&[u8], Bad> {
        usize::try_from(offset)
            .ok()
            .and_then(|start| bytes.get(start..start.checked_add(len)?))
            .ok_or_else(|| format!("its directory at byte {offset} is not within the bytes read"))
    };
    let uint = |field: &[u8]| -> u64 {
        let mut value = 0u64;
        if little {
            for &b in field.iter().rev() {
                value = (value << 8) | u64::from(b);
            }
        } else {
            for &b in field {
                value = (value << 8) | u64::from(b);
            }
        }
        value
    };
    let big = match uint(at(2, 2)?) {
        42 => false,
        43 if uint(at(4, 2)?) == 8 => true,
        version => return Err(format!("it claims TIFF version {version}")),
    };
    let (directory, count_len, entry_len, inline) = if big {
        (uint(at(8, 8)?), 8, 20, 8)
    } else {
        (uint(at(4, 4)?), 2, 12, 4)
    };
    let count = uint(at(directory, count_len)?);
    if count == 0 || count > MAX_TIFF_ENTRIES {
        return Err(format!("its first directory claims {count} entries"));
    }
    let (mut width, mut height, mut bits, mut photometric, mut samples) =
        (None, None, None, None, 1);
    for index in 0..count {
        let offset = directory
            .saturating_add(count_len as u64)
            .saturating_add(index * entry_len as u64);
        let entry = at(offset, entry_len)?;
        let (tag, kind) = (uint(&entry[..2]), uint(&entry[2..4]));
        let values = uint(&entry[4..4 + inline]);
        let field = &entry[4 + inline..];
        // The first value of the entry: in the entry when it fits, else where it points.
        let width_of = match kind {
            1 | 6 | 7 => 1,
            3 | 8 => 2,
            4 | 9 => 4,
            16 | 17 => 8,
            _ => continue,
        };
        let first = match field.get(..width_of) {
            Some(value) if values.saturating_mul(width_of as u64) <= inline as u64 => uint(value),
            _ => uint(at(uint(field), width_of)?),
        };
        match tag {
            256 => width = Some(first),
            257 => height = Some(first),
            258 => bits = Some(first),
            262 => photometric = Some(first),
            277 => samples = first,
            _ => {}
        }
    }
    let (Some(width), Some(height)) = (width, height) else {
        return Err("its first directory has no ImageWidth or ImageLength".to_owned());
    };
    let side = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    let model = match (photometric, samples) {
        (Some(0 | 1) | None, 1) => Some("L"),
        (Some(0 | 1) | None, 2) => Some("La"),
        (Some(2), 3) => Some("Rgb"),
        (Some(2), 4) => Some("Rgba"),
        (Some(3), _) => Some("Palette"),
        (Some(5), _) => Some("Cmyk"),
        (Some(6), _) => Some("YCbCr"),
        (Some(8..=10), _) => Some("Lab"),
        _ => None,
    };
    Ok(Size {
        pixels: Some((side(width), side(height))),
        color: model.map(|model| format!("{model}{}", bits.unwrap_or(1))),
    })
}

/// Entries a first directory may have (real files have a few dozen).
const MAX_TIFF_ENTRIES: u64 = 4096;

/// The `#define NAME_width` and `#define NAME_height` lines of an XBM.
///
/// # Errors
/// When either is missing or not a number.
pub fn xbm(bytes: &[u8]) -> Result<Size, Bad> {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]);
    let define = |suffix: &str| {
        text.lines().find_map(|line| {
            let mut words = line.split_ascii_whitespace();
            (words.next()? == "#define" && words.next()?.ends_with(suffix))
                .then(|| words.next()?.parse::<u32>().ok())?
        })
    };
    match (define("_width"), define("_height")) {
        (Some(width), Some(height)) => Ok(Size {
            pixels: Some((width, height)),
            color: Some("L1".to_owned()),
        }),
        _ => Err("it has no numeric _width and _height defines".to_owned()),
    }
}

/// The values line of an XPM (`"width height colours chars-per-pixel"`, the first string of
/// the array; XPM2's second line).
///
/// # Errors
/// When there is no such line.
pub fn xpm(bytes: &[u8]) -> Result<Size, Bad> {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(64 * 1024)]);
    let values = if text.starts_with("! XPM2") {
        text.lines().nth(1)
    } else {
        text.split_once('{')
            .and_then(|(_, array)| array.split('"').nth(1))
    };
    let numbers: Vec<u32> = values
        .unwrap_or_default()
        .split_ascii_whitespace()
        .take(4)
        .map_while(|n| n.parse().ok())
        .collect();
    match numbers.as_slice() {
        [width, height, colours, _] if *colours > 0 => Ok(Size {
            pixels: Some((*width, *height)),
            color: Some("Palette".to_owned()),
        }),
        _ => Err("it has no values line (width, height, colours, characters per pixel)".to_owned()),
    }
}

/// An SVG's size: its root's `width` and `height` in CSS pixels (96 to the inch), else its
/// `viewBox`'s; one of them and the `viewBox`'s proportions give the other.
///
/// # Errors
/// When the XML is malformed before the root, the root is not `svg`, or a length or the
/// `viewBox` is negative or not a number.
pub fn svg(bytes: &[u8]) -> Result<Size, Bad> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(bytes);
    let mut buf = Vec::new();
    let root = loop {
        buf.clear();
        match reader.read_event_into(&mut buf) {
            Ok(Event::Start(start) | Event::Empty(start)) => break start.into_owned(),
            Ok(Event::Eof) => return Err("it has no root element".to_owned()),
            Ok(_) => {}
            Err(err) => return Err(err.to_string()),
        }
    };
    let name = root.local_name();
    if name.as_ref() != "svg" {
        return Err(format!("its root element is {}, not svg", name.as_ref()));
    }
    let attribute = |wanted: &str| {
        root.attributes()
            .with_checks(false)
            .filter_map(Result::ok)
            .find(|a| a.key.local_name().as_ref() == wanted)
            .map(|a| a.value.trim().to_owned())
    };
    let view_box = match attribute("viewBox") {
        Some(text) => {
            let numbers: Vec<f64> = text
                .split(|c: char| c.is_ascii_whitespace() || c == ',')
                .filter(|n| !n.is_empty())
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|_| format!("its viewBox {text:?} is not four numbers"))?;
            match numbers.as_slice() {
                [_, _, w, h] if w.is_finite() && h.is_finite() && *w > 0.0 && *h > 0.0 => {
                    Some((*w, *h))
                }
                _ => return Err(format!("its viewBox {text:?} is not a box")),
            }
        }
        None => None,
    };
    let width = attribute("width")
        .map(|w| length(&w))
        .transpose()?
        .flatten();
    let height = attribute("height")
        .map(|h| length(&h))
        .transpose()?
        .flatten();
    let (width, height) = match (width, height, view_box) {
        (Some(w), Some(h), _) => (w, h),
        (Some(w), None, Some((vw, vh))) => (w, w * vh / vw),
        (None, Some(h), Some((vw, vh))) => (h * vw / vh, h),
        (None, None, Some(box_size)) => box_size,
        _ => return Ok(Size::default()),
    };
    Ok(Size {
        pixels: Some((pixels(width), pixels(height))),
        color: None,
    })
}

/// A CSS length in pixels; `None` for one relative to something an image does not have
/// (percentages, font sizes), or not a number (`auto`, `calc(…)`).
fn length(text: &str) -> Result<Option<f64>, Bad> {
    // The number: digits, a point, a sign, and an exponent (`1e3`) when digits follow it.
    let bytes = text.as_bytes();
    let mut split = 0;
    while let Some(&b) = bytes.get(split) {
        let exponent = matches!(b, b'e' | b'E')
            && bytes
                .get(split + 1)
                .is_some_and(|n| n.is_ascii_digit() || *n == b'-' || *n == b'+');
        if !(b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+') || exponent) {
            break;
        }
        split += if exponent { 2 } else { 1 };
    }
    let (number, unit) = text.split_at(split);
    let Ok(number) = number.trim().parse::<f64>() else {
        return Ok(None);
    };
    if !number.is_finite() || number < 0.0 {
        return Err(format!("its length {text:?} is not a size"));
    }
    let per_unit = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "px" => 1.0,
        "in" => 96.0,
        "cm" => 96.0 / 2.54,
        "mm" => 96.0 / 25.4,
        "q" => 96.0 / 101.6,
        "pt" => 96.0 / 72.0,
        "pc" => 16.0,
        _ => return Ok(None),
    };
    Ok(Some(number * per_unit))
}

/// Whole pixels for `size`, rounded as renderers round (at least one when it is not zero).
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // finite, not negative, clamped
fn pixels(size: f64) -> u32 {
    let whole = size.round().clamp(0.0, f64::from(u32::MAX)) as u32;
    if size > 0.0 { whole.max(1) } else { whole }
}

/// Checks what PNG fixes in its header: IHDR first, 13 bytes long, a colour type and bit
/// depth PNG allows together, compression and filter method 0, interlace 0 or 1.
///
/// # Errors
/// The first field that breaks the rules.
pub fn check_png(bytes: &[u8]) -> Result<(), Bad> {
    let Some(header) = bytes.get(8..29) else {
        return Err("it ends inside its header".to_owned());
    };
    if &header[..8] != b"\0\0\0\x0dIHDR" {
        return Err("its first chunk is not a 13-byte IHDR".to_owned());
    }
    let (depth, colour, compression, filter, interlace) =
        (header[16], header[17], header[18], header[19], header[20]);
    let depths: &[u8] = match colour {
        0 => &[1, 2, 4, 8, 16],
        3 => &[1, 2, 4, 8],
        2 | 4 | 6 => &[8, 16],
        _ => return Err(format!("it claims colour type {colour}")),
    };
    if !depths.contains(&depth) {
        return Err(format!(
            "it claims {depth}-bit samples, which colour type {colour} cannot have"
        ));
    }
    if compression != 0 || filter != 0 {
        return Err(format!(
            "it claims compression method {compression} and filter method {filter} (PNG has \
             only 0)"
        ));
    }
    if interlace > 1 {
        return Err(format!("it claims interlace method {interlace}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TIFF header and one directory of `(tag, type, value)` entries, values inline.
    fn tiff_file(little: bool, big: bool, entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let n16 = |v: u16| {
            if little {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            }
        };
        let n32 = |v: u32| {
            if little {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            }
        };
        let n64 = |v: u64| {
            if little {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            }
        };
        let mut out = if little {
            b"II".to_vec()
        } else {
            b"MM".to_vec()
        };
        if big {
            out.extend(n16(43));
            out.extend(n16(8));
            out.extend(n16(0));
            out.extend(n64(16));
            out.extend(n64(entries.len() as u64));
        } else {
            out.extend(n16(42));
            out.extend(n32(8));
            out.extend(n16(u16::try_from(entries.len()).unwrap()));
        }
        for &(tag, kind, value) in entries {
            out.extend(n16(tag));
            out.extend(n16(kind));
            if big {
                out.extend(n64(1));
            } else {
                out.extend(n32(1));
            }
            let mut field = match kind {
                3 => n16(u16::try_from(value).unwrap()).to_vec(),
                _ => n32(value).to_vec(),
            };
            field.resize(if big { 8 } else { 4 }, 0);
            out.extend(field);
        }
        out
    }

    #[test]
    fn the_first_tiff_directory_gives_the_size_in_either_byte_order_and_width() {
        let entries = [(256, 4, 70_000), (257, 3, 30), (258, 3, 12), (262, 3, 8)];
        for (little, big) in [(true, false), (false, false), (true, true), (false, true)] {
            let size = tiff(&tiff_file(little, big, &entries)).unwrap();
            assert_eq!(size.pixels, Some((70_000, 30)), "{little} {big}");
            assert_eq!(size.color.as_deref(), Some("Lab12"));
        }
        let mut cut = tiff_file(true, false, &entries);
        cut.truncate(20);
        assert!(tiff(&cut).unwrap_err().contains("not within"));
        assert!(tiff(&tiff_file(true, false, &[(256, 4, 5)])).is_err());
        assert!(tiff(b"II\x2b\x00\x04\x00").is_err());
        // A classic TIFF's eight-byte value (LONG8) with a count of none: it does not fit in
        // the entry's four bytes, so it is looked for where they point, not read past them.
        let mut empty_long8 = tiff_file(true, false, &[(256, 4, 5), (257, 3, 30)]);
        empty_long8[12..14].copy_from_slice(&16u16.to_le_bytes());
        empty_long8[14..18].copy_from_slice(&0u32.to_le_bytes());
        let size = tiff(&empty_long8).unwrap();
        assert_eq!(size.pixels.map(|(_, height)| height), Some(30));
    }

    #[test]
    fn svg_sizes_come_from_lengths_else_the_view_box() {
        let size = |svg_text: &str| svg(svg_text.as_bytes()).map(|s| s.pixels);
        assert_eq!(
            size(r#"<?xml version="1.0"?><!-- x --><svg width="120" height="80.4px"/>"#),
            Ok(Some((120, 80)))
        );
        assert_eq!(
            size(r#"<svg xmlns="http://www.w3.org/2000/svg" width="1in" height="72pt"></svg>"#),
            Ok(Some((96, 96)))
        );
        assert_eq!(
            size(r#"<svg width="100%" viewBox="0 0 300,150"/>"#),
            Ok(Some((300, 150)))
        );
        assert_eq!(
            size(r#"<svg width="600" viewBox="0 0 300 150"/>"#),
            Ok(Some((600, 300)))
        );
        assert_eq!(size("<svg/>"), Ok(None));
        assert_eq!(
            size(r#"<svg width="1e2PX" height="auto" viewBox="0 0 50 25"/>"#),
            Ok(Some((100, 50)))
        );
        assert!(size(r#"<svg width="-3" height="4"/>"#).is_err());
        assert!(size(r#"<svg viewBox="0 0 0 4"/>"#).is_err());
        assert!(size("<html/>").is_err());
        assert_eq!(
            size(r#"<svg width="10000000" height="10000000"/>"#),
            Ok(Some((10_000_000, 10_000_000)))
        );
    }

    #[test]
    fn xbm_and_xpm_sizes_come_from_their_source() {
        let bitmap = b"#define box_width 16\n#define box_height 9\nstatic char box_bits[] = {0};";
        assert_eq!(xbm(bitmap).unwrap().pixels, Some((16, 9)));
        assert!(xbm(b"#define box_width x\n").is_err());
        let pixmap = b"/* XPM */\nstatic char *x[] = {\n\"24 12 2 1\",\n\"a c #000\",";
        assert_eq!(xpm(pixmap).unwrap().pixels, Some((24, 12)));
        assert!(xpm(b"/* XPM */\nstatic char *x[] = {\"24\"};").is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_read_or_refused_without_a_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut tiff_like = b"II*\0\x08\0\0\0".to_vec();
            tiff_like.extend_from_slice(&bytes);
            for input in [&bytes, &tiff_like] {
                let _ = (tiff(input), xbm(input), xpm(input), svg(input), check_png(input));
            }
        }
    }

    #[test]
    fn png_headers_break_no_fixed_field() {
        let header = |depth: u8, colour: u8, compression: u8, filter: u8, interlace: u8| {
            let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
            png.extend(7u32.to_be_bytes());
            png.extend(3u32.to_be_bytes());
            png.extend([depth, colour, compression, filter, interlace]);
            png
        };
        assert_eq!(check_png(&header(8, 6, 0, 0, 1)), Ok(()));
        assert!(check_png(&header(8, 6, 1, 0, 0)).is_err());
        assert!(check_png(&header(8, 6, 0, 3, 0)).is_err());
        assert!(check_png(&header(8, 6, 0, 0, 2)).is_err());
        assert!(check_png(&header(4, 2, 0, 0, 0)).is_err());
        assert!(check_png(&header(8, 5, 0, 0, 0)).is_err());
        assert!(check_png(&header(8, 6, 0, 0, 0)[..20]).is_err());
    }
}
