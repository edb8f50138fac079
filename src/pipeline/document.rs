//! Documents through the stages: read whole (from memory when small, else spooled to a
//! temporary file), their text extracted on a blocking thread within the `[documents]` budget,
//! then chunked with their pages and rows.

use std::sync::Arc;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{
    Detected, Emitter, FileError, Outcome, Processing, Read, Segment, content_etag, cut_whole,
    file_info,
};
use crate::error::{ErrorCode, SkipReason};
use crate::extract::document::{self, Budget, Input};

/// Waiting for an extraction goes on this long past its deadline (the extractor stops itself
/// at the deadline; this bounds a reader that does not).
const GRACE: std::time::Duration = std::time::Duration::from_secs(10);

impl Processing {
    /// A document (or a ZIP or OLE file, which may turn out to be one).
    pub(super) async fn read_document(
        &mut self,
        read: Read,
        detected: Detected,
        out: &Emitter,
    ) -> Outcome {
        let max = self.request.documents.max_bytes;
        if self.object.size.max(read.head.len() as u64) > max {
            return Outcome::Skipped(
                SkipReason::TooLarge,
                format!(
                    "the object is {} bytes, over documents.max_bytes ({max})",
                    self.object.size
                ),
            );
        }
        let (bytes, spool, etag) = match self.spool(read, max).await {
            Ok(spooled) => spooled,
            Err(outcome) => return outcome,
        };
        let budget = Budget::starting_now(
            &self.request.documents,
            self.request.ocr.clone(),
            self.request.max_text_bytes,
        );
        let deadline = budget.deadline;
        let format = detected.format.name();
        let slot = self.cpu_slot().await;
        if budget.config.isolate {
            let input = match &spool {
                Some(file) => Input::File(file.path()),
                None => Input::Bytes(&bytes),
            };
            // This process's own executable, even when the file was replaced since it started.
            let program = std::path::PathBuf::from(format!("/proc/{}/exe", std::process::id()));
            let read = document::extract_isolated(&program, input, format, &budget).await;
            drop(slot);
            return match read {
                Ok((format, extracted)) => {
                    self.cut_document(format, extracted, detected, etag, out)
                        .await
                }
                Err(rejection) => rejection.into(),
            };
        }
        let work = tokio::task::spawn_blocking(move || {
            let input = match &spool {
                Some(file) => Input::File(file.path()),
                None => Input::Bytes(&bytes),
            };
            let started = std::time::Instant::now();
            let extracted = document::extract(input, format, &budget);
            crate::telemetry::timed(crate::telemetry::Stage::Extract, started.elapsed());
            drop(slot);
            Ok(extracted)
        });
        let waited = tokio::time::timeout_at((deadline + GRACE).into(), self.blocking(work)).await;
        let (format, extracted) = match waited {
            Ok(Ok(Ok(done))) => done,
            Ok(Ok(Err(rejection))) => return rejection.into(),
            Ok(Err(err)) => return Outcome::Failed(err),
            Err(_) => {
                return Outcome::Failed(FileError::permanent(
                    ErrorCode::LimitExceeded,
                    format!(
                        "reading the document took longer than documents.timeout_secs ({} s); \
                         it was abandoned",
                        self.request.documents.timeout_secs
                    ),
                ));
            }
        };
        self.cut_document(format, extracted, detected, etag, out)
            .await
    }

    /// Cuts a document's text into records. A ZIP or OLE file is named by what it turned out
    /// to be.
    async fn cut_document(
        &mut self,
        format: &'static str,
        extracted: crate::extract::Extracted,
        detected: Detected,
        etag: String,
        out: &Emitter,
    ) -> Outcome {
        self.file_ref.format = Some(format.to_owned());
        self.note.clone_from(&extracted.note);
        let mut object = self.object.clone();
        if object.etag.is_none() {
            object.etag = Some(etag);
        }
        let mut file = file_info(&object, detected, self.kind);
        file.format = format.to_owned();
        file.media_type = Some(crate::detect::MediaType::Text);
        self.file_ref.media_type = file.media_type;
        let (request, sender, file) = (Arc::clone(&self.request), out.clone(), Arc::new(file));
        let slot = self.cpu_slot().await;
        let work = tokio::task::spawn_blocking(move || {
            cut_whole(
                &Segment::extracted(&extracted),
                &file,
                &request,
                slot,
                &sender,
            )
        });
        self.records_cut(work).await
    }

    /// The whole object: in memory when its head is all of it, else written to a temporary
    /// file as it streams in (up to `max` bytes). Also returns a version tag from its content,
    /// for objects without an ETag.
    async fn spool(
        &mut self,
        read: Read,
        max: u64,
    ) -> Result<(Vec<u8>, Option<tempfile::NamedTempFile>, String), Outcome> {
        let Read {
            head,
            mut body,
            ended,
        } = read;
        if ended {
            let etag = content_etag(&head);
            return Ok((head, None, etag));
        }
        let spool_failed = |err: std::io::Error| {
            Outcome::Failed(FileError::transient(
                ErrorCode::Internal,
                format!("spooling the document to a temporary file: {err}"),
            ))
        };
        let spool = tempfile::NamedTempFile::new().map_err(spool_failed)?;
        let mut file = tokio::io::BufWriter::with_capacity(
            1024 * 1024,
            tokio::fs::File::from_std(spool.reopen().map_err(spool_failed)?),
        );
        let mut hasher = blake3::Hasher::new();
        hasher.update(&head);
        let mut written = head.len() as u64;
        // A slow disk slows the stream, as a slow reader would.
        file.write_all(&head).await.map_err(spool_failed)?;
        drop(head);
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(Outcome::Failed)?;
            self.bytes_read += piece.len() as u64;
            written += piece.len() as u64;
            if written > max {
                return Err(Outcome::Skipped(
                    SkipReason::TooLarge,
                    format!("the object grew past documents.max_bytes ({max}) while being read"),
                ));
            }
            hasher.update(&piece);
            file.write_all(&piece).await.map_err(spool_failed)?;
        }
        file.flush().await.map_err(spool_failed)?;
        drop(file);
        let etag = format!("\"{}\"", &hasher.finalize().to_hex()[..32]);
        Ok((Vec::new(), Some(spool), etag))
    }
}
