//! Reader processes: a program run on a document with a cleared environment, under the
//! configured memory limit (through prlimit), its output capped, killed at the deadline. A
//! crash, a hang or a memory blow-up costs the child, never the worker.

use std::process::Stdio;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::Budget;
use crate::error::{ErrorCode, FileError};

/// Longest part of a child's error output quoted in a message.
pub const QUOTED_CHARS: usize = 200;

/// What a child process said.
pub struct Output {
    /// It exited with 0 (or was stopped once its output reached the cap).
    pub success: bool,
    /// Its exit code, when it exited (not when it was stopped at the cap).
    pub code: Option<i32>,
    /// Its output, up to the cap.
    pub stdout: Vec<u8>,
    /// Its error output, up to 64 KiB.
    pub stderr: Vec<u8>,
}

/// Runs `program` with `args` in a cleared environment under the memory limit (through
/// prlimit), feeding it `stdin`, keeping up to `max_stdout` bytes of its output (then it is
/// stopped), and killing it at the deadline.
pub async fn run(
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
    let code = status
        .as_ref()
        .and_then(|status| status.as_ref().ok())
        .and_then(std::process::ExitStatus::code);
    let success = match status {
        None => true,
        Some(Ok(status)) if status.success() => true,
        Some(Ok(status)) => {
            use std::os::unix::process::ExitStatusExt as _;
            if let Some(signal) = status.signal() {
                tracing::warn!(program, signal, "a document reader was killed by a signal");
                return Err(killed(program, signal, &stderr, config.child_memory_bytes));
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
        code,
        stdout,
        stderr,
    })
}

/// A reader killed by `signal`: the document's fault either way. One that ran out of memory
/// (an allocation refused under the limit, or SIGKILL) is `LIMIT_EXCEEDED`; any other crash
/// `CORRUPT_FILE`.
fn killed(program: &str, signal: i32, stderr: &[u8], memory: u64) -> FileError {
    const SIGKILL: i32 = 9;
    let said = String::from_utf8_lossy(stderr);
    let first = said
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    let name = std::path::Path::new(program)
        .file_name()
        .map_or_else(|| program.into(), |n| n.to_string_lossy());
    if signal == SIGKILL || said.contains("memory allocation of") {
        return FileError::permanent(
            ErrorCode::LimitExceeded,
            format!(
                "reading the document needs more memory than documents.child_memory_bytes \
                 ({memory}); `{name}` was stopped ({first})"
            ),
        );
    }
    FileError::permanent(
        ErrorCode::CorruptFile,
        format!("`{name}` crashed on the document (signal {signal}): {first}"),
    )
}

/// `UNSUPPORTED_FORMAT`: a reader that cannot be run.
fn cannot_run(program: &str, why: &str) -> FileError {
    FileError::permanent(
        ErrorCode::UnsupportedFormat,
        format!(
            "`{program}` could not be run ({why}); install poppler-utils, or set \
             documents.pdftotext, documents.pdftoppm and documents.pdfinfo"
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
