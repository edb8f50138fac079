//! Spreadsheets (XLSX, XLSM, XLS, ODS) read by calamine: every sheet, named, one row per line
//! with each cell prefixed by its column's header — as CSV is read — and each row an item.

use std::fmt::Write as _;

use calamine::{Data, Ods, Reader, Xls, Xlsx};

use super::{Budget, Builder, Extracted, Seekable, corrupt};
use crate::error::FileError;

/// The text of a workbook of `format`.
///
/// # Errors
/// `CORRUPT_FILE` when calamine cannot read it; `LIMIT_EXCEEDED` past the text limit or the
/// deadline.
pub fn extract(
    reader: Box<dyn Seekable + '_>,
    format: &str,
    budget: &Budget,
) -> Result<Extracted, FileError> {
    match format {
        "xls" => sheets(
            calamine::open_workbook_from_rs::<Xls<_>, _>(reader)
                .map_err(|err| corrupt(format, err))?,
            format,
            budget,
        ),
        "ods" => sheets(
            calamine::open_workbook_from_rs::<Ods<_>, _>(reader)
                .map_err(|err| corrupt(format, err))?,
            format,
            budget,
        ),
        _ => sheets(
            calamine::open_workbook_from_rs::<Xlsx<_>, _>(reader)
                .map_err(|err| corrupt(format, err))?,
            format,
            budget,
        ),
    }
}

fn sheets<R, RS>(mut workbook: R, format: &str, budget: &Budget) -> Result<Extracted, FileError>
where
    R: Reader<RS>,
    R::Error: std::fmt::Display,
    RS: std::io::Read + std::io::Seek,
{
    let mut out = Builder::new(budget.max_text_bytes);
    for name in workbook.sheet_names() {
        budget.check_time()?;
        let range = workbook
            .worksheet_range(&name)
            .map_err(|err| corrupt(format, format!("sheet {name}: {err}")))?;
        let mut rows = range.rows();
        let Some(header) = rows.next() else {
            continue;
        };
        let header: Vec<String> = header.iter().map(cell_text).collect();
        out.end_paragraph()?;
        out.item()?;
        out.push("Sheet: ")?;
        out.push(&name)?;
        out.push("\n")?;
        let mut first = true;
        for row in rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                let value = cell_text(cell);
                if value.is_empty() {
                    continue;
                }
                if !line.is_empty() {
                    line.push_str("; ");
                }
                match header.get(i).filter(|h| !h.is_empty()) {
                    Some(column) => {
                        let _ = write!(line, "{column}: {value}");
                    }
                    None => line.push_str(&value),
                }
            }
            if line.is_empty() {
                continue;
            }
            // The sheet's name belongs to its first row.
            if !first {
                out.item()?;
            }
            first = false;
            out.push(&line)?;
            out.push("\n")?;
        }
        // A sheet of only a header row says what its columns are.
        if first {
            out.push(&header.join("; "))?;
        }
    }
    Ok(out.finish())
}

/// A cell as text: numbers as written (`100`, not `100.0`), dates in ISO 8601, errors as
/// Excel shows them, text trimmed.
fn cell_text(cell: &Data) -> String {
    match cell {
        Data::DateTime(when) if when.is_datetime() => match when.as_datetime() {
            Some(at) if at.time() == chrono::NaiveTime::MIN => at.format("%Y-%m-%d").to_string(),
            Some(at) => at.format("%Y-%m-%d %H:%M:%S").to_string(),
            None => when.as_f64().to_string(),
        },
        Data::DateTime(duration) => duration.as_f64().to_string(),
        other => other.to_string().trim().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_read_as_people_write_them() {
        assert_eq!(cell_text(&Data::Float(100.0)), "100");
        assert_eq!(cell_text(&Data::Float(0.25)), "0.25");
        assert_eq!(cell_text(&Data::String("  padded ".into())), "padded");
        assert_eq!(cell_text(&Data::Empty), "");
    }
}
