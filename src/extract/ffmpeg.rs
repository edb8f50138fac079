//! Audio that symphonia cannot decode — Opus, AC-3 and the like, and the soundtrack of every
//! container it does not read — decoded by ffmpeg from Debian's package as a child process:
//! the object is served to it over HTTP on the loopback interface ([`super::served`]), so it
//! seeks as in a file (an index at the end included), and 16 kHz mono 16-bit samples come out
//! of its stdout, cut into pieces by a [`Cutter`]. A crash or a hang costs that process, which
//! is killed when the file is abandoned.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::{Semaphore, mpsc};

use super::media::{Cutter, Input, Piece, TRANSCRIPTION_RATE};
use super::served::Served;
use crate::error::{ErrorCode, FileError};

/// Formats (names of [`crate::detect`]) ffmpeg and ffprobe are given, and the demuxer each is
/// told to use (they never pick one themselves: no playlist or concat demuxer can be smuggled
/// in, whatever the bytes say).
const DEMUXERS: &[(&str, &str)] = &[
    ("avi", "avi"),
    ("flv", "flv"),
    ("mpeg", "mpeg"),
    ("mpegts", "mpegts"),
    ("wmv", "asf"),
    ("amr", "amr"),
    ("ogg", "ogg"),
    ("opus", "ogg"),
    ("webm", "matroska"),
    ("mkv", "matroska"),
    ("mp4", "mov"),
    ("m4v", "mov"),
    ("m4a", "mov"),
    ("mov", "mov"),
    ("3gp", "mov"),
    ("3g2", "mov"),
    ("ac3", "ac3"),
    ("eac3", "eac3"),
    ("aiff", "aiff"),
    ("flic", "flic"),
    ("wav", "wav"),
    ("flac", "flac"),
    ("mp3", "mp3"),
    ("mp2", "mp3"),
    ("mp1", "mp3"),
    ("aac", "aac"),
    ("caf", "caf"),
];

/// The demuxer ffmpeg and ffprobe are told to use for a `format` file; `None` for formats they
/// are not given.
#[must_use]
pub fn demuxer(format: &str) -> Option<&'static str> {
    DEMUXERS
        .iter()
        .find(|(name, _)| *name == format)
        .map(|(_, demuxer)| *demuxer)
}

/// What ffmpeg says on stderr that is kept for an error message.
const KEPT_STDERR_BYTES: usize = 4096;

/// What ffmpeg decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Milliseconds of audio.
    pub duration_ms: u64,
    /// What ffmpeg said when it stopped with an error after some audio (kept, and logged).
    pub stopped: Option<String>,
}

/// How to run ffmpeg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ffmpeg {
    /// The program (`ffmpeg`, or a path).
    pub program: String,
}

/// Whether ffmpeg decodes this format's audio here.
#[must_use]
pub fn decodes(format: &str) -> bool {
    demuxer(format).is_some()
}

impl Ffmpeg {
    /// Decodes the first audio track of `input`, a `format` file, and sends its pieces to
    /// `pieces` as `cutter` cuts them. Reading ffmpeg's samples holds a slot of `cpu`, released
    /// while a piece waits to be taken.
    ///
    /// # Errors
    /// `UNSUPPORTED_FORMAT` when ffmpeg is not installed; `CORRUPT_FILE` when it decodes
    /// nothing; the source's own errors reading `input`; `LIMIT_EXCEEDED` past the duration
    /// limit; `INTERNAL` (transient) when ffmpeg cannot be started, is killed or its install
    /// does not run, and (permanent) when `pieces` is closed.
    pub async fn decode(
        &self,
        format: &str,
        input: Input,
        mut cutter: Cutter,
        pieces: mpsc::Sender<Piece>,
        cpu: Arc<Semaphore>,
    ) -> Result<Decoded, FileError> {
        let Some(demuxer) = demuxer(format) else {
            return Err(FileError::permanent(
                ErrorCode::UnsupportedFormat,
                format!("ffmpeg is not given {format} files here"),
            ));
        };
        let len = input.size();
        let served = Served::start(input, len).await.map_err(|err| {
            FileError::transient(
                ErrorCode::Internal,
                format!("serving the {format} file to ffmpeg: {err}"),
            )
        })?;
        let mut child = self.command(demuxer, served.url()).spawn().map_err(|err| match err.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => FileError::permanent(
                ErrorCode::UnsupportedFormat,
                format!(
                    "its audio is decoded by `{}`, which could not be run ({err}); install ffmpeg \
                     or set media.ffmpeg",
                    self.program
                ),
            ),
            // Out of processes or memory for a moment: not the file's fault.
            _ => FileError::transient(
                ErrorCode::Internal,
                format!("starting `{}`: {err}", self.program),
            ),
        })?;
        let (Some(mut stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(FileError::transient(
                ErrorCode::Internal,
                format!("`{}` started without its pipes", self.program),
            ));
        };
        let program = &self.program;
        let read = async {
            let mut buffer = vec![0_u8; 64 * 1024];
            let mut cut = Vec::new();
            let mut slot = Arc::clone(&cpu).acquire_owned().await.ok();
            loop {
                // The transcription failing (the pieces' receiver gone) stops decoding at once.
                let read = tokio::select! {
                    read = stdout.read(&mut buffer) => read,
                    () = pieces.closed() => return Err(closed()),
                };
                let n = read.map_err(|err| {
                    FileError::transient(
                        ErrorCode::Internal,
                        format!("reading what `{program}` decodes: {err}"),
                    )
                })?;
                if n == 0 {
                    break;
                }
                cutter.push(&buffer[..n], &mut cut)?;
                for piece in cut.drain(..) {
                    drop(slot.take());
                    pieces.send(piece).await.map_err(|_| closed())?;
                    slot = Arc::clone(&cpu).acquire_owned().await.ok();
                }
            }
            drop(slot);
            let decoded_ms = cutter.finish(&mut cut);
            for piece in cut {
                pieces.send(piece).await.map_err(|_| closed())?;
            }
            Ok(decoded_ms)
        };
        // Returning early drops the child, which kills it.
        let (decoded_ms, said) =
            tokio::try_join!(read, async { Ok(kept(stderr, KEPT_STDERR_BYTES).await) })?;
        let status = child.wait().await.map_err(|err| {
            FileError::transient(ErrorCode::Internal, format!("running `{program}`: {err}"))
        })?;
        // Where reading the object failed, that is the news, not what ffmpeg made of it.
        if let Some(failed) = served.failure() {
            return Err(failed);
        }
        outcome(format, status, decoded_ms, &said)
    }

    /// ffmpeg reading a `demuxer` file from `url` and writing 16 kHz mono 16-bit samples.
    fn command(&self, demuxer: &str, url: &str) -> Command {
        let mut command = Command::new(&self.program);
        command
            .env_clear()
            .envs(super::child_env())
            .args(["-hide_banner", "-nostats", "-loglevel", "error"])
            .args(["-threads", "1", "-filter_threads", "1"])
            .args(["-protocol_whitelist", "http,tcp", "-f", demuxer, "-i", url])
            // The first audio track; gaps in its timestamps (lost or damaged packets) become
            // silence, so times stay true.
            .args(["-map", "0:a:0", "-af", "aresample=async=1", "-ac", "1"])
            .args([
                "-ar",
                &TRANSCRIPTION_RATE.to_string(),
                "-f",
                "s16le",
                "pipe:1",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }
}

/// What ffmpeg said when it ended, for the file's outcome: a failure after some audio keeps
/// that audio; one before any is the file's damage, unless ffmpeg itself is at fault: killed
/// (out of memory), or an install that does not run (a missing library, options it does not
/// take).
fn outcome(
    format: &str,
    status: ExitStatus,
    duration_ms: u64,
    said: &[u8],
) -> Result<Decoded, FileError> {
    let said = super::said(said, 300);
    if status.success() && duration_ms > 0 {
        return Ok(Decoded {
            duration_ms,
            stopped: None,
        });
    }
    if status.signal() == Some(SIGKILL)
        || status.code().is_some_and(|code| code >= 126)
        || broken(&said)
    {
        return Err(FileError::transient(
            ErrorCode::Internal,
            format!("ffmpeg failed ({status}): {said}"),
        ));
    }
    // A crash (SIGSEGV, SIGABRT, ...) is the file's doing, like an error.
    let said = match status.signal() {
        Some(signal) => format!("ffmpeg crashed on it (signal {signal}) {said}"),
        None => said,
    };
    if duration_ms > 0 {
        return Ok(Decoded {
            duration_ms,
            stopped: Some(said),
        });
    }
    let why = if status.success() {
        "ffmpeg decodes no audio from it".to_owned()
    } else {
        format!("ffmpeg cannot decode its audio ({said})")
    };
    Err(FileError::permanent(
        ErrorCode::CorruptFile,
        format!("{format} audio: {why}"),
    ))
}

/// Signal 9: what the kernel's out-of-memory killer sends.
const SIGKILL: i32 = 9;

/// Whether ffmpeg says it cannot run as asked, at the start of one of its lines (after the
/// `[component @ address]` it may put first), so a file's own text cannot pass for it.
fn broken(said: &str) -> bool {
    let markers = [
        "Unrecognized option",
        "Option not found",
        "No such filter",
        "error while loading shared libraries",
    ];
    said.lines().any(|line| {
        let line = match line.strip_prefix('[') {
            Some(tagged) => tagged.split_once("] ").map_or(line, |(_, rest)| rest),
            None => line,
        };
        markers.iter().any(|marker| line.starts_with(marker))
    })
}

/// The first `limit` bytes of a child's `stream`, read to its end so the child never blocks
/// on it.
pub(super) async fn kept(mut stream: impl AsyncRead + Unpin, limit: usize) -> Vec<u8> {
    let (mut kept, mut buffer) = (Vec::new(), [0_u8; 4096]);
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..n.min(room)]);
            }
        }
    }
}

fn closed() -> FileError {
    FileError::permanent(
        ErrorCode::Internal,
        "the transcription of the file stopped while its audio was decoded",
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn how_ffmpeg_ended_decides_the_files_outcome() {
        let exited = |code: i32| ExitStatus::from_raw(code << 8);
        let ok = outcome("ogg", exited(0), 9_400, b"").unwrap();
        assert_eq!((ok.duration_ms, ok.stopped), (9_400, None));
        // Some audio, then an error or a crash: the audio is kept and what happened said.
        let cut = outcome("avi", exited(1), 4_000, b"Invalid data found").unwrap();
        assert_eq!(cut.stopped.as_deref(), Some("Invalid data found"));
        let crashed = outcome("avi", ExitStatus::from_raw(11), 4_000, b"").unwrap();
        assert!(crashed.stopped.unwrap().contains("crashed"));
        // Nothing decoded: the file's damage; a crash included.
        for status in [exited(0), exited(1), ExitStatus::from_raw(6)] {
            let err = outcome("avi", status, 0, b"Invalid data found").unwrap_err();
            assert_eq!((err.code, err.retryable()), (ErrorCode::CorruptFile, false));
        }
        // Killed (out of memory), or an install that does not run: not the file's doing.
        for (status, said) in [
            (ExitStatus::from_raw(9), &b""[..]),
            (exited(8), b"Unrecognized option 'filter_threads'."),
            (
                exited(127),
                b"ffmpeg: error while loading shared libraries: libavdevice.so.59",
            ),
            (
                exited(1),
                b"[AVFilterGraph @ 0x55d0] No such filter: 'aresample'",
            ),
        ] {
            let err = outcome("avi", status, 0, said).unwrap_err();
            assert_eq!(
                (err.code, err.retryable()),
                (ErrorCode::Internal, true),
                "{said:?}"
            );
        }
        // A file's own text quoted in an error is not taken for a broken install.
        let err = outcome("avi", exited(1), 0, b"[avi @ 0x1] tag 'Option not found'").unwrap_err();
        assert_eq!(err.code, ErrorCode::CorruptFile);
    }
}
