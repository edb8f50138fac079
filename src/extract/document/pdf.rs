//! PDF: the text layer in reading order, page by page, from Poppler's `pdftotext` run as a child
//! process; with `use_ocr`, pages without text are rendered by `pdftoppm` and recognised by
//! Tesseract. A crash, a hang or a memory blow-up costs the child, never the worker.

use std::time::Instant;

use super::child::{QUOTED_CHARS, run};
use super::{Budget, Builder, Extracted, Input};
use crate::error::{ErrorCode, FileError};

/// Largest rendered page read back for OCR (bytes).
const MAX_PAGE_IMAGE_BYTES: usize = 256 * 1024 * 1024;

/// The text of a PDF: one page per page of the document (form feeds split them).
///
/// # Errors
/// `PASSWORD_PROTECTED` for a PDF that needs a user password; `CORRUPT_FILE` for one Poppler
/// cannot open; `UNSUPPORTED_FORMAT` when pdftotext cannot be run; `LIMIT_EXCEEDED` past the
/// text limit or the deadline.
pub fn extract(input: Input<'_>, budget: &Budget) -> Result<Extracted, FileError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
        FileError::permanent(ErrorCode::Internal, "PDFs are read inside the runtime")
    })?;
    runtime.block_on(read(input, budget))
}

async fn read(input: Input<'_>, budget: &Budget) -> Result<Extracted, FileError> {
    let config = &budget.config;
    let (path, stdin) = input.for_child();
    let args: Vec<std::ffi::OsString> = vec![
        "-enc".into(),
        "UTF-8".into(),
        "-eol".into(),
        "unix".into(),
        path.clone(),
        "-".into(),
    ];
    let limit = budget.max_text_bytes.saturating_add(1);
    let output = run(&config.pdftotext, &args, stdin, limit, budget).await?;
    let said = crate::extract::said(&output.stderr, QUOTED_CHARS);
    if !output.success {
        if said.contains("Incorrect password") {
            return Err(super::password_protected(
                "the PDF is encrypted with a user password",
            ));
        }
        if output.stdout.is_empty() {
            return Err(FileError::permanent(
                ErrorCode::CorruptFile,
                format!("pdftotext could not read the PDF: {said}"),
            ));
        }
        // Poppler read part of a damaged file before giving up: what it read is kept.
        tracing::warn!(stderr = %said, "pdftotext stopped with an error; the text before it is kept");
    }
    if output.stdout.len() >= limit {
        return Err(FileError::permanent(
            ErrorCode::LimitExceeded,
            format!(
                "the PDF's text is over the limit of {} bytes (limits.max_text_bytes)",
                budget.max_text_bytes
            ),
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut pages: Vec<&str> = text.split('\u{c}').collect();
    // Every page ends with a form feed: the piece after the last one is not a page.
    if pages.len() > 1 && pages.last().is_some_and(|p| p.trim().is_empty()) {
        pages.pop();
    }
    let mut out = Builder::new(budget.max_text_bytes);
    let mut recognised = 0;
    let mut blank = 0;
    for (number, page) in pages.iter().enumerate() {
        out.page()?;
        if page.trim().is_empty()
            && let Some(ocr) = &budget.ocr
            && recognised < config.max_ocr_pages
        {
            recognised += 1;
            let image = render(&path, stdin, number + 1, budget).await?;
            let remaining = budget.deadline.saturating_duration_since(Instant::now());
            let ocr = crate::extract::ocr::Ocr {
                timeout: ocr.timeout.min(remaining),
                ..ocr.clone()
            };
            out.push(&ocr.recognise(&image).await?)?;
            continue;
        }
        if page.trim().is_empty() {
            blank += 1;
        }
        out.push(page.trim_end())?;
    }
    let mut extracted = out.finish();
    if blank > 0 {
        let why = if budget.ocr.is_some() {
            format!(
                "over documents.max_ocr_pages ({}) were not recognised",
                config.max_ocr_pages
            )
        } else {
            "use_ocr recognises the text of scanned pages".to_owned()
        };
        extracted.note = Some(format!(
            "{blank} of {} pages have no text layer; {why}",
            pages.len()
        ));
    }
    Ok(extracted)
}

/// The resolution page `page` is rendered at for OCR: `documents.ocr_dpi`, lower for a page so
/// large that it would pass `documents.max_ocr_pixels` (its size from pdfinfo).
async fn resolution(
    path: &std::ffi::OsStr,
    stdin: Option<&[u8]>,
    page: &str,
    budget: &Budget,
) -> Result<f64, FileError> {
    let config = &budget.config;
    let args: Vec<std::ffi::OsString> = vec![
        "-f".into(),
        page.into(),
        "-l".into(),
        page.into(),
        path.to_owned(),
    ];
    let output = run(&config.pdfinfo, &args, stdin, 1 << 20, budget).await?;
    let info = String::from_utf8_lossy(&output.stdout);
    // "Page    2 size: 595.28 x 841.89 pts (A4)"
    let size = info.lines().find_map(|line| {
        let (_, rest) = line.split_once(" size:")?;
        let mut numbers = rest.split_whitespace();
        let width: f64 = numbers.next()?.parse().ok()?;
        let _ = numbers.next()?;
        let height: f64 = numbers.next()?.parse().ok()?;
        (width > 0.0 && height > 0.0).then_some((width, height))
    });
    let Some((width, height)) = size else {
        return Err(FileError::permanent(
            ErrorCode::CorruptFile,
            format!("pdfinfo gives no size for page {page}"),
        ));
    };
    let dpi = f64::from(config.ocr_dpi);
    let pixels = (width / 72.0 * dpi) * (height / 72.0 * dpi);
    let max = config.max_ocr_pixels as f64;
    Ok(if pixels > max {
        dpi * (max / pixels).sqrt()
    } else {
        dpi
    })
}

/// Page `number` (from 1) rendered as a grey PNG for OCR.
async fn render(
    path: &std::ffi::OsStr,
    stdin: Option<&[u8]>,
    number: usize,
    budget: &Budget,
) -> Result<Vec<u8>, FileError> {
    let config = &budget.config;
    let page = number.to_string();
    let dpi = resolution(path, stdin, &page, budget).await?;
    let args: Vec<std::ffi::OsString> = vec![
        "-f".into(),
        page.clone().into(),
        "-l".into(),
        page.into(),
        "-r".into(),
        format!("{dpi:.2}").into(),
        "-gray".into(),
        "-png".into(),
        path.to_owned(),
    ];
    let output = run(&config.pdftoppm, &args, stdin, MAX_PAGE_IMAGE_BYTES, budget).await?;
    if !output.success || output.stdout.is_empty() {
        return Err(FileError::permanent(
            ErrorCode::CorruptFile,
            format!(
                "pdftoppm could not render page {number} for OCR: {}",
                crate::extract::said(&output.stderr, QUOTED_CHARS)
            ),
        ));
    }
    if output.stdout.len() >= MAX_PAGE_IMAGE_BYTES {
        return Err(FileError::permanent(
            ErrorCode::LimitExceeded,
            format!("page {number} renders larger than {MAX_PAGE_IMAGE_BYTES} bytes"),
        ));
    }
    Ok(output.stdout)
}
