//! Images: one record describing the image, or its recognised text with `use_ocr`.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;

use super::{
    Detected, Emitter, FileError, Outcome, Processing, SEGMENT_BYTES, content_etag, file_info,
};
use crate::error::ErrorCode;
use crate::extract::{self, Rejection};

impl Processing {
    /// An image: one record with its facts in `media` and no text, or with `use_ocr` the
    /// recognised text chunked like any text, each record carrying `media`.
    pub(super) async fn describe_image(
        &mut self,
        mut head: Vec<u8>,
        mut body: BoxStream<'static, Result<Bytes, FileError>>,
        ended: bool,
        detected: Detected,
        out: &Emitter,
    ) -> Outcome {
        let format = detected.format.name();
        let ocr = self
            .request
            .ocr
            .clone()
            .filter(|_| extract::ocr::readable(format));
        // Described from the head alone; OCR needs the whole image.
        let mut whole = ended;
        if ocr.is_some() {
            if let Err(err) = self.read_whole_image(&mut head, &mut body, ended).await {
                return Outcome::Failed(err);
            }
            whole = true;
        }
        let (media, file, image) = loop {
            let (mut object, kind, request) =
                (self.object.clone(), self.kind, Arc::clone(&self.request));
            let slot = self.cpu_slot().await;
            let work = tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let described = extract::image::describe(
                    &head,
                    format,
                    request.max_image_pixels,
                    request.image_gps,
                );
                crate::telemetry::timed(crate::telemetry::Stage::Extract, started.elapsed());
                drop(slot);
                if object.etag.is_none() {
                    object.etag = Some(content_etag(&head));
                }
                Ok((described, file_info(&object, detected, kind), head))
            });
            match self.blocking(work).await {
                Ok((Ok(media), file, image)) => break (media, file, image),
                // A header that is not at the start (many TIFFs keep their directory at the
                // end): read the rest, within images.max_read_bytes, and look again.
                Ok((Err(Rejection::Error(corrupt)), _, image))
                    if corrupt.code == ErrorCode::CorruptFile && !whole =>
                {
                    head = image;
                    match self.read_whole_image(&mut head, &mut body, false).await {
                        Ok(()) => whole = true,
                        // Too large to search: it stays a header that does not parse.
                        Err(err) if err.code == ErrorCode::LimitExceeded => {
                            return Outcome::Failed(FileError {
                                message: format!(
                                    "{} (not found in the first {} bytes; the rest is over \
                                     images.max_read_bytes)",
                                    corrupt.message, SEGMENT_BYTES
                                ),
                                ..corrupt
                            });
                        }
                        Err(err) => return Outcome::Failed(err),
                    }
                }
                Ok((Err(rejection), _, _)) => return rejection.into(),
                Err(err) => return Outcome::Failed(err),
            }
        };
        drop(body);
        let text = match &ocr {
            Some(ocr) => {
                // Tesseract runs on one core: it takes a CPU slot like any decoder.
                let slot = self.cpu_slot().await;
                let recognised = ocr.recognise(&image).await;
                drop(slot);
                match recognised {
                    Ok(text) => text,
                    Err(err) => return Outcome::Failed(err),
                }
            }
            None => String::new(),
        };
        drop(image);
        if !text.is_empty() {
            return self
                .cut_recognised(text, file, media, Vec::new(), out)
                .await;
        }
        self.send_media_record(file, media, out).await
    }

    /// Reads the rest of an image into `head` (for OCR, or a header not at its start), up to
    /// `max_image_read_bytes`.
    async fn read_whole_image(
        &mut self,
        head: &mut Vec<u8>,
        body: &mut BoxStream<'static, Result<Bytes, FileError>>,
        ended: bool,
    ) -> Result<(), FileError> {
        let limit = self.request.max_image_read_bytes;
        let cap = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        let whole = ended || self.fill(body, head, cap).await?;
        if whole && head.len() as u64 <= limit {
            return Ok(());
        }
        Err(FileError::permanent(
            ErrorCode::LimitExceeded,
            format!(
                "the image is over images.max_read_bytes ({limit}); it is not read whole (for \
                 OCR, or to find a header that is not at its start)"
            ),
        ))
    }
}
