//! Containers and codecs symphonia does not read (transport and program streams, AVI, FLV,
//! WMV, AC-3, FLIC, HEVC or ProRes video, …), described by ffprobe from Debian's ffmpeg package,
//! run as a child process. The object is served to it over HTTP on the loopback interface
//! ([`super::served`]), so it seeks like it would in a file: an index at the end, or a length
//! read from the last timestamps, costs a few ranged reads, not a download. A crash or a hang
//! costs that process, which is killed at its time limit.

use std::collections::BTreeMap;
use std::process::{Output, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncRead;
use tokio::process::Command;

use super::Rejection;
use super::ffmpeg::{demuxer, kept};
use super::media::Input;
use super::served::Served;
use crate::error::{ErrorCode, FileError, SkipReason};
use crate::job::MediaInfo;

/// Bytes ffprobe may read of a file (when the metadata limit is lower): its default probe size
/// and then some, for what it reads at the end (the last timestamps, an index).
const PROBE_BYTES: u64 = 8 * 1024 * 1024;

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
    bit_rate: Option<String>,
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
    /// What ffprobe says of `input`, a `format` file (a name of [`crate::detect`]). Reading it
    /// stops at `input`'s budget (`LIMIT_EXCEEDED`).
    ///
    /// A duration the bytes cannot hold (a header that claims more than the file has) is
    /// measured from the packets when the file is small enough to read through within the
    /// budget, else left out.
    ///
    /// # Errors
    /// `UNSUPPORTED_FORMAT` (skipped) when ffprobe cannot be run or is not given such files;
    /// `LIMIT_EXCEEDED` past the time limit or the budget; `CORRUPT_FILE` when ffprobe finds no
    /// stream in it.
    pub async fn describe(&self, input: Input, format: &str) -> Result<MediaInfo, Rejection> {
        let Some(demuxer) = demuxer(format) else {
            return Err(Rejection::Skip {
                reason: SkipReason::UnsupportedFormat,
                message: format!("{format} files are recognised but cannot be read here"),
            });
        };
        // ffprobe reads up to its probe size to find the streams, whatever the headers take.
        let budget = input.budget().max(PROBE_BYTES);
        let input = input.with_budget(budget);
        let (len, over_budget) = (input.size(), input.over_budget());
        let served = Served::start(input, len).await.map_err(|err| {
            Rejection::Error(FileError::transient(
                ErrorCode::Internal,
                format!("serving the {format} file to ffprobe: {err}"),
            ))
        })?;
        let run = self
            .run(
                &served,
                demuxer,
                &["-print_format", "json", "-show_format", "-show_streams"],
            )
            .await;
        let over = || over_budget.load(Ordering::Relaxed);
        let corrupt = |why: String| {
            Rejection::Error(FileError::permanent(
                ErrorCode::CorruptFile,
                format!("{format} file: {why}"),
            ))
        };
        let output = match run {
            Ok(output) => output,
            // A read of the source that failed or stalled is the news, not the time it took.
            Err(run) => {
                return Err(match (run, served.failure()) {
                    (Run::TimedOut(_), Some(failed)) => Rejection::Error(failed),
                    (run, _) => run.into_skip(format, &self.program),
                });
            }
        };
        // (Read at most MAX_ANSWER_BYTES + 1 bytes of it.)
        let answer = serde_json::from_slice::<Answer>(&output.stdout).ok();
        if over() && answer.as_ref().is_none_or(|a| a.streams.is_empty()) {
            return Err(Rejection::Error(FileError::permanent(
                ErrorCode::LimitExceeded,
                format!(
                    "ffprobe read {budget} bytes of the {format} file without describing \
                     it (the larger of limits.max_media_metadata_bytes and {PROBE_BYTES}): {}",
                    super::said(&output.stderr, 200)
                ),
            )));
        }
        if let Some(failed) = served.failure().filter(|_| !over()) {
            return Err(Rejection::Error(failed));
        }
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
        let Some(answer) = answer else {
            let said = super::said(&output.stderr, 200);
            return Err(corrupt(format!("ffprobe cannot read it ({said})")));
        };
        let plausible = answer.plausible(len);
        let mut media = media(answer)
            .ok_or_else(|| corrupt("ffprobe finds no audio or video stream in it".to_owned()))?;
        if !plausible {
            let claimed = media.duration_ms.take();
            let stream = if media.sample_rate.is_some() {
                "a:0"
            } else {
                "v:0"
            };
            // Read through only when the whole object is within what may be read.
            if len <= budget && !over() {
                media.duration_ms = self.measure(&served, demuxer, stream).await;
                if let Some(failed) = served.failure() {
                    return Err(Rejection::Error(failed));
                }
                if over() {
                    media.duration_ms = None;
                }
            }
            tracing::debug!(format, ?claimed, measured = ?media.duration_ms, "a header claims more time than the bytes hold");
        }
        Ok(media)
    }

    /// The time from the first packet to the end of the last, read from every packet of
    /// `stream` (`a:0`, `v:0`); `None` when that cannot be read.
    async fn measure(&self, served: &Served, demuxer: &str, stream: &str) -> Option<u64> {
        let output = self
            .run(
                served,
                demuxer,
                &[
                    "-select_streams",
                    stream,
                    "-show_entries",
                    "packet=pts_time,duration_time",
                    "-print_format",
                    "csv=p=0",
                ],
            )
            .await
            .ok()?;
        if !output.status.success() || output.stdout.len() > MAX_ANSWER_BYTES {
            return None;
        }
        let (mut first, mut last) = (f64::INFINITY, f64::NEG_INFINITY);
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let mut fields = line.split(',').map(|f| f.trim().parse::<f64>().ok());
            let (Some(Some(pts)), duration) = (fields.next(), fields.next().flatten()) else {
                continue;
            };
            first = first.min(pts);
            last = last.max(pts + duration.unwrap_or(0.0));
        }
        let seconds = last - first;
        #[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)] // finite, not negative
        (seconds.is_finite() && seconds >= 0.0).then(|| (seconds * 1000.0).round() as u64)
    }

    /// Runs ffprobe on what `served` serves with `args`, its answer kept up to a limit.
    async fn run(&self, served: &Served, demuxer: &str, args: &[&str]) -> Result<Output, Run> {
        let spawned = Command::new(&self.program)
            .env_clear()
            .envs(super::child_env())
            .args(["-v", "error"])
            .args(args)
            .args(["-protocol_whitelist", "http,tcp", "-f", demuxer])
            .args(["-i", served.url()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = spawned.map_err(Run::Spawn)?;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        // What it says is kept up to a limit, and the rest read and dropped.
        let run = async {
            let (stdout, stderr) =
                tokio::join!(read(stdout, MAX_ANSWER_BYTES + 1), read(stderr, 4096));
            let status = child.wait().await?;
            Ok::<_, std::io::Error>(Output {
                status,
                stdout,
                stderr,
            })
        };
        let output = match tokio::time::timeout(self.timeout, run).await {
            Ok(Ok(output)) => output,
            Ok(Err(err)) => return Err(Run::Wait(err)),
            // Dropping the child kills it.
            Err(_) => return Err(Run::TimedOut(self.timeout)),
        };
        Ok(output)
    }
}

/// Why ffprobe gave no answer.
enum Run {
    Spawn(std::io::Error),
    Wait(std::io::Error),
    TimedOut(Duration),
}

impl Run {
    fn into_skip(self, format: &str, program: &str) -> Rejection {
        match self {
            Run::Spawn(err) => Rejection::Skip {
                reason: SkipReason::UnsupportedFormat,
                message: format!(
                    "{format} files are described by `{program}`, which could not be run \
                     ({err}); install ffmpeg or set media.ffprobe"
                ),
            },
            Run::Wait(err) => Rejection::Error(FileError::transient(
                ErrorCode::Internal,
                format!("running `{program}`: {err}"),
            )),
            Run::TimedOut(limit) => Rejection::Error(FileError::permanent(
                ErrorCode::LimitExceeded,
                format!(
                    "ffprobe took longer than media.ffprobe_timeout_secs ({} s)",
                    limit.as_secs()
                ),
            )),
        }
    }
}

impl Answer {
    /// Whether the duration claimed fits in `len` bytes at the streams' bit rates (four times
    /// over, for rates that are nominal or peaks, and a little for headers); without both
    /// figures it is taken as it is.
    fn plausible(&self, len: u64) -> bool {
        let Some(seconds) = self
            .format
            .as_ref()
            .and_then(|c| c.duration.as_ref()?.parse::<f64>().ok())
        else {
            return true;
        };
        let bits: f64 = self
            .streams
            .iter()
            .filter_map(|s| s.bit_rate.as_ref()?.parse::<f64>().ok())
            .sum();
        #[allow(clippy::cast_precision_loss)] // sizes far below 2^52
        let held = (len as f64 * 4.0 + 64.0 * 1024.0) * 8.0;
        bits <= 0.0 || seconds * bits <= held
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
