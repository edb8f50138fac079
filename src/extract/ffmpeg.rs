//! Audio that symphonia cannot decode — Opus, AC-3 and the like, and the soundtrack of AVI,
//! FLV, MPEG, WMV and AMR files — decoded by ffmpeg from Debian's package as a child process:
//! the object's bytes stream into its stdin and 16 kHz mono 16-bit samples come out of its
//! stdout, cut into pieces by a [`Cutter`]. A crash or a hang costs that process, which is
//! killed when the file is abandoned.

use std::process::Stdio;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::{Semaphore, mpsc};

use super::media::{Cutter, Piece, TRANSCRIPTION_RATE};
use crate::error::{ErrorCode, FileError};

/// Formats (names of [`crate::detect`]) whose audio ffmpeg decodes from a stream, and the
/// demuxer it is told to use for each (it never picks one itself: no playlist or concat
/// demuxer can be smuggled in).
const DEMUXERS: &[(&str, &str)] = &[
    ("avi", "avi"),
    ("flv", "flv"),
    ("mpeg", "mpeg"),
    ("wmv", "asf"),
    ("amr", "amr"),
    ("ogg", "ogg"),
    ("webm", "matroska"),
    ("mkv", "matroska"),
    ("mp4", "mov"),
    ("m4a", "mov"),
    ("mov", "mov"),
    ("3gp", "mov"),
];

/// What ffmpeg says on stderr that is kept for an error message.
const KEPT_STDERR_BYTES: usize = 4096;

/// How to run ffmpeg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ffmpeg {
    /// The program (`ffmpeg`, or a path).
    pub program: String,
}

/// Whether ffmpeg decodes this format's audio here.
#[must_use]
pub fn decodes(format: &str) -> bool {
    DEMUXERS.iter().any(|(name, _)| *name == format)
}

impl Ffmpeg {
    /// Decodes the first audio track of a `format` file whose bytes `body` brings, and sends
    /// its pieces to `pieces` as `cutter` cuts them. Reading ffmpeg's samples holds a slot of
    /// `cpu`, released while a piece waits to be taken. `fed` counts the bytes given to it.
    /// Returns the milliseconds decoded.
    ///
    /// # Errors
    /// `UNSUPPORTED_FORMAT` when ffmpeg cannot be run, or decodes nothing from an MP4 (whose
    /// index may follow its media); `CORRUPT_FILE` when it decodes nothing or fails; the body's
    /// own errors; `LIMIT_EXCEEDED` past the duration limit; `INTERNAL` when `pieces` is
    /// closed.
    pub async fn decode(
        &self,
        format: &str,
        mut body: BoxStream<'static, Result<Bytes, FileError>>,
        mut cutter: Cutter,
        pieces: mpsc::Sender<Piece>,
        cpu: Arc<Semaphore>,
        fed: &mut u64,
    ) -> Result<u64, FileError> {
        let demuxer = DEMUXERS
            .iter()
            .find(|(name, _)| *name == format)
            .map_or("matroska", |(_, demuxer)| demuxer);
        let mut child = self.command(demuxer).spawn().map_err(|err| {
            FileError::permanent(
                ErrorCode::UnsupportedFormat,
                format!(
                    "its audio is decoded by `{}`, which could not be run ({err}); install ffmpeg \
                     or set media.ffmpeg",
                    self.program
                ),
            )
        })?;
        let (Some(mut stdin), Some(mut stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(FileError::transient(
                ErrorCode::Internal,
                format!("`{}` started without its pipes", self.program),
            ));
        };
        let write = async {
            while let Some(bytes) = body.next().await {
                let bytes = bytes?;
                *fed += bytes.len() as u64;
                // ffmpeg stops reading when it fails: its exit says why.
                if stdin.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            // The end of its input.
            drop(stdin);
            Ok::<_, FileError>(())
        };
        let program = &self.program;
        let read = async {
            let mut buffer = vec![0_u8; 64 * 1024];
            let mut cut = Vec::new();
            let mut slot = Arc::clone(&cpu).acquire_owned().await.ok();
            loop {
                let n = stdout.read(&mut buffer).await.map_err(|err| {
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
        let (decoded_ms, (), said) = tokio::try_join!(read, write, kept(stderr))?;
        let status = child.wait().await.map_err(|err| {
            FileError::transient(ErrorCode::Internal, format!("running `{program}`: {err}"))
        })?;
        if status.success() && decoded_ms > 0 {
            return Ok(decoded_ms);
        }
        Err(failed(format, demuxer, status.success(), &said))
    }

    /// ffmpeg reading a `demuxer` stream from stdin and writing 16 kHz mono 16-bit samples.
    fn command(&self, demuxer: &str) -> Command {
        let mut command = Command::new(&self.program);
        command
            .args(["-hide_banner", "-nostats", "-loglevel", "error"])
            .args(["-threads", "1", "-filter_threads", "1"])
            .args(["-protocol_whitelist", "pipe", "-f", demuxer, "-i", "pipe:0"])
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
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }
}

/// Why ffmpeg decoded nothing, or failed, from what it `said` on stderr.
fn failed(format: &str, demuxer: &str, exited_well: bool, said: &[u8]) -> FileError {
    let said = String::from_utf8_lossy(said);
    let said: String = said.trim().chars().take(300).collect();
    let why = if exited_well {
        "ffmpeg decodes no audio from it".to_owned()
    } else {
        format!("ffmpeg cannot decode its audio ({said})")
    };
    // An MP4 whose index follows its media cannot be read from a stream (its media has
    // gone by when the index is found): the file is not known to be damaged.
    if demuxer == "mov" {
        return FileError::permanent(
            ErrorCode::UnsupportedFormat,
            format!(
                "{format} audio: {why}; an MP4 whose index follows its media cannot be \
                     decoded from a stream"
            ),
        );
    }
    FileError::permanent(ErrorCode::CorruptFile, format!("{format} audio: {why}"))
}

/// The first [`KEPT_STDERR_BYTES`] of `stream`, read to its end so the child never blocks on it.
async fn kept(mut stream: impl AsyncRead + Unpin) -> Result<Vec<u8>, FileError> {
    let (mut kept, mut buffer) = (Vec::new(), [0_u8; 4096]);
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return Ok(kept),
            Ok(n) => {
                let room = KEPT_STDERR_BYTES.saturating_sub(kept.len());
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
