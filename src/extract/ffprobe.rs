//! Containers symphonia does not read (AVI, FLV, MPEG program streams, WMV/ASF, AMR), described
//! by ffprobe from Debian's ffmpeg package, run as a child process on the object's head: a
//! crash or a hang costs that process, which is killed at its time limit.

use std::collections::BTreeMap;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::process::Command;

use super::Rejection;
use super::ffmpeg::kept;
use crate::error::{ErrorCode, FileError, SkipReason};
use crate::job::MediaInfo;

/// Formats (names of [`crate::detect`]) that ffprobe describes from their head, and the
/// demuxer it is told to use for each (it never picks one itself: no playlist or concat
/// demuxer can be smuggled in).
const DESCRIBED: &[(&str, &str)] = &[
    ("avi", "avi"),
    ("flv", "flv"),
    ("mpeg", "mpeg"),
    ("wmv", "asf"),
    ("amr", "amr"),
];

/// Largest answer read from ffprobe.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// How to run ffprobe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ffprobe {
    /// The program (`ffprobe`, or a path).
    pub program: String,
    /// Longest one file may take.
    pub timeout: Duration,
}

/// Whether ffprobe describes this format here.
#[must_use]
pub fn describes(format: &str) -> bool {
    DESCRIBED.iter().any(|(name, _)| *name == format)
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    streams: Vec<Stream>,
    #[serde(default)]
    format: Option<Container>,
}

#[derive(Deserialize)]
struct Stream {
    codec_type: Option<String>,
    codec_name: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    sample_rate: Option<String>,
    channels: Option<u16>,
    avg_frame_rate: Option<String>,
    r_frame_rate: Option<String>,
    duration: Option<String>,
}

#[derive(Deserialize)]
struct Container {
    format_name: Option<String>,
    duration: Option<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

impl Ffprobe {
    /// What ffprobe says of a `format` file whose first bytes are `head`.
    ///
    /// # Errors
    /// `UNSUPPORTED_FORMAT` (skipped) when ffprobe cannot be run; `LIMIT_EXCEEDED` past the
    /// time limit; `CORRUPT_FILE` when ffprobe finds no stream in it.
    pub async fn describe(&self, head: &[u8], format: &str) -> Result<MediaInfo, Rejection> {
        let demuxer = DESCRIBED
            .iter()
            .find(|(name, _)| *name == format)
            .map_or("avi", |(_, demuxer)| demuxer);
        let spawned = Command::new(&self.program)
            .env_clear()
            .envs(super::child_env())
            .args([
                "-v",
                "error",
                "-print_format",
                "json",
                "-show_format",
                "-show_streams",
            ])
            .args(["-protocol_whitelist", "pipe", "-f", demuxer, "-i", "pipe:0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = spawned.map_err(|err| Rejection::Skip {
            reason: SkipReason::UnsupportedFormat,
            message: format!(
                "{format} files are described by `{}`, which could not be run ({err}); install \
                 ffmpeg or set media.ffprobe",
                self.program
            ),
        })?;
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let write = async move {
            if let Some(mut stdin) = stdin {
                // ffprobe stops reading once it knows enough: a broken pipe is normal.
                let _ = stdin.write_all(head).await;
            }
        };
        // Written and read at once: ffprobe may answer before it has read all it is given. What
        // it says is kept up to a limit, and the rest read and dropped.
        let run = async {
            let ((), stdout, stderr) = tokio::join!(
                write,
                read(stdout, MAX_ANSWER_BYTES + 1),
                read(stderr, 4096)
            );
            let status = child.wait().await?;
            Ok::<_, std::io::Error>(Output {
                status,
                stdout,
                stderr,
            })
        };
        let output = match tokio::time::timeout(self.timeout, run).await {
            Ok(Ok(output)) => output,
            Ok(Err(err)) => {
                return Err(Rejection::Error(FileError::transient(
                    ErrorCode::Internal,
                    format!("running `{}`: {err}", self.program),
                )));
            }
            // Dropping the child kills it.
            Err(_) => {
                return Err(Rejection::Error(FileError::permanent(
                    ErrorCode::LimitExceeded,
                    format!(
                        "ffprobe took longer than media.ffprobe_timeout_secs ({} s)",
                        self.timeout.as_secs()
                    ),
                )));
            }
        };
        let corrupt = |why: String| {
            Rejection::Error(FileError::permanent(
                ErrorCode::CorruptFile,
                format!("{format} file: {why}"),
            ))
        };
        // A program that does not run as ffprobe (a broken install) is not the file's fault.
        if !output.status.success() && !output.stdout.starts_with(b"{") {
            let said = super::said(&output.stderr, 200);
            return Err(Rejection::Error(FileError::transient(
                ErrorCode::Internal,
                format!("`{}` failed ({}): {said}", self.program, output.status),
            )));
        }
        if output.stdout.len() > MAX_ANSWER_BYTES {
            return Err(corrupt("ffprobe's description is too large".to_owned()));
        }
        let answer: Answer = serde_json::from_slice(&output.stdout).map_err(|_| {
            let said = super::said(&output.stderr, 200);
            corrupt(format!("ffprobe cannot read it ({said})"))
        })?;
        media(answer)
            .ok_or_else(|| corrupt("ffprobe finds no audio or video stream in it".to_owned()))
    }
}

/// The first `limit` bytes of a child's output, the rest read and dropped.
async fn read(stream: Option<impl AsyncRead + Unpin>, limit: usize) -> Vec<u8> {
    match stream {
        Some(stream) => kept(stream, limit).await,
        None => Vec::new(),
    }
}

/// The record's `media` from ffprobe's answer; `None` without any audio or video stream.
fn media(answer: Answer) -> Option<MediaInfo> {
    let video = answer
        .streams
        .iter()
        .find(|s| s.codec_type.as_deref() == Some("video"));
    let audio = answer
        .streams
        .iter()
        .find(|s| s.codec_type.as_deref() == Some("audio"));
    if video.is_none() && audio.is_none() {
        return None;
    }
    let seconds = |text: Option<&String>| {
        text.and_then(|t| t.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
    };
    let container = answer.format;
    let duration = seconds(container.as_ref().and_then(|c| c.duration.as_ref()))
        .or_else(|| seconds(video.or(audio).and_then(|s| s.duration.as_ref())));
    let mut info = MediaInfo {
        #[allow(clippy::cast_sign_loss)] // finite and not negative, checked above
        duration_ms: duration.map(|s| (s * 1000.0).round() as u64),
        sample_rate: audio.and_then(|a| a.sample_rate.as_ref()?.parse().ok()),
        channels: audio.and_then(|a| a.channels),
        container: container.as_ref().and_then(|c| c.format_name.clone()),
        ..MediaInfo::default()
    };
    if let Some(container) = container {
        for key in ["title", "artist", "album", "genre", "date", "comment"] {
            let value = container
                .tags
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.trim().chars().take(500).collect::<String>());
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                info.tags.insert(key.to_owned(), value);
            }
        }
    }
    match video {
        Some(video) => {
            info.codec.clone_from(&video.codec_name);
            info.width = video.width;
            info.height = video.height;
            info.frame_rate = rate(video.avg_frame_rate.as_deref())
                .or_else(|| rate(video.r_frame_rate.as_deref()));
            info.audio_codec = audio.and_then(|a| a.codec_name.clone());
        }
        None => info.codec = audio.and_then(|a| a.codec_name.clone()),
    }
    Some(info)
}

/// `30000/1001` → 29.97; `0/0` and nonsense → `None`.
fn rate(text: Option<&str>) -> Option<f64> {
    let (numerator, denominator) = text?.split_once('/')?;
    let (n, d) = (
        numerator.parse::<f64>().ok()?,
        denominator.parse::<f64>().ok()?,
    );
    let rate = n / d;
    (rate.is_finite() && rate > 0.0).then(|| (rate * 1000.0).round() / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_become_media_facts() {
        let answer: Answer = serde_json::from_str(
            r#"{"streams": [
                {"codec_type": "video", "codec_name": "mpeg4", "width": 160, "height": 120,
                 "avg_frame_rate": "30000/1001", "r_frame_rate": "30/1"},
                {"codec_type": "audio", "codec_name": "mp3", "sample_rate": "22050", "channels": 1}],
               "format": {"format_name": "avi", "duration": "9.520000",
                          "tags": {"TITLE": " Harbour ", "encoder": "Lavf"}}}"#,
        )
        .unwrap();
        let info = media(answer).unwrap();
        assert_eq!(info.duration_ms, Some(9520));
        assert_eq!((info.width, info.height), (Some(160), Some(120)));
        assert_eq!(info.frame_rate, Some(29.97));
        assert_eq!(info.codec.as_deref(), Some("mpeg4"));
        assert_eq!(info.audio_codec.as_deref(), Some("mp3"));
        assert_eq!(info.sample_rate, Some(22_050));
        assert_eq!(info.tags.get("title").map(String::as_str), Some("Harbour"));
        assert_eq!(rate(Some("0/0")), None);
        let nothing: Answer =
            serde_json::from_str(r#"{"streams": [{"codec_type": "data"}]}"#).unwrap();
        assert!(media(nothing).is_none());
    }
}
