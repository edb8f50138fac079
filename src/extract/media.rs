//! Audio and video files, read by symphonia: what the container says (duration, codecs, sample
//! rate, channels, picture size, tags), and the audio decoded, mixed to mono and resampled to
//! 16 kHz in pieces for transcription.
//!
//! The bytes come from an [`Input`]: the head already read, then any [`Rest`] the pipeline hands
//! it (a local file, or ranged GETs of an S3 object), so describing a large video reads its
//! headers and index, not the whole of it. Everything here is blocking; run it off the runtime.

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use symphonia::core::codecs::CodecParameters;
use symphonia::core::codecs::audio::{AudioCodecParameters, AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as DecodeError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, Track};
use symphonia::core::io::{MediaSource, MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::{MetadataOptions, MetadataRevision, StandardTag};
use symphonia::core::units::{Duration, TimeBase};

use super::Rejection;
use crate::error::{ErrorCode, FileError, SkipReason};
use crate::job::MediaInfo;

/// The sample rate transcription providers are sent.
pub const TRANSCRIPTION_RATE: u32 = 16_000;

/// Longest tag value kept, in characters.
const TAG_CHARS: usize = 500;

/// Containers symphonia reads, by the names [`crate::detect`] gives them.
const READABLE: &[&str] = &[
    "mp3", "mp2", "mp1", "wav", "flac", "ogg", "opus", "aac", "m4a", "aiff", "caf", "mp4", "m4v",
    "mov", "mkv", "webm", "3gp",
];

/// Limits on one media file.
#[derive(Debug, Clone, Copy)]
pub struct MediaLimits {
    /// Longer recordings are refused (`LIMIT_EXCEEDED`), whatever their header claims or
    /// their stream turns out to hold.
    pub max_duration_ms: u64,
    /// Bytes the container's headers, index and tags (cover art included) may take to read.
    pub max_metadata_bytes: u64,
}

/// The rest of an object after its head, read by random access: any `Read + Seek`, which may
/// say what it fetched from its store when that is more than was read (whole blocks of ranged
/// reads).
pub trait Rest: Read + Seek + Send + Sync {
    /// Bytes fetched so far when more than what was read; `None` when only what is read is.
    fn bytes_fetched(&self) -> Option<u64> {
        None
    }
}

impl Rest for std::fs::File {}

impl Rest for io::Cursor<Vec<u8>> {}

/// A media object as symphonia reads it: the head from memory, the rest through random access.
pub struct Input {
    head: Vec<u8>,
    rest: Option<Box<dyn Rest>>,
    len: u64,
    pos: u64,
    /// Where `rest` is, to seek it only when needed.
    rest_pos: Option<u64>,
    /// Bytes still allowed while describing (headers and tags); unlimited once decoding.
    budget: Arc<AtomicU64>,
    over_budget: Arc<AtomicBool>,
    /// Bytes fetched through `rest`.
    fetched: Arc<AtomicU64>,
    /// Set when the file is abandoned: reads fail and decoding stops.
    cancelled: Arc<AtomicBool>,
}

/// The error of reads after the file was abandoned.
#[derive(Debug)]
struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the file was abandoned")
    }
}

impl std::error::Error for Cancelled {}

impl Input {
    /// An object of `len` bytes whose first bytes are `head`; `rest` reads the others (none
    /// when `head` is the whole object).
    #[must_use]
    pub fn new(head: Vec<u8>, rest: Option<Box<dyn Rest>>, len: u64) -> Self {
        let len = if rest.is_some() {
            len.max(head.len() as u64)
        } else {
            head.len() as u64
        };
        Input {
            head,
            rest,
            len,
            pos: 0,
            rest_pos: None,
            budget: Arc::new(AtomicU64::new(u64::MAX)),
            over_budget: Arc::new(AtomicBool::new(false)),
            fetched: Arc::new(AtomicU64::new(0)),
            cancelled: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The object's length in bytes.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.len
    }

    /// Reads fail once `bytes` have been read (and [`Input::over_budget`] says so).
    #[must_use]
    pub fn with_budget(self, bytes: u64) -> Self {
        self.budget.store(bytes, Ordering::Relaxed);
        self
    }

    /// Bytes that may still be read.
    #[must_use]
    pub fn budget(&self) -> u64 {
        self.budget.load(Ordering::Relaxed)
    }

    /// Set once a read went past the budget.
    #[must_use]
    pub fn over_budget(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.over_budget)
    }

    /// Reading and decoding stop at their next step once `flag` is set.
    #[must_use]
    pub fn cancelled_by(mut self, flag: Arc<AtomicBool>) -> Self {
        self.cancelled = flag;
        self
    }

    /// Counts bytes fetched beyond the head (whole blocks, for ranged reads).
    #[must_use]
    pub fn fetched(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.fetched)
    }

    fn read_rest(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(rest) = self.rest.as_mut() else {
            return Ok(0);
        };
        if self.rest_pos != Some(self.pos) {
            rest.seek(SeekFrom::Start(self.pos))?;
        }
        let n = rest.read(buf)?;
        self.rest_pos = Some(self.pos + n as u64);
        // What the source fetched (whole blocks of ranged reads), else what was read.
        match rest.bytes_fetched() {
            Some(fetched) => self.fetched.store(fetched, Ordering::Relaxed),
            None => {
                self.fetched.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        Ok(n)
    }
}

impl Read for Input {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(io::Error::other(Cancelled));
        }
        let left = self.budget.load(Ordering::Relaxed);
        if left == 0 {
            self.over_budget.store(true, Ordering::Relaxed);
            return Err(io::Error::other("over the metadata limit"));
        }
        let want = buf
            .len()
            .min(usize::try_from(self.len - self.pos).unwrap_or(usize::MAX))
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match usize::try_from(self.pos) {
            Ok(at) if at < self.head.len() => {
                let n = want.min(self.head.len() - at);
                buf[..n].copy_from_slice(&self.head[at..at + n]);
                n
            }
            _ => self.read_rest(&mut buf[..want])?,
        };
        if left != u64::MAX {
            self.budget.fetch_sub(n as u64, Ordering::Relaxed);
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Input {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(at) => Some(at),
            SeekFrom::End(delta) => self.len.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.pos.checked_add_signed(delta),
        };
        self.pos = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the file",
            )
        })?;
        Ok(self.pos)
    }
}

impl MediaSource for Input {
    fn is_seekable(&self) -> bool {
        true
    }

    fn byte_len(&self) -> Option<u64> {
        Some(self.len)
    }
}

/// A media file opened and described, ready to have its audio decoded.
pub struct Probed {
    /// What the container says.
    pub media: MediaInfo,
    format: Box<dyn FormatReader>,
    /// The audio track to decode: its id and parameters, when one can be decoded here.
    audio: Option<(u32, AudioCodecParameters, Option<TimeBase>)>,
    /// Why there is no audio to decode, when there is none.
    pub no_audio: Option<String>,
    /// The codec of an audio track that is there but has no decoder here (Opus, AC-3): ffmpeg
    /// may decode it. `None` when a track that decodes here was found.
    pub foreign_codec: Option<String>,
    /// The container has a video track symphonia did not describe (Theora in Ogg, ProRes in
    /// MOV): another reader should.
    pub video_unseen: bool,
    /// The first packet of the audio track, read to know there is one.
    first: Option<symphonia::core::packet::Packet>,
    budget: Arc<AtomicU64>,
    over_budget: Arc<AtomicBool>,
    cancelled: Arc<AtomicBool>,
    format_name: String,
    limits: MediaLimits,
}

impl std::fmt::Debug for Probed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probed")
            .field("media", &self.media)
            .field("no_audio", &self.no_audio)
            .finish_non_exhaustive()
    }
}

/// Whether symphonia reads this container.
#[must_use]
pub fn readable(format: &str) -> bool {
    READABLE.contains(&format)
}

/// Why symphonia did not describe a file.
#[derive(Debug)]
pub struct Refused {
    /// The file's outcome, when no other reader is asked.
    pub rejection: Rejection,
    /// The refusal is symphonia's own limit (a container, codec or structure it does not read,
    /// or a crash), not the file's (cut short, over a limit, unreadable from the source):
    /// another reader may read it.
    pub reader_limit: bool,
}

impl Refused {
    fn file(rejection: Rejection) -> Self {
        Refused {
            rejection,
            reader_limit: false,
        }
    }

    fn reader(rejection: Rejection) -> Self {
        Refused {
            rejection,
            reader_limit: true,
        }
    }
}

/// Opens `input` (a file in `format`, a name of [`crate::detect`]) and describes it.
///
/// # Errors
/// `UNSUPPORTED_FORMAT` (skipped) for containers not read here; `CORRUPT_FILE` for one that does
/// not parse (a panic in the demuxer included); `LIMIT_EXCEEDED` for headers and tags over
/// `max_metadata_bytes` or a duration over `max_duration_ms`; the source's own errors.
pub fn probe(input: Input, format: &str, limits: MediaLimits) -> Result<Probed, Refused> {
    let started = std::time::Instant::now();
    let probed = open(input, format, limits);
    crate::telemetry::timed(crate::telemetry::Stage::Extract, started.elapsed());
    probed
}

/// [`probe`], untimed.
fn open(input: Input, format: &str, limits: MediaLimits) -> Result<Probed, Refused> {
    if !readable(format) {
        return Err(Refused::reader(Rejection::Skip {
            reason: SkipReason::UnsupportedFormat,
            message: format!("{format} files are recognised but cannot be read here"),
        }));
    }
    let mut input = input;
    // What symphonia does not say, read within the metadata limit first.
    input
        .budget
        .store(limits.max_metadata_bytes, Ordering::Relaxed);
    let layout = super::frames::layout(&mut input, format, limits.max_metadata_bytes);
    input.over_budget.store(false, Ordering::Relaxed);
    input.seek(SeekFrom::Start(0)).map_err(|err| {
        Refused::file(Rejection::Error(FileError::permanent(
            ErrorCode::ReadFailed,
            format!("reading the {format} file: {err}"),
        )))
    })?;
    let len = input.len;
    let (budget, over_budget) = (Arc::clone(&input.budget), Arc::clone(&input.over_budget));
    let cancelled = Arc::clone(&input.cancelled);
    budget.store(limits.max_metadata_bytes, Ordering::Relaxed);
    let stream = MediaSourceStream::new(Box::new(input), MediaSourceStreamOptions::default());
    let opened = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut reader = symphonia::default::get_probe().probe(
            &Hint::new(),
            stream,
            FormatOptions::default(),
            MetadataOptions::default(),
        )?;
        let tags = read_tags(reader.as_mut());
        Ok::<_, DecodeError>((reader, tags))
    }));
    let failed = |err| classify(err, format, &over_budget, limits);
    let (reader, tags) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(err)) => return Err(failed(err)),
        Err(_) => return Err(crashed(format)),
    };
    let mut probed = describe(reader, tags, format, limits);
    if probed.media.width.is_some() {
        probed.media.frame_rate = layout.frame_rate;
    }
    probed.video_unseen = layout.video_track && probed.media.width.is_none();
    // Tracks of which symphonia reads none: another reader may read them.
    if probed.media.width.is_none()
        && probed.media.sample_rate.is_none()
        && probed.foreign_codec.is_none()
    {
        return Err(Refused::reader(Rejection::Error(FileError::permanent(
            ErrorCode::CorruptFile,
            format!("the {format} file has no audio or video track that can be read here"),
        ))));
    }
    probed.media.duration_ms = probed
        .media
        .duration_ms
        .map(|duration| held(duration, layout.data, len));
    probed.budget = budget;
    probed.over_budget = over_budget;
    probed.cancelled = cancelled;
    if let Some(rate) = probed.media.sample_rate
        && !PLAUSIBLE_RATES.contains(&rate)
    {
        return Err(Refused::file(Rejection::Error(FileError::permanent(
            ErrorCode::CorruptFile,
            format!("the {format} file claims a sample rate of {rate} Hz"),
        ))));
    }
    check_duration(format, &probed.media, limits)
        .map_err(|err| Refused::file(Rejection::Error(err)))?;
    read_first_packet(&mut probed, format, limits)?;
    Ok(probed)
}

/// Reads the first packet of the audio track, to know there is audio after the header.
fn read_first_packet(
    probed: &mut Probed,
    format: &str,
    limits: MediaLimits,
) -> Result<(), Refused> {
    // A header alone, or a file cut right after it, describes audio that is not there. The
    // packets before the first audio one (a video's) get an allowance of their own.
    probed
        .budget
        .store(limits.max_metadata_bytes, Ordering::Relaxed);
    if let Some((track, _, _)) = probed.audio {
        let first = std::panic::catch_unwind(AssertUnwindSafe(|| {
            for _ in 0..MAX_PACKETS_BEFORE_AUDIO {
                match probed.format.next_packet()? {
                    Some(packet) if packet.track_id == track => return Ok(Some(packet)),
                    Some(_) => {}
                    None => return Ok(None),
                }
            }
            Ok(None)
        }));
        match first {
            Ok(Ok(Some(packet))) => probed.first = Some(packet),
            Ok(Ok(None)) => {
                return Err(Refused::file(Rejection::Error(FileError::permanent(
                    ErrorCode::CorruptFile,
                    format!("the {format} file has a header but no audio after it (truncated?)"),
                ))));
            }
            Ok(Err(err)) => {
                let refused = classify(err, format, &probed.over_budget, limits);
                return Err(match refused.rejection {
                    // Cut inside its first packet.
                    Rejection::Error(err) if err.code == ErrorCode::CorruptFile => {
                        Refused::file(Rejection::Error(FileError::permanent(
                            ErrorCode::CorruptFile,
                            format!(
                                "the {format} file ends inside its first audio packet (truncated?)"
                            ),
                        )))
                    }
                    rejection => Refused {
                        rejection,
                        ..refused
                    },
                });
            }
            Err(_) => return Err(crashed(format)),
        }
    }
    Ok(())
}

/// The time of the samples a file holds, when its header (`duration`) claims `data`'s
/// `(offset, bytes)` and the file is `len` bytes: a header that claims more than is there is
/// believed only for what is.
fn held(duration: u64, data: Option<(u64, u64)>, len: u64) -> u64 {
    let Some((offset, declared)) = data.filter(|(_, declared)| *declared > 0) else {
        return duration;
    };
    let held = len.saturating_sub(offset).min(declared);
    u64::try_from(u128::from(duration) * u128::from(held) / u128::from(declared))
        .unwrap_or(duration)
}

/// Sample rates a real recording has; a header claiming another is damaged or hostile (an
/// absurd rate would size the resampler absurdly).
const PLAUSIBLE_RATES: std::ops::RangeInclusive<u32> = 1_000..=768_000;

/// Packets of other tracks (video) read while looking for the first audio packet.
const MAX_PACKETS_BEFORE_AUDIO: usize = 10_000;

fn describe(
    reader: Box<dyn FormatReader>,
    tags: BTreeMap<String, String>,
    format: &str,
    limits: MediaLimits,
) -> Probed {
    let codecs = symphonia::default::get_codecs();
    let whole = *reader.media_info();
    let mut media = MediaInfo {
        tags,
        container: Some(reader.format_info().short_name.to_owned()),
        ..MediaInfo::default()
    };
    let mut audio = None;
    let mut no_audio = Some("the file has no audio track".to_owned());
    let mut foreign_codec = None;
    let mut duration = None::<u64>;
    let mut longest = |track: &Track| {
        if let Some(ms) = track_ms(track, whole.time_base, whole.duration) {
            duration = Some(duration.map_or(ms, |d| d.max(ms)));
        }
    };
    let mut video_seen = false;
    for track in reader.tracks() {
        match &track.codec_params {
            // The first audio track that decodes here; else the first of all (for ffmpeg).
            Some(CodecParameters::Audio(params))
                if audio.is_none()
                    && (foreign_codec.is_none()
                        || codecs.get_audio_decoder(params.codec).is_some()) =>
            {
                longest(track);
                let name = audio_codec_name(params);
                // Opus always decodes at 48 kHz; what a header says is the rate of the source
                // it was made from.
                media.sample_rate = if name == "opus" {
                    Some(48_000)
                } else {
                    params.sample_rate
                };
                media.channels = params
                    .channels
                    .as_ref()
                    .and_then(|c| u16::try_from(c.count()).ok());
                media.audio_codec = Some(name.to_owned());
                if codecs.get_audio_decoder(params.codec).is_some() {
                    audio = Some((track.id, params.clone(), track.time_base));
                    no_audio = None;
                    foreign_codec = None;
                } else {
                    no_audio = Some(format!("its {name} audio cannot be decoded here"));
                    foreign_codec = Some(name.to_owned());
                }
            }
            Some(CodecParameters::Video(params)) if !video_seen => {
                video_seen = true;
                longest(track);
                media.width = params.width.map(u32::from);
                media.height = params.height.map(u32::from);
                media.codec = Some(video_codec_name(params.codec).to_owned());
            }
            _ => {}
        }
    }
    if !video_seen {
        // An audio file: its codec is the audio's.
        media.codec = media.audio_codec.take();
    }
    media.duration_ms = duration.or_else(|| dur_ms(whole.time_base, whole.duration));
    Probed {
        media,
        format: reader,
        audio,
        no_audio,
        foreign_codec,
        video_unseen: false,
        first: None,
        budget: Arc::new(AtomicU64::new(u64::MAX)),
        over_budget: Arc::new(AtomicBool::new(false)),
        cancelled: Arc::new(AtomicBool::new(false)),
        format_name: format.to_owned(),
        limits,
    }
}

fn dur_ms(time_base: Option<TimeBase>, duration: Option<Duration>) -> Option<u64> {
    u64::try_from(time_base?.calc_duration(duration?)?.as_millis()).ok()
}

fn track_ms(track: &Track, base: Option<TimeBase>, whole: Option<Duration>) -> Option<u64> {
    dur_ms(track.time_base, track.duration)
        .or_else(|| {
            let rate = track
                .codec_params
                .as_ref()?
                .audio()?
                .sample_rate
                .filter(|r| *r > 0)?;
            Some(track.num_frames?.saturating_mul(1000) / u64::from(rate))
        })
        .or_else(|| dur_ms(base, whole))
}

fn audio_codec_name(params: &AudioCodecParameters) -> &'static str {
    use symphonia::core::codecs::audio::well_known as ac;
    if let Some(registered) = symphonia::default::get_codecs().get_audio_decoder(params.codec) {
        return registered.codec.info.short_name;
    }
    match params.codec {
        ac::CODEC_ID_OPUS => "opus",
        ac::CODEC_ID_AC3 => "ac3",
        ac::CODEC_ID_EAC3 => "eac3",
        ac::CODEC_ID_DCA => "dts",
        ac::CODEC_ID_TRUEHD => "truehd",
        ac::CODEC_ID_WMA => "wma",
        ac::CODEC_ID_WAVPACK => "wavpack",
        ac::CODEC_ID_SPEEX => "speex",
        _ => "unknown",
    }
}

fn video_codec_name(codec: symphonia::core::codecs::video::VideoCodecId) -> &'static str {
    use symphonia::core::codecs::video::well_known as vc;
    match codec {
        vc::CODEC_ID_H264 => "h264",
        vc::CODEC_ID_HEVC => "hevc",
        vc::CODEC_ID_VP8 => "vp8",
        vc::CODEC_ID_VP9 => "vp9",
        vc::CODEC_ID_AV1 => "av1",
        vc::CODEC_ID_MPEG4 => "mpeg4",
        vc::CODEC_ID_MJPEG => "mjpeg",
        _ => "unknown",
    }
}

/// Title, artist, album and the like, from every tag block the file has (later ones win).
fn read_tags(reader: &mut dyn FormatReader) -> BTreeMap<String, String> {
    let mut tags = BTreeMap::new();
    let mut metadata = reader.metadata();
    while let Some(revision) = metadata.pop() {
        apply(&revision, &mut tags);
    }
    if let Some(revision) = metadata.current() {
        apply(revision, &mut tags);
    }
    tags
}

fn apply(revision: &MetadataRevision, tags: &mut BTreeMap<String, String>) {
    let all = revision.media.tags.iter().chain(
        revision
            .per_track
            .iter()
            .flat_map(|track| track.metadata.tags.iter()),
    );
    for tag in all {
        let (key, value) = match &tag.std {
            Some(StandardTag::TrackTitle(v)) => ("title", v.to_string()),
            Some(StandardTag::Artist(v)) => ("artist", v.to_string()),
            Some(StandardTag::Album(v)) => ("album", v.to_string()),
            Some(StandardTag::AlbumArtist(v)) => ("album_artist", v.to_string()),
            Some(StandardTag::Genre(v)) => ("genre", v.to_string()),
            Some(StandardTag::Comment(v)) => ("comment", v.to_string()),
            Some(StandardTag::Composer(v)) => ("composer", v.to_string()),
            Some(StandardTag::RecordingDate(v) | StandardTag::ReleaseDate(v)) => {
                ("date", v.to_string())
            }
            Some(StandardTag::RecordingYear(y) | StandardTag::ReleaseYear(y)) => {
                if tags.contains_key("date") {
                    continue;
                }
                ("date", y.to_string())
            }
            Some(StandardTag::TrackNumber(n)) => ("track", n.to_string()),
            _ => continue,
        };
        let value: String = value
            .chars()
            .filter(|c| !c.is_control())
            .take(TAG_CHARS)
            .collect();
        let value = value.trim();
        if !value.is_empty() {
            tags.insert(key.to_owned(), value.to_owned());
        }
    }
}

/// A symphonia error as a file's outcome.
fn classify(
    err: DecodeError,
    format: &str,
    over_budget: &AtomicBool,
    limits: MediaLimits,
) -> Refused {
    if over_budget.load(Ordering::Relaxed) {
        return Refused::file(Rejection::Error(FileError::permanent(
            ErrorCode::LimitExceeded,
            format!(
                "the {format} file's headers and tags (cover art included) or what comes before its first audio packet, take more than \
                 limits.max_media_metadata_bytes ({})",
                limits.max_metadata_bytes
            ),
        )));
    }
    let corrupt = |why: String| {
        Rejection::Error(FileError::permanent(
            ErrorCode::CorruptFile,
            format!("{format} file: {why}"),
        ))
    };
    let refused = match err {
        DecodeError::IoError(err) => {
            // The source's own failure (a ranged read that failed) keeps its code.
            if let Some(source) = err.get_ref().and_then(|e| e.downcast_ref::<FileError>()) {
                return Refused::file(Rejection::Error(source.clone()));
            }
            // (A demuxer that finds no stream it knows may read to the end looking for one:
            // another reader may know it.)
            if err.kind() == io::ErrorKind::UnexpectedEof {
                corrupt("it ends before its headers do (truncated?)".to_owned())
            } else {
                corrupt(err.to_string())
            }
        }
        DecodeError::Unsupported(why) if why.contains("no suitable format reader") => {
            corrupt("no valid container was found in it".to_owned())
        }
        // Of a file whose magic said it is this format, only a codec or feature the demuxer
        // lacks is unsupported; anything else (a missing index, no frames) is damage.
        DecodeError::Unsupported(why)
            if !(why.contains("codec")
                || why.contains("unsupported")
                || why.contains("complex")) =>
        {
            corrupt(why.to_owned())
        }
        DecodeError::Unsupported(why) => Rejection::Skip {
            reason: SkipReason::UnsupportedFormat,
            message: format!("{format} file: {why}"),
        },
        DecodeError::LimitError(why) => {
            return Refused::file(Rejection::Error(FileError::permanent(
                ErrorCode::LimitExceeded,
                format!("{format} file: {why}"),
            )));
        }
        other => corrupt(other.to_string()),
    };
    // What the demuxer refused, or could not make sense of, another reader may read.
    Refused::reader(refused)
}

fn crashed(format: &str) -> Refused {
    Refused::reader(Rejection::Error(FileError::permanent(
        ErrorCode::CorruptFile,
        format!("the {format} file crashed the demuxer; it was not read"),
    )))
}

/// `LIMIT_EXCEEDED` when what `media` says of a `format` file lasts over `max_duration_ms`.
///
/// # Errors
/// That one.
pub fn check_duration(
    format: &str,
    media: &MediaInfo,
    limits: MediaLimits,
) -> Result<(), FileError> {
    match media.duration_ms.filter(|ms| *ms > limits.max_duration_ms) {
        Some(ms) => Err(too_long(format, ms, limits)),
        None => Ok(()),
    }
}

/// `LIMIT_EXCEEDED` for a `format` file lasting `duration_ms`, over `max_duration_ms`.
#[must_use]
pub fn too_long(format: &str, duration_ms: u64, limits: MediaLimits) -> FileError {
    FileError::permanent(
        ErrorCode::LimitExceeded,
        format!(
            "the {format} file lasts {} s, over limits.max_media_duration_secs ({})",
            duration_ms / 1000,
            limits.max_duration_ms / 1000
        ),
    )
}

/// A stretch of a recording at 16 kHz mono, for one transcription request.
#[derive(Debug, Clone)]
pub struct Piece {
    /// Where it starts in the recording.
    pub start_ms: u64,
    /// Signed 16-bit samples at [`TRANSCRIPTION_RATE`].
    pub samples: Vec<i16>,
}

/// What decoding found.
#[derive(Debug, Clone, Copy, Default)]
pub struct Decoded {
    /// Milliseconds of audio decoded.
    pub duration_ms: u64,
    /// Packets that did not decode and were skipped.
    pub bad_packets: u64,
}

impl Probed {
    /// Whether the file has audio that can be decoded here.
    #[must_use]
    pub fn has_audio(&self) -> bool {
        self.audio.is_some()
    }

    /// Decodes the audio, mixes it to mono, resamples it to 16 kHz and hands it to `piece` in
    /// pieces of at most `max_piece_ms`, each cut at the quietest moment of its last quarter so
    /// words are not split. `piece` returning an error stops decoding.
    ///
    /// # Errors
    /// `CORRUPT_FILE` when nothing decodes (or the decoder crashes), `LIMIT_EXCEEDED` when the
    /// stream runs past `max_duration_ms`, or `piece`'s error.
    pub fn decode(
        mut self,
        max_piece_ms: u64,
        mut piece: impl FnMut(Piece) -> Result<(), FileError>,
    ) -> Result<Decoded, FileError> {
        self.budget.store(u64::MAX, Ordering::Relaxed);
        let format = self.format_name.clone();
        let limits = self.limits;
        let corrupt = |why: String| {
            FileError::permanent(ErrorCode::CorruptFile, format!("{format} audio: {why}"))
        };
        let Some((track, params, time_base)) = self.audio.clone() else {
            return Err(corrupt("there is no audio track to decode".to_owned()));
        };
        let max_piece = piece_samples(max_piece_ms);
        let cancelled = Arc::clone(&self.cancelled);
        let mut feed = Feed {
            resampler: To16k::default(),
            splitter: Splitter {
                pending: Vec::new(),
                start: 0,
                max_piece,
            },
            position: 0.0,
            format: &format,
            limits,
            piece: &mut piece,
        };
        let mut report = Decoded::default();
        let mut decoded_any = false;
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<(), FileError> {
            let options = AudioDecoderOptions::default();
            let mut decoder: Box<dyn AudioDecoder> = symphonia::default::get_codecs()
                .make_audio_decoder(&params, &options)
                .map_err(|err| decoding_failed(&format, err))?;
            let (mut planes, mut mono) = (Vec::<Vec<f32>>::new(), Vec::<f32>::new());
            let mut first = self.first.take();
            let mut origin = None::<f64>;
            loop {
                if cancelled.load(Ordering::Relaxed) {
                    return Err(abandoned());
                }
                let next = match first.take() {
                    Some(packet) => Ok(Some(packet)),
                    None => self.format.next_packet(),
                };
                let packet = match next {
                    Ok(Some(packet)) if packet.track_id == track => packet,
                    Ok(Some(_)) => continue,
                    // The end, or a chained Ogg stream whose next part is not decoded.
                    Ok(None) | Err(DecodeError::ResetRequired) => break,
                    Err(DecodeError::IoError(err))
                        if err.kind() == io::ErrorKind::UnexpectedEof =>
                    {
                        break;
                    }
                    Err(err) => return Err(decoding_failed(&format, err)),
                };
                let rate = match decoder.decode(&packet) {
                    Ok(buffer) if buffer.frames() > 0 && buffer.num_planes() > 0 => {
                        buffer.copy_to_vecs_planar::<f32>(&mut planes);
                        buffer.spec().rate()
                    }
                    Ok(_) => continue,
                    // A damaged packet is skipped; the next one's timestamp keeps the times
                    // of what follows true.
                    Err(DecodeError::DecodeError(_) | DecodeError::IoError(_)) => {
                        report.bad_packets += 1;
                        continue;
                    }
                    Err(err) => return Err(decoding_failed(&format, err)),
                };
                mono.clear();
                downmix(&planes, &mut mono);
                decoded_any = true;
                // Times count from the first packet decoded (Ogg and Matroska timestamps can
                // start anywhere).
                if let Some(at) = time_base.and_then(|base| base.calc_time(packet.pts)) {
                    let at = at.as_secs_f64();
                    let origin = *origin.get_or_insert(at);
                    feed.skip_to(at - origin)?;
                }
                feed.push(rate, &mono)?;
            }
            report.duration_ms = feed.finish()?;
            Ok(())
        }));
        match run {
            Ok(Ok(())) if decoded_any => Ok(report),
            Ok(Ok(())) => Err(corrupt(format!(
                "no packet decoded ({} were damaged)",
                report.bad_packets
            ))),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(corrupt("the decoder crashed on it".to_owned())),
        }
    }
}

/// Samples in a piece of at most `max_piece_ms` (at least a second).
fn piece_samples(max_piece_ms: u64) -> usize {
    let per_ms = u64::from(TRANSCRIPTION_RATE) / 1000;
    usize::try_from(max_piece_ms.max(1000).saturating_mul(per_ms)).unwrap_or(usize::MAX)
}

/// Audio decoded elsewhere (by ffmpeg) at 16 kHz mono, cut into pieces the way
/// [`Probed::decode`] cuts its own, within `max_duration_ms`.
pub struct Cutter {
    splitter: Splitter,
    format: String,
    limits: MediaLimits,
    /// The first byte of a sample split between two reads.
    odd: Option<u8>,
}

impl Cutter {
    /// Cuts a `format` file's audio into pieces of at most `max_piece_ms`.
    #[must_use]
    pub fn new(format: &str, limits: MediaLimits, max_piece_ms: u64) -> Self {
        Self {
            splitter: Splitter {
                pending: Vec::new(),
                start: 0,
                max_piece: piece_samples(max_piece_ms),
            },
            format: format.to_owned(),
            limits,
            odd: None,
        }
    }

    /// Takes signed 16-bit little-endian samples at [`TRANSCRIPTION_RATE`]; full pieces go to
    /// `out`.
    ///
    /// # Errors
    /// `LIMIT_EXCEEDED` once the audio runs past `max_duration_ms`.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<Piece>) -> Result<(), FileError> {
        let scale = 1.0 / f32::from(i16::MAX);
        if let (Some(low), Some((&high, rest))) = (self.odd, bytes.split_first()) {
            let sample = i16::from_le_bytes([low, high]);
            self.splitter.pending.push(f32::from(sample) * scale);
            self.odd = None;
            bytes = rest;
        }
        let samples = bytes.chunks_exact(2);
        if let [last] = samples.remainder() {
            self.odd = Some(*last);
        }
        self.splitter
            .pending
            .extend(samples.map(|pair| f32::from(i16::from_le_bytes([pair[0], pair[1]])) * scale));
        self.splitter.within(&self.format, self.limits)?;
        self.splitter.emit_full(&mut |piece| {
            out.push(piece);
            Ok(())
        })
    }

    /// The end of the audio: the last pieces go to `out`; returns the duration cut.
    pub fn finish(mut self, out: &mut Vec<Piece>) -> u64 {
        let duration_ms = self.splitter.decoded_ms();
        let mut keep = |piece| {
            out.push(piece);
            Ok(())
        };
        // Keeping a piece cannot fail.
        let _ = self
            .splitter
            .emit_full(&mut keep)
            .and_then(|()| self.splitter.emit_rest(&mut keep));
        duration_ms
    }
}

/// A demuxer or decoder error while decoding: the source's own failure keeps its code; a
/// feature the decoder lacks is `UNSUPPORTED_FORMAT` (the file keeps its metadata record); a
/// decoder limit is `LIMIT_EXCEEDED`; anything else is damage.
fn decoding_failed(format: &str, err: DecodeError) -> FileError {
    match err {
        DecodeError::IoError(err) => {
            if let Some(source) = err.get_ref().and_then(|e| e.downcast_ref::<FileError>()) {
                return source.clone();
            }
            if err
                .get_ref()
                .is_some_and(<dyn std::error::Error + Send + Sync>::is::<Cancelled>)
            {
                return abandoned();
            }
            FileError::permanent(ErrorCode::CorruptFile, format!("{format} audio: {err}"))
        }
        DecodeError::Unsupported(why) => FileError::permanent(
            ErrorCode::UnsupportedFormat,
            format!("{format} audio: {why}"),
        ),
        DecodeError::LimitError(why) => {
            FileError::permanent(ErrorCode::LimitExceeded, format!("{format} audio: {why}"))
        }
        other => FileError::permanent(ErrorCode::CorruptFile, format!("{format} audio: {other}")),
    }
}

fn abandoned() -> FileError {
    FileError::permanent(
        ErrorCode::LimitExceeded,
        "the file was abandoned while decoding",
    )
}

/// The mean of the channels.
fn downmix(planes: &[Vec<f32>], mono: &mut Vec<f32>) {
    let Some(first) = planes.first() else {
        return;
    };
    mono.extend_from_slice(first);
    for plane in &planes[1..] {
        for (m, x) in mono.iter_mut().zip(plane) {
            *m += *x;
        }
    }
    if planes.len() > 1 {
        let scale = 1.0 / planes.len() as f32;
        for m in mono.iter_mut() {
            *m *= scale;
        }
    }
}

/// Decoded audio on its way to pieces: resampled to 16 kHz, kept in time, cut at quiet moments.
struct Feed<'a, P> {
    resampler: To16k,
    splitter: Splitter,
    /// Where the audio pushed so far ends, in 16 kHz samples.
    position: f64,
    format: &'a str,
    limits: MediaLimits,
    piece: P,
}

impl<P: FnMut(Piece) -> Result<(), FileError>> Feed<'_, P> {
    fn push(&mut self, rate: u32, mono: &[f32]) -> Result<(), FileError> {
        self.resampler
            .push(rate, mono, &mut self.splitter.pending)
            .map_err(|err| self.resampling(&err))?;
        self.position += mono.len() as f64 * f64::from(TRANSCRIPTION_RATE) / f64::from(rate);
        self.splitter.within(self.format, self.limits)?;
        self.splitter.emit_full(&mut self.piece)
    }

    /// Moves on to `seconds` after the first packet when the audio so far ends more than
    /// 100 ms before it (packets lost to damage): what is pending goes out as it is, and the
    /// next piece starts at its true time. Nothing is sent for the gap.
    #[allow(clippy::cast_sign_loss)] // positive, checked
    fn skip_to(&mut self, seconds: f64) -> Result<(), FileError> {
        let at = seconds * f64::from(TRANSCRIPTION_RATE);
        // (NaN, from a hostile timestamp, is no gap either.)
        if at.is_nan() || at - self.position < QUIET_WINDOW as f64 {
            return Ok(());
        }
        let until_ms = (seconds * 1000.0) as u64;
        if until_ms > self.limits.max_duration_ms {
            return Err(too_long(self.format, until_ms, self.limits));
        }
        self.resampler
            .flush(&mut self.splitter.pending)
            .map_err(|err| self.resampling(&err))?;
        self.splitter.emit_full(&mut self.piece)?;
        self.splitter.emit_rest(&mut self.piece)?;
        self.splitter.start = at as u64;
        self.position = at;
        Ok(())
    }

    /// The end of the stream: the last pieces out; returns the duration decoded.
    fn finish(&mut self) -> Result<u64, FileError> {
        self.resampler
            .flush(&mut self.splitter.pending)
            .map_err(|err| self.resampling(&err))?;
        let duration_ms = self.splitter.decoded_ms();
        self.splitter.emit_full(&mut self.piece)?;
        self.splitter.emit_rest(&mut self.piece)?;
        Ok(duration_ms)
    }

    fn resampling(&self, err: &str) -> FileError {
        FileError::permanent(
            ErrorCode::CorruptFile,
            format!("{} audio: resampling: {err}", self.format),
        )
    }
}

/// Cuts 16 kHz audio into pieces at quiet moments.
struct Splitter {
    /// Resampled audio not yet handed on.
    pending: Vec<f32>,
    /// Samples handed on so far.
    start: u64,
    max_piece: usize,
}

/// Window over which loudness is measured when looking for a quiet place to cut (100 ms).
const QUIET_WINDOW: usize = TRANSCRIPTION_RATE as usize / 10;

impl Splitter {
    fn decoded_ms(&self) -> u64 {
        (self.start + self.pending.len() as u64) * 1000 / u64::from(TRANSCRIPTION_RATE)
    }

    /// `LIMIT_EXCEEDED` once the audio handed in runs past `max_duration_ms`.
    fn within(&self, format: &str, limits: MediaLimits) -> Result<(), FileError> {
        let decoded_ms = self.decoded_ms();
        if decoded_ms > limits.max_duration_ms {
            return Err(too_long(format, decoded_ms, limits));
        }
        Ok(())
    }

    fn emit_full(
        &mut self,
        piece: &mut impl FnMut(Piece) -> Result<(), FileError>,
    ) -> Result<(), FileError> {
        while self.pending.len() >= self.max_piece {
            let cut = quietest_cut(&self.pending[..self.max_piece]);
            self.emit(cut, piece)?;
        }
        Ok(())
    }

    fn emit_rest(
        &mut self,
        piece: &mut impl FnMut(Piece) -> Result<(), FileError>,
    ) -> Result<(), FileError> {
        // Less than a tenth of a second holds no word: dropped, its time still counted.
        if self.pending.len() >= QUIET_WINDOW {
            self.emit(self.pending.len(), piece)?;
        } else {
            self.start += self.pending.len() as u64;
            self.pending.clear();
        }
        Ok(())
    }

    fn emit(
        &mut self,
        cut: usize,
        piece: &mut impl FnMut(Piece) -> Result<(), FileError>,
    ) -> Result<(), FileError> {
        let samples: Vec<i16> = self
            .pending
            .drain(..cut)
            .map(|s| (s.clamp(-1.0, 1.0) * f32::from(i16::MAX)).round() as i16)
            .collect();
        let start_ms = self.start * 1000 / u64::from(TRANSCRIPTION_RATE);
        self.start += cut as u64;
        // Digital silence (a gap ffmpeg filled, or a crafted jump in timestamps) holds no
        // word: nothing is sent for it, and its time still counts.
        if samples.iter().all(|s| *s == 0) {
            return Ok(());
        }
        piece(Piece { start_ms, samples })
    }
}

/// Where to end a full piece: the middle of its quietest 100 ms in its last quarter.
fn quietest_cut(audio: &[f32]) -> usize {
    let from = audio.len() * 3 / 4;
    let mut best = (f32::INFINITY, audio.len());
    let mut at = from;
    while at + QUIET_WINDOW <= audio.len() {
        let energy: f32 = audio[at..at + QUIET_WINDOW].iter().map(|s| s * s).sum();
        // Later wins ties: pieces stay as long as they may.
        if energy <= best.0 {
            best = (energy, at + QUIET_WINDOW / 2);
        }
        at += QUIET_WINDOW / 2;
    }
    best.1.max(1)
}

/// Mono audio at any rate to 16 kHz, streamed, with rubato's FFT resampler.
#[derive(Default)]
struct To16k {
    stage: Option<Stage>,
}

struct Stage {
    rate: u32,
    fft: Option<rubato::Fft<f32>>,
    pending: Vec<f32>,
    scratch: Vec<f32>,
    in_frames: u64,
    /// Output samples written so far at this rate.
    written: u64,
    /// Output samples still to drop: the resampler's delay.
    to_trim: usize,
}

/// Input frames per resampler call (rubato rounds it to suit the ratio).
const RESAMPLE_CHUNK: usize = 1024;

impl To16k {
    fn push(&mut self, rate: u32, mono: &[f32], out: &mut Vec<f32>) -> Result<(), String> {
        if self.stage.as_ref().is_some_and(|s| s.rate != rate) {
            self.flush(out)?;
        }
        if self.stage.is_none() {
            self.stage = Some(Stage::new(rate)?);
        }
        let Some(stage) = self.stage.as_mut() else {
            return Ok(());
        };
        stage.in_frames += mono.len() as u64;
        let Some(fft) = stage.fft.as_mut() else {
            out.extend_from_slice(mono);
            stage.written += mono.len() as u64;
            return Ok(());
        };
        stage.pending.extend_from_slice(mono);
        let need = {
            use rubato::Resampler as _;
            fft.input_frames_next()
        };
        let mut used = 0;
        while stage.pending.len() - used >= need {
            let written = run(
                fft,
                &stage.pending[used..used + need],
                &mut stage.scratch,
                &mut stage.to_trim,
                out,
            )?;
            stage.written += written as u64;
            used += need;
        }
        stage.pending.drain(..used);
        Ok(())
    }

    /// The end of the stream at this rate: the tail, then zeros until the delay is out, cut to
    /// the exact length.
    fn flush(&mut self, out: &mut Vec<f32>) -> Result<(), String> {
        let Some(mut stage) = self.stage.take() else {
            return Ok(());
        };
        let Some(fft) = stage.fft.as_mut() else {
            return Ok(());
        };
        let expected = (u128::from(stage.in_frames) * u128::from(TRANSCRIPTION_RATE))
            .div_ceil(u128::from(stage.rate));
        let expected = u64::try_from(expected).unwrap_or(u64::MAX);
        let need = {
            use rubato::Resampler as _;
            fft.input_frames_next()
        };
        stage.pending.resize(need, 0.0);
        let start = out.len();
        // A call may return nothing while the resampler gathers a whole FFT's worth; a few
        // dozen calls of zeros always drain it.
        let mut calls = 0;
        while stage.written < expected && calls < 64 {
            calls += 1;
            let written = run(
                fft,
                &stage.pending,
                &mut stage.scratch,
                &mut stage.to_trim,
                out,
            )?;
            stage.written += written as u64;
            stage.pending.fill(0.0);
        }
        let over = stage.written.saturating_sub(expected);
        let keep = (out.len() - start).saturating_sub(usize::try_from(over).unwrap_or(0));
        out.truncate(start + keep);
        Ok(())
    }
}

impl Stage {
    fn new(rate: u32) -> Result<Self, String> {
        if !PLAUSIBLE_RATES.contains(&rate) {
            return Err(format!("the stream claims a sample rate of {rate} Hz"));
        }
        let fft = if rate == TRANSCRIPTION_RATE {
            None
        } else {
            Some(
                rubato::Fft::<f32>::new_custom(
                    rate as usize,
                    TRANSCRIPTION_RATE as usize,
                    RESAMPLE_CHUNK,
                    1,
                    1,
                    rubato::WindowFunction::BlackmanHarris2,
                    rubato::FixedSync::Input,
                )
                .map_err(|err| err.to_string())?,
            )
        };
        let (capacity, delay) = fft.as_ref().map_or((0, 0), |f| {
            use rubato::Resampler as _;
            (f.output_frames_max(), f.output_delay())
        });
        Ok(Stage {
            rate,
            fft,
            pending: Vec::with_capacity(2 * RESAMPLE_CHUNK),
            scratch: vec![0.0; capacity],
            in_frames: 0,
            written: 0,
            to_trim: delay,
        })
    }
}

/// One resampler call; returns the samples written to `out` after the delay is trimmed.
fn run(
    fft: &mut rubato::Fft<f32>,
    input: &[f32],
    scratch: &mut [f32],
    to_trim: &mut usize,
    out: &mut Vec<f32>,
) -> Result<usize, String> {
    use rubato::Resampler as _;
    use rubato::audioadapter_buffers::direct::InterleavedSlice;
    let input = InterleavedSlice::new(input, 1, input.len()).map_err(|err| err.to_string())?;
    let capacity = scratch.len();
    let mut output =
        InterleavedSlice::new_mut(scratch, 1, capacity).map_err(|err| err.to_string())?;
    let (_, produced) = fft
        .process_into_buffer(&input, &mut output, None)
        .map_err(|err| err.to_string())?;
    let skip = (*to_trim).min(produced);
    *to_trim -= skip;
    out.extend_from_slice(&scratch[skip..produced]);
    Ok(produced - skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::cast_sign_loss)]
    fn tone(rate: u32, hz: f32, seconds: f32) -> Vec<f32> {
        let n = (rate as f32 * seconds) as usize;
        (0..n)
            .map(|i| (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin() * 0.5)
            .collect()
    }

    fn resample(rate: u32, input: &[f32]) -> Vec<f32> {
        let mut resampler = To16k::default();
        let mut out = Vec::new();
        // Uneven packets, as decoders give them.
        for piece in input.chunks(1152) {
            resampler.push(rate, piece, &mut out).unwrap();
        }
        resampler.flush(&mut out).unwrap();
        out
    }

    /// Amplitude of `hz` in `signal` at 16 kHz (one DFT bin).
    fn level(signal: &[f32], hz: f32) -> f32 {
        let (mut re, mut im) = (0.0f64, 0.0f64);
        for (i, s) in signal.iter().enumerate() {
            let phase = 2.0 * std::f64::consts::PI * f64::from(hz) * i as f64 / 16_000.0;
            re += f64::from(*s) * phase.cos();
            im += f64::from(*s) * phase.sin();
        }
        (2.0 * (re * re + im * im).sqrt() / signal.len() as f64) as f32
    }

    #[test]
    fn resampling_keeps_length_and_speech_band_and_drops_what_16k_cannot_hold() {
        for rate in [8_000, 22_050, 44_100, 48_000] {
            let input = tone(rate, 440.0, 1.0);
            let out = resample(rate, &input);
            let expected = (input.len() as u64 * 16_000).div_ceil(u64::from(rate)) as usize;
            assert_eq!(out.len(), expected, "{rate} Hz");
            let kept = level(&out[1600..out.len() - 1600], 440.0);
            assert!((kept - 0.5).abs() < 0.02, "{rate} Hz: 440 Hz at {kept}");
        }
        // 11 kHz cannot exist at 16 kHz: it must be filtered out, not folded to 5 kHz.
        let out = resample(44_100, &tone(44_100, 11_000.0, 1.0));
        let folded = level(&out[1600..out.len() - 1600], 5_000.0);
        assert!(folded < 0.005, "aliasing at {folded}");
    }

    #[test]
    fn resampling_keeps_time() {
        // A click at 0.75 s lands at 0.75 s, whatever the input rate.
        for rate in [8_000u32, 22_050, 44_100, 48_000] {
            let mut input = vec![0.0f32; rate as usize * 2];
            input[rate as usize * 3 / 4] = 1.0;
            let out = resample(rate, &input);
            let peak = out
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
                .unwrap()
                .0;
            assert!(
                peak.abs_diff(12_000) <= 2,
                "{rate} Hz: the click is at {peak}"
            );
        }
    }

    #[test]
    fn pieces_are_cut_in_the_quietest_place_of_their_last_quarter() {
        // 10 s of tone with silence from 7.0 to 7.4 s; pieces of at most 8 s.
        let rate = TRANSCRIPTION_RATE as usize;
        let mut audio = tone(16_000, 300.0, 10.0);
        for s in &mut audio[7 * rate..7 * rate + 6400] {
            *s = 0.0;
        }
        let mut splitter = Splitter {
            pending: audio,
            start: 0,
            max_piece: 8 * rate,
        };
        let mut pieces = Vec::new();
        let mut keep = |p: Piece| {
            pieces.push((p.start_ms, p.samples.len()));
            Ok(())
        };
        splitter.emit_full(&mut keep).unwrap();
        splitter.emit_rest(&mut keep).unwrap();
        assert_eq!(pieces.len(), 2, "{pieces:?}");
        let cut_ms = pieces[0].1 as u64 * 1000 / 16_000;
        assert!((7_000..=7_400).contains(&cut_ms), "cut at {cut_ms} ms");
        assert_eq!(pieces[1].0, cut_ms);
        assert_eq!(pieces[0].1 + pieces[1].1, 10 * rate);
    }

    #[test]
    fn decoding_stops_when_the_file_is_abandoned() {
        let wav = include_bytes!("../../fixtures/audio/speech/speech.wav").to_vec();
        let limits = MediaLimits {
            max_duration_ms: 60_000,
            max_metadata_bytes: 1 << 20,
        };
        let flag = Arc::new(AtomicBool::new(false));
        let len = wav.len() as u64;
        let input = Input::new(wav, None, len).cancelled_by(Arc::clone(&flag));
        let Ok(probed) = probe(input, "wav", limits) else {
            panic!("the fixture is readable");
        };
        flag.store(true, Ordering::Relaxed);
        let mut pieces = 0;
        let err = probed
            .decode(5_000, |_| {
                pieces += 1;
                Ok(())
            })
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::LimitExceeded, "{err:?}");
        assert!(err.message.contains("abandoned"));
        assert_eq!(pieces, 0);
    }

    #[test]
    fn samples_from_elsewhere_are_cut_whole_whatever_their_reads() {
        let samples: Vec<i16> = (0..3 * 16_000 + 123)
            .map(|i| ((i as f32 * 0.05).sin() * 20_000.0) as i16)
            .collect();
        let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let limits = MediaLimits {
            max_duration_ms: 60_000,
            max_metadata_bytes: 0,
        };
        let mut cutter = Cutter::new("ogg", limits, 1000);
        let mut pieces = Vec::new();
        // Reads of an odd length split samples between them.
        for read in bytes.chunks(777) {
            cutter.push(read, &mut pieces).unwrap();
        }
        assert_eq!(cutter.finish(&mut pieces), 3007);
        let mut at = 0;
        for piece in &pieces {
            assert!(piece.samples.len() <= 16_000);
            assert_eq!(piece.start_ms, at as u64 * 1000 / 16_000);
            let sent = &samples[at..at + piece.samples.len()];
            assert!(piece.samples == sent, "piece at {} ms", piece.start_ms);
            at += piece.samples.len();
        }
        assert_eq!(at, samples.len());
        // Digital silence filling whole pieces is not sent; what follows keeps its time.
        let tone = &samples[..16_000];
        let gapped: Vec<i16> = [tone, &vec![0; 48_000], tone].concat();
        let bytes: Vec<u8> = gapped.iter().flat_map(|s| s.to_le_bytes()).collect();
        let mut cutter = Cutter::new("ogg", limits, 1000);
        let mut pieces = Vec::new();
        cutter.push(&bytes, &mut pieces).unwrap();
        assert_eq!(cutter.finish(&mut pieces), 5000);
        assert!(pieces.iter().all(|p| p.samples.iter().any(|s| *s != 0)));
        let sent: usize = pieces.iter().map(|p| p.samples.len()).sum();
        assert!(sent < gapped.len() - 16_000, "{sent} samples sent");
        let last = pieces.last().unwrap();
        let at = gapped.len() - last.samples.len();
        assert_eq!(last.samples[..], gapped[at..]);
        assert_eq!(last.start_ms, at as u64 * 1000 / 16_000);
        // Past the duration limit.
        let limits = MediaLimits {
            max_duration_ms: 2_000,
            ..limits
        };
        let mut cutter = Cutter::new("ogg", limits, 1000);
        let err = bytes
            .chunks(16_000)
            .try_for_each(|read| cutter.push(read, &mut pieces))
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::LimitExceeded, "{err:?}");
    }

    #[test]
    fn reads_span_the_head_and_the_rest() {
        let whole: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let rest = std::io::Cursor::new(whole.clone());
        let mut input = Input::new(whole[..3000].to_vec(), Some(Box::new(rest)), 10_000);
        let mut back = Vec::new();
        input.read_to_end(&mut back).unwrap();
        assert_eq!(back, whole);
        assert_eq!(input.fetched().load(Ordering::Relaxed), 7000);
        input.seek(SeekFrom::End(-10)).unwrap();
        let mut tail = [0u8; 10];
        input.read_exact(&mut tail).unwrap();
        assert_eq!(tail, whole[9990..]);
        // A read is cut to what the budget allows; the next one fails.
        input.budget.store(5, Ordering::Relaxed);
        input.seek(SeekFrom::Start(0)).unwrap();
        assert_eq!(input.read(&mut [0u8; 64]).unwrap(), 5);
        assert!(input.read(&mut [0u8; 64]).is_err());
        assert!(input.over_budget.load(Ordering::Relaxed));
    }
}
