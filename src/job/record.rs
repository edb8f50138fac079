//! Chunk records: what `ingest.chunks` carries and `ingestd sync` prints, one per chunk.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::chunk::Encoding;
use crate::detect::MediaType;

/// One chunk of one file. Same object version and options ⇒ byte-identical record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChunkRecord {
    /// Always [`super::SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Deterministic id: a hash of the object version, the chunking options and the chunk's
    /// place, so re-delivery and re-runs upsert instead of duplicating.
    pub chunk_id: String,
    /// The request this chunk answers.
    pub request_id: Option<String>,
    /// The customer the data belongs to.
    pub customer_id: Option<String>,
    /// The data source the object came from.
    pub data_source_id: Option<String>,
    /// The object.
    // Shared by the records of one file: each record would otherwise copy its strings.
    pub file: std::sync::Arc<FileInfo>,
    /// Position of the chunk in its file, from 0.
    pub chunk_index: usize,
    /// The chunk's text (with the file name prepended when asked).
    pub text: String,
    /// Exact token count of `text` in `chunking.encoding`.
    pub token_count: usize,
    /// Byte offsets `[start, end)` of the chunk in the extracted text.
    pub range: [usize; 2],
    /// Page (or slide) of a paged document (PDF, PPTX, ODP) the chunk starts on, from 1;
    /// null for text without pages.
    pub page: Option<u32>,
    /// Page (or slide) the chunk ends on, from 1: equal to `page` unless the chunk crosses a
    /// page break. Present exactly when `page` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_page: Option<u32>,
    /// Time span `[start, end)` in milliseconds, for audio and video.
    pub time_range_ms: Option<[u64; 2]>,
    /// The job's tags.
    pub tags: BTreeMap<String, Value>,
    /// The embedding vector, null when embedding was skipped.
    pub embedding: Option<Vec<f32>>,
    /// The embedding model, null when embedding was skipped.
    pub embedding_model: Option<String>,
    /// How the text was chunked.
    pub chunking: ChunkingInfo,
    /// Facts about an image, audio or video file; absent for text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<MediaInfo>,
}

/// What is known of an image, audio or video file, whichever facts apply.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MediaInfo {
    /// Width in pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Height in pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// Colour type of an image as stored (`Rgb8`, `Rgba8`, `L8`, `Rgb16`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color_type: Option<String>,
    /// Duration in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Codec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codec: Option<String>,
    /// Audio sample rate in Hz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_rate: Option<u32>,
    /// Audio channels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<u16>,
    /// Video frames per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_rate: Option<f64>,
    /// The EXIF fields that matter, for photos.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exif: Option<Exif>,
    /// The container of an audio or video file as the demuxer names it (`isomp4`, `matroska`,
    /// `ogg`, `wave`, `flac`, `mp3`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The codec of a video's audio track (`codec` is then the video's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_codec: Option<String>,
    /// Tags of an audio or video file: `title`, `artist`, `album`, `album_artist`, `genre`,
    /// `date`, `track`, `composer`, `comment`, whichever it has.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// The spoken language, as the transcription provider detected it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

/// EXIF fields of a photo; each is present only when the file has it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Exif {
    /// Orientation, 1–8 (1 upright, 6 rotated 90° clockwise, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orientation: Option<u32>,
    /// When the photo was taken (`DateTimeOriginal`), `YYYY-MM-DD HH:MM:SS` in the camera's
    /// local time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captured_at: Option<String>,
    /// Camera maker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera_make: Option<String>,
    /// Camera model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera_model: Option<String>,
    /// Latitude in decimal degrees (north positive); only with `images.include_gps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    /// Longitude in decimal degrees (east positive); only with `images.include_gps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
}

/// The object a record or event is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FileInfo {
    /// The bucket; null for local files.
    pub bucket: Option<String>,
    /// The object key, or for local files the path relative to the folder synced.
    pub key: String,
    /// The object version: S3's ETag, or for local files a hash of the content.
    pub etag: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, RFC 3339.
    pub last_modified: Option<String>,
    /// The declared content type, when there is one.
    pub content_type: Option<String>,
    /// `TEXT`, `IMAGE`, `AUDIO` or `VIDEO`.
    pub media_type: Option<MediaType>,
    /// The detected format (`markdown`, `csv`, `png`, …).
    pub format: String,
    /// `S3`, `DigitalOcean Space`, or `Local` for one-shot local files.
    pub data_source_metadata: String,
    /// `S3 File`, `DigitalOcean Space File`, … or `Local File`.
    pub file_metadata: String,
}

/// A chunk record as both outputs carry it: its JSON, written once, on the thread that made the
/// record. What keeps the output in order (one writer for a whole run) then only copies bytes,
/// and the record's strings are freed where they were allocated.
#[derive(Debug, Clone)]
pub struct EncodedRecord {
    /// The record's `chunk_id`.
    pub chunk_id: String,
    /// The record's `file.media_type` (chunks are routed by it).
    pub media_type: Option<MediaType>,
    /// The JSON and a newline.
    line: Vec<u8>,
}

impl EncodedRecord {
    /// `record` as JSON (taken: its `chunk_id` moves over rather than being copied).
    ///
    /// # Errors
    /// When serde_json cannot write it (records have string keys only: it can).
    pub fn new(record: ChunkRecord) -> Result<EncodedRecord, serde_json::Error> {
        // The text is most of a record; its other fields take well under 1 KiB, and a
        // vector's numbers at most 16 bytes each.
        let vector = record
            .embedding
            .as_ref()
            .map_or(0, |vector| vector.len() * 16);
        let mut line = Vec::with_capacity(record.text.len() + vector + 1024);
        serde_json::to_writer(&mut line, &record)?;
        line.push(b'\n');
        Ok(EncodedRecord {
            chunk_id: record.chunk_id,
            media_type: record.file.media_type,
            line,
        })
    }

    /// The JSON alone (a message body).
    #[must_use]
    pub fn json(&self) -> &[u8] {
        self.line.strip_suffix(b"\n").unwrap_or(&self.line)
    }

    /// The JSON and a newline (a line of JSON Lines).
    #[must_use]
    pub fn line(&self) -> &[u8] {
        &self.line
    }

    /// The JSON and a newline, taken.
    #[must_use]
    pub fn into_line(self) -> Vec<u8> {
        self.line
    }
}

/// The chunking options a record was made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ChunkingInfo {
    /// Maximum tokens per chunk.
    pub chunk_size: usize,
    /// Maximum tokens shared by neighbours.
    pub chunk_overlap: usize,
    /// The tiktoken encoding.
    pub encoding: Encoding,
}

/// One entry of a data source's catalog (`ingestd sync s3://`, and later `sync_items`): a
/// bucket, or an object with its metadata. No text: the catalog says what exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ItemRecord {
    /// Always [`super::SCHEMA_VERSION`].
    pub schema_version: u32,
    /// What the item is.
    pub item_type: ItemType,
    /// The request this catalog answers.
    pub request_id: Option<String>,
    /// The customer.
    pub customer_id: Option<String>,
    /// The data source.
    pub data_source_id: Option<String>,
    /// The bucket (the item itself, for buckets).
    pub bucket: String,
    /// The object key; null for buckets.
    pub key: Option<String>,
    /// Size in bytes, for objects.
    pub size: Option<u64>,
    /// Version tag, for objects.
    pub etag: Option<String>,
    /// RFC 3339: last modification of objects, creation of buckets.
    pub last_modified: Option<String>,
    /// `S3` or `DigitalOcean Space`.
    pub data_source_metadata: String,
    /// `S3 Bucket`, `DigitalOcean Space Bucket`, `S3 File`, `DigitalOcean Space File`.
    pub file_metadata: String,
}

/// Kinds of catalog items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ItemType {
    /// A bucket (a Space, on DigitalOcean).
    Bucket,
    /// An object.
    File,
}
