//! Audio and video: one record describing the recording, or its transcript chunked.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;

use super::{
    Detected, Emitter, FileError, Outcome, Processing, Timed, closed, content_etag, file_info,
};
use crate::error::ErrorCode;
use crate::extract::media::{self, Cutter, Input, Piece};
use crate::extract::{Rejection, ffmpeg};
use crate::job::{FileInfo, MediaInfo};
use crate::source::{ObjectMeta, RandomAccess, Source, SourceKind};
use crate::transcribe::{Ask, Spoken, Transcriber};

impl Processing {
    /// Audio or video: one record with its facts in `media`; with a transcription provider,
    /// the transcript chunked instead, each record carrying `media` and `time_range_ms`.
    /// Describing, decoding and transcribing together may take `max_media`; past it the file
    /// is abandoned and its decoding stops at the next packet.
    pub(super) async fn describe_media<S: Source>(
        &mut self,
        source: &S,
        head: Vec<u8>,
        ended: bool,
        detected: Detected,
        out: &Emitter,
    ) -> Outcome {
        let limit = self.request.max_media;
        let abandon = Abandon(Arc::new(AtomicBool::new(false)));
        // Boxed: the media path's state is large, and most files never take it.
        let work = Box::pin(async {
            if !media::readable(detected.format.name()) {
                return self.hear_other(source, head, ended, detected, None).await;
            }
            let abandoned = Arc::clone(&abandon.0);
            let mut left = Left::default();
            let symphonia = self
                .hear_media(source, head.clone(), ended, detected, abandoned, &mut left)
                .await;
            match (symphonia, left) {
                // What symphonia cannot read, ffprobe may.
                (
                    Err(_),
                    Left {
                        refused: Some(refused),
                        ..
                    },
                ) => {
                    self.hear_other(source, head, ended, detected, Some(refused))
                        .await
                }
                (Ok((mut file, mut media, segments)), Left { video: true, .. }) => {
                    self.see_video(source, head, ended, detected, &mut file, &mut media)
                        .await;
                    media::check_duration(detected.format.name(), &media, self.request.media)
                        .map_err(Outcome::Failed)?;
                    Ok((file, media, segments))
                }
                (described, _) => described,
            }
        });
        let transcribed = tokio::time::timeout(limit, work).await;
        drop(abandon);
        let (file, media, segments) = match transcribed {
            Ok(Ok(transcribed)) => transcribed,
            Ok(Err(outcome)) => return outcome,
            Err(_) => {
                return Outcome::Failed(FileError::permanent(
                    ErrorCode::LimitExceeded,
                    format!(
                        "describing, decoding and transcribing took longer than \
                         limits.max_media_secs ({} s); the file was abandoned",
                        limit.as_secs()
                    ),
                ));
            }
        };
        if segments.is_empty() {
            if self.note.is_none() {
                self.note = Some("no speech was heard in the audio".to_owned());
            }
            return self.send_media_record(file, media, out).await;
        }
        let (text, times) = transcript_text(&segments);
        self.cut_recognised(text, file, media, times, out).await
    }

    /// A file symphonia does not read (its container, or what is in it), described by ffprobe
    /// and, with a provider, its audio decoded by ffmpeg and transcribed. `refused` is what
    /// symphonia said of it, which stands when ffprobe cannot say more.
    async fn hear_other<S: Source>(
        &mut self,
        source: &S,
        head: Vec<u8>,
        ended: bool,
        detected: Detected,
        refused: Option<Rejection>,
    ) -> Result<(FileInfo, MediaInfo, Vec<Spoken>), Outcome> {
        let format = detected.format.name();
        let mut object = self.object.clone();
        if object.etag.is_none() {
            object.etag = Some(content_etag(&head));
        }
        let described = self.ffprobe(source, head, ended, format).await;
        let mut media = match (described, refused) {
            (Ok(media), _) => media,
            // ffprobe cannot run, or cannot read it either: what symphonia said stands. A
            // limit, or the source failing, is the news.
            (Err(Rejection::Skip { .. }), Some(refused)) => return Err(refused.into()),
            (Err(Rejection::Error(err)), Some(refused)) if err.code == ErrorCode::CorruptFile => {
                return Err(refused.into());
            }
            (Err(rejection), _) => return Err(rejection.into()),
        };
        media::check_duration(format, &media, self.request.media).map_err(Outcome::Failed)?;
        let mut file = file_info(&object, detected, self.kind);
        // Whatever its container, a file with a picture is video and one without is audio.
        file.media_type = Some(if media.width.is_some() {
            crate::detect::MediaType::Video
        } else {
            crate::detect::MediaType::Audio
        });
        self.file_ref.media_type = file.media_type;
        let transcriber = match &self.request.transcriber {
            Ok(_) if media.sample_rate.is_none() => Err("the file has no audio track".to_owned()),
            transcriber => transcriber.clone(),
        };
        let segments = match transcriber {
            Ok(transcriber) => {
                self.hear_elsewhere(source, format, &transcriber, &mut media)
                    .await?
            }
            Err(why) => {
                self.note = Some(format!("no transcript was made: {why}"));
                Vec::new()
            }
        };
        Ok((file, media, segments))
    }

    /// What ffprobe says of the object: its head from memory, the rest by random access,
    /// within `limits.max_media_metadata_bytes`.
    async fn ffprobe<S: Source>(
        &mut self,
        source: &S,
        head: Vec<u8>,
        ended: bool,
        format: &str,
    ) -> Result<MediaInfo, Rejection> {
        let rest = (!ended)
            .then(|| source.random_access(&self.object).map(rest))
            .transpose()?;
        let input = Input::new(head, rest, self.object.size)
            .with_budget(self.request.media.max_metadata_bytes);
        let fetched = input.fetched();
        let started = std::time::Instant::now();
        let described = self.request.ffprobe.describe(input, format).await;
        crate::telemetry::timed(crate::telemetry::Stage::Extract, started.elapsed());
        self.bytes_read += fetched.load(Ordering::Relaxed);
        described
    }

    /// A file whose video track symphonia left out (Theora in Ogg, ProRes in MOV) is video:
    /// ffprobe describes its picture when it can, and its audio stays as symphonia heard it.
    async fn see_video<S: Source>(
        &mut self,
        source: &S,
        head: Vec<u8>,
        ended: bool,
        detected: Detected,
        file: &mut FileInfo,
        media: &mut MediaInfo,
    ) {
        file.media_type = Some(crate::detect::MediaType::Video);
        self.file_ref.media_type = file.media_type;
        // Without a video track described, the codec symphonia named is the audio's.
        media.audio_codec = media.codec.take();
        match self
            .ffprobe(source, head, ended, detected.format.name())
            .await
        {
            Ok(seen) => {
                media.width = seen.width;
                media.height = seen.height;
                media.codec = seen.codec;
                media.frame_rate = seen.frame_rate;
                // symphonia's, which counts only the samples there are, when it has one.
                media.duration_ms = media.duration_ms.or(seen.duration_ms);
                if media.sample_rate.is_none() {
                    media.audio_codec = seen.audio_codec;
                    media.sample_rate = seen.sample_rate;
                    media.channels = seen.channels;
                }
            }
            Err(why) => {
                tracing::debug!(key = %self.object.key, ?why, "the video track was not described");
            }
        }
    }

    /// Transcribes audio that ffmpeg decodes: the object is read again by random access
    /// (in a store, the version already described, or `OBJECT_CHANGED`). The language heard,
    /// and the duration decoded when the header did not say, go to `media`.
    async fn hear_elsewhere<S: Source>(
        &mut self,
        source: &S,
        format: &str,
        transcriber: &Transcriber,
        media: &mut MediaInfo,
    ) -> Result<Vec<Spoken>, Outcome> {
        let rest = source
            .random_access(&self.object)
            .map_err(Outcome::Failed)?;
        let input = Input::new(Vec::new(), Some(self::rest(rest)), self.object.size);
        let fetched = input.fetched();
        let request = Arc::clone(&self.request);
        let cutter = Cutter::new(format, request.media, transcriber.max_piece_ms());
        let (pieces, next_piece) = mpsc::channel::<Piece>(1);
        let decode = request
            .ffmpeg
            .decode(format, input, cutter, pieces, Arc::clone(&request.cpu));
        let (decoded, heard) =
            tokio::join!(decode, hear(transcriber, request.transcription, next_piece));
        self.bytes_read += fetched.load(Ordering::Relaxed);
        match (decoded, heard) {
            // Decoding stopped because the transcription failed: the failure is the news.
            (_, Err(err)) => Err(Outcome::Failed(err)),
            // ffmpeg cannot be run: the file keeps its metadata record, and says why.
            (Err(err), _) if err.code == ErrorCode::UnsupportedFormat => {
                self.note = Some(format!("no transcript was made: {}", err.message));
                Ok(Vec::new())
            }
            (Err(err), _) => Err(Outcome::Failed(err)),
            (Ok(decoded), Ok((segments, language))) => {
                if let Some(said) = &decoded.stopped {
                    tracing::warn!(key = %self.object.key, decoded_ms = decoded.duration_ms, %said, "ffmpeg stopped with an error; the audio before it is kept");
                    self.note = Some(format!(
                        "the transcript stops at {:.1} s, where decoding failed: {said}",
                        decoded.duration_ms as f64 / 1000.0
                    ));
                }
                media.language = language;
                media.duration_ms = media.duration_ms.or(Some(decoded.duration_ms));
                Ok(segments)
            }
        }
    }

    /// Describes a media file and, with a provider, transcribes it. The container is read
    /// through random access, so a large object is not downloaded to be described; its audio
    /// is decoded on a blocking thread (under a CPU slot, released while a piece waits) and
    /// sent in pieces while the next piece decodes.
    async fn hear_media<S: Source>(
        &mut self,
        source: &S,
        head: Vec<u8>,
        ended: bool,
        detected: Detected,
        abandoned: Arc<AtomicBool>,
        left: &mut Left,
    ) -> Result<(FileInfo, MediaInfo, Vec<Spoken>), Outcome> {
        let format = detected.format.name();
        let rest = (!ended)
            .then(|| source.random_access(&self.object).map(rest))
            .transpose()
            .map_err(Outcome::Failed)?;
        let input = Input::new(head, rest, self.object.size).cancelled_by(abandoned);
        let fetched = input.fetched();
        let transcriber = self.request.transcriber.clone();
        let (object, kind, request) = (self.object.clone(), self.kind, Arc::clone(&self.request));
        let (pieces, next_piece) = mpsc::channel::<Piece>(1);
        let (described, description) = tokio::sync::oneshot::channel();
        let (cpu, runtime) = (Arc::clone(&request.cpu), tokio::runtime::Handle::current());
        let max_piece_ms = transcriber.as_ref().ok().map(|t| t.max_piece_ms());
        let no_provider = transcriber.as_ref().err().cloned();
        let mut slot = self.cpu_slot().await;
        let work = tokio::task::spawn_blocking(move || {
            let probed = match media::probe(input, format, request.media) {
                Ok(probed) => probed,
                Err(refused) => {
                    let _ = described.send(Err(refused));
                    return Ok(None);
                }
            };
            let (file, why_not, foreign) =
                media_file(&probed, &object, detected, kind, no_provider.as_deref());
            let video = probed.video_unseen;
            if described
                .send(Ok((probed.media.clone(), file, why_not, foreign, video)))
                .is_err()
            {
                return Ok(None);
            }
            let Some(max_piece_ms) = max_piece_ms.filter(|_| probed.has_audio()) else {
                return Ok(None);
            };
            // The slot is held while decoding, not while a piece waits for the provider.
            let decoded = probed.decode(max_piece_ms, |piece| {
                slot = None;
                pieces.blocking_send(piece).map_err(|_| closed())?;
                slot = runtime.block_on(Arc::clone(&cpu).acquire_owned()).ok();
                // (Abandoning the file stops the decoder at its next packet.)
                Ok(())
            });
            drop(slot);
            decoded.map(Some)
        });
        let (mut media, file, why_not, foreign, video) = match description.await {
            Ok(Ok(description)) => description,
            Ok(Err(refused)) => {
                self.bytes_read += fetched.load(Ordering::Relaxed);
                left.refused = refused.reader_limit.then(|| refused.rejection.clone());
                return Err(refused.rejection.into());
            }
            // The blocking work ended without a word: it crashed.
            Err(_) => {
                return Err(match self.blocking(work).await {
                    Err(err) => Outcome::Failed(err),
                    Ok(_) => Outcome::Failed(closed()),
                });
            }
        };
        self.file_ref.media_type = file.media_type;
        self.note = why_not;
        left.video = video;
        // A codec without a decoder here: ffmpeg decodes it (symphonia's work ends at once,
        // having no audio to decode).
        if foreign && let Ok(transcriber) = &transcriber {
            drop(next_piece);
            self.blocking(work).await.map_err(Outcome::Failed)?;
            self.bytes_read += fetched.load(Ordering::Relaxed);
            let segments = self
                .hear_elsewhere(source, format, transcriber, &mut media)
                .await?;
            return Ok((file, media, segments));
        }
        let mut segments = Vec::new();
        let mut failed = None;
        if let Ok(transcriber) = &transcriber {
            match hear(transcriber, self.request.transcription, next_piece).await {
                Ok((transcript, language)) => {
                    segments = transcript;
                    media.language = language;
                }
                // Decoding stops at its next piece.
                Err(err) => failed = Some(err),
            }
        }
        let decoded = self.blocking(work).await;
        self.bytes_read += fetched.load(Ordering::Relaxed);
        if let Some(err) = failed {
            return Err(Outcome::Failed(err));
        }
        match decoded {
            Ok(Some(decoded)) if decoded.bad_packets > 0 => {
                tracing::warn!(key = %self.object.key, bad_packets = decoded.bad_packets, "damaged audio packets were skipped");
            }
            Ok(_) => {}
            // A feature the decoder lacks: the file keeps its metadata record, and says why.
            Err(err) if err.code == ErrorCode::UnsupportedFormat => {
                self.note = Some(format!("no transcript was made: {}", err.message));
                return Ok((file, media, Vec::new()));
            }
            Err(err) => return Err(Outcome::Failed(err)),
        }
        Ok((file, media, segments))
    }
}

/// The source's random access as the rest of an [`Input`], with what it fetched.
fn rest(access: Box<dyn RandomAccess>) -> Box<dyn media::Rest> {
    Box::new(Access(access))
}

struct Access(Box<dyn RandomAccess>);

impl std::io::Read for Access {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl std::io::Seek for Access {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        self.0.seek(to)
    }
}

impl media::Rest for Access {
    fn bytes_fetched(&self) -> Option<u64> {
        self.0.bytes_fetched()
    }
}

/// What symphonia left for ffprobe to say of a file.
#[derive(Default)]
struct Left {
    /// It could not read the file (a container, codec or structure it does not read): this is
    /// what it said.
    refused: Option<Rejection>,
    /// It read the file but not its video track.
    video: bool,
}

/// How records describe a media file; why it gets no transcript (when it does not); and
/// whether its audio is for ffmpeg to decode (a codec without a decoder here, in a container
/// ffmpeg is given).
fn media_file(
    probed: &media::Probed,
    object: &ObjectMeta,
    detected: Detected,
    kind: SourceKind,
    no_provider: Option<&str>,
) -> (FileInfo, Option<String>, bool) {
    let mut file = file_info(object, detected, kind);
    // A video container holding only sound (WebM or MP4 audio) is audio.
    if probed.media.width.is_none() && probed.media.sample_rate.is_some() {
        file.media_type = Some(crate::detect::MediaType::Audio);
    }
    let format = detected.format.name();
    let foreign = probed.foreign_codec.is_some() && ffmpeg::decodes(format);
    let why_not = match (no_provider, probed.no_audio.as_deref()) {
        (None, Some(_)) if foreign => None,
        (Some(why), _) | (None, Some(why)) => Some(why.to_owned()),
        (None, None) => None,
    };
    let foreign = foreign && no_provider.is_none();
    let why_not = why_not.map(|why| format!("no transcript was made: {why}"));
    (file, why_not, foreign)
}

/// The transcript of every piece `next` brings, in order, and the language first heard.
/// Dropping `next` on a failure stops the decoding that feeds it.
async fn hear(
    transcriber: &Transcriber,
    ask: Ask,
    mut next: mpsc::Receiver<Piece>,
) -> Result<(Vec<Spoken>, Option<String>), FileError> {
    let (mut segments, mut language) = (Vec::new(), None);
    while let Some(piece) = next.recv().await {
        let transcript = transcriber.transcribe(&piece, ask).await?;
        language = language.or(transcript.language);
        segments.extend(transcript.segments);
    }
    Ok((segments, language))
}

/// Abandons a media file's decoding when dropped: its reads fail and decoding stops at the
/// next packet, even when the file's future was dropped at a time limit.
struct Abandon(Arc<AtomicBool>);

impl Drop for Abandon {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A transcript as text, one segment per line (`Speaker A: …` when labelled), with where each
/// segment is in it.
fn transcript_text(segments: &[Spoken]) -> (String, Vec<Timed>) {
    let mut text = String::new();
    let mut times = Vec::with_capacity(segments.len());
    for segment in segments {
        if !text.is_empty() {
            text.push('\n');
        }
        let start = text.len();
        if let Some(speaker) = &segment.speaker {
            text.push_str("Speaker ");
            text.push_str(speaker);
            text.push_str(": ");
        }
        text.push_str(&segment.text);
        times.push((start..text.len(), [segment.start_ms, segment.end_ms]));
    }
    (text, times)
}
