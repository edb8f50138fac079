//! PDF: the text layer in reading order, page by page, from Poppler's `pdftotext` run as a child
//! process; with `use_ocr`, pages without text are rendered by `pdftoppm` and recognised by
//! Tesseract. A crash, a hang or a memory blow-up costs the child, never the worker.

use std::process::Stdio;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::{Budget, Builder, Extracted, Input};
use crate::error::{ErrorCode, FileError};

/// Longest part of a child's error output quoted in a message.
const QUOTED_CHARS: usize = 200;

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
    let (path, stdin) = match input {
        Input::File(path) => (path.as_os_str().to_owned(), None),
        Input::Bytes(bytes) => ("-".into(), Some(bytes)),
    };
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
            return Err(FileError::permanent(
                ErrorCode::PasswordProtected,
                "the PDF is encrypted with a user password; it cannot be read without it",
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
        out.push(page.trim_end())?;
    }
    Ok(out.finish())
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
    let args: Vec<std::ffi::OsString> = vec![
        "-f".into(),
        page.clone().into(),
        "-l".into(),
        page.into(),
        "-r".into(),
        config.ocr_dpi.to_string().into(),
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

/// What a child process said.
struct Output {
    success: bool,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Runs `program` with `args` in a cleared environment under the memory limit (through
/// prlimit), feeding it `stdin`, keeping up to `max_stdout` bytes of its output (then it is
/// stopped), and killing it at the deadline.
async fn run(
    program: &str,
    args: &[std::ffi::OsString],
    stdin: Option<&[u8]>,
    max_stdout: usize,
    budget: &Budget,
) -> Result<Output, FileError> {
    let config = &budget.config;
    let mut command = command(program, config)?;
    let mut child = command
        .args(args)
        .env_clear()
        .envs(crate::extract::child_env())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| cannot_run(program, &err.to_string()))?;
    let (mut input, stdout, stderr) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let feed = async {
        if let (Some(pipe), Some(bytes)) = (input.as_mut(), stdin) {
            // A child that stops reading early says why on stderr.
            let _ = pipe.write_all(bytes).await;
        }
        drop(input);
    };
    let work = async {
        let ((), stdout, stderr) = tokio::join!(
            feed,
            capped(stdout, max_stdout, false),
            capped(stderr, 64 * 1024, true)
        );
        let status = if stdout.len() >= max_stdout {
            // Enough has been read: the rest is not wanted.
            let _ = child.start_kill();
            None
        } else {
            Some(child.wait().await)
        };
        (status, stdout, stderr)
    };
    let Ok((status, stdout, stderr)) = tokio::time::timeout_at(budget.deadline.into(), work).await
    else {
        // Dropping the child kills it.
        return Err(budget.timed_out());
    };
    let success = match status {
        None => true,
        Some(Ok(status)) if status.success() => true,
        Some(Ok(status)) => {
            use std::os::unix::process::ExitStatusExt as _;
            if let Some(signal) = status.signal() {
                tracing::warn!(program, signal, "a document reader was killed by a signal");
                // SIGKILL or SIGSEGV from a memory limit, or a crash: the file's fault.
                let stderr = crate::extract::said(&stderr, QUOTED_CHARS);
                return Err(FileError::permanent(
                    ErrorCode::CorruptFile,
                    format!(
                        "`{program}` crashed on the document (signal {signal}; memory limit \
                         documents.child_memory_bytes is {}): {stderr}",
                        config.child_memory_bytes
                    ),
                ));
            }
            // prlimit's own failure to start the program (126: not executable, 127: missing).
            if matches!(status.code(), Some(126 | 127)) {
                return Err(cannot_run(
                    program,
                    &crate::extract::said(&stderr, QUOTED_CHARS),
                ));
            }
            false
        }
        Some(Err(err)) => {
            return Err(FileError::transient(
                ErrorCode::Internal,
                format!("waiting for `{program}`: {err}"),
            ));
        }
    };
    Ok(Output {
        success,
        stdout,
        stderr,
    })
}

/// `UNSUPPORTED_FORMAT`: a reader that cannot be run.
fn cannot_run(program: &str, why: &str) -> FileError {
    FileError::permanent(
        ErrorCode::UnsupportedFormat,
        format!(
            "`{program}` could not be run ({why}); install poppler-utils or set \
             documents.pdftotext and documents.pdftoppm"
        ),
    )
}

/// The command that runs `program` under the configured memory limit (through prlimit, when
/// it is found; without it, with a warning).
fn command(program: &str, config: &super::DocumentsConfig) -> Result<Command, FileError> {
    let found = find_program(program).ok_or_else(|| cannot_run(program, "not found"))?;
    let limiter = (!config.prlimit.is_empty())
        .then(|| find_program(&config.prlimit))
        .flatten();
    let Some(prlimit) = limiter else {
        if !config.prlimit.is_empty() {
            tracing::warn!(prlimit = %config.prlimit, "prlimit was not found; document readers run without a memory limit");
        }
        return Ok(Command::new(found));
    };
    let mut command = Command::new(prlimit);
    command
        .arg(format!("--as={}", config.child_memory_bytes))
        .arg("--")
        .arg(found);
    Ok(command)
}

/// Where `program` is: itself when it names a path, else the first match on `PATH`.
fn find_program(program: &str) -> Option<std::path::PathBuf> {
    let executable = |path: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt as _;
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = std::path::PathBuf::from(program);
        return executable(&path).then_some(path);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| executable(path))
}

/// Up to `max` bytes of a pipe; stops reading there.
async fn capped(pipe: Option<impl AsyncRead + Unpin>, max: usize, drain: bool) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = (&mut pipe).take(max as u64).read_to_end(&mut out).await;
        if drain {
            // A child that says more than is kept must not block on a full pipe.
            let _ = tokio::io::copy(&mut pipe, &mut tokio::io::sink()).await;
        }
    }
    out
}
