//! The text family through the stages: streamed when it can be, else read whole and parsed.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use super::{
    Cursor, Detected, Emitter, FileError, MAX_SEGMENT_BYTES, Outcome, Processing, Read,
    SEGMENT_BYTES, Segment, content_etag, cut, cut_whole, file_info,
};
use crate::detect::{Family, TextHint};
use crate::error::SkipReason;
use crate::extract::{self, StreamDecoder};

impl Processing {
    /// Text of a text format: streamed through the chunker when it can be decoded piece by
    /// piece, else read whole (within `limits.max_text_object_bytes`) and parsed.
    pub(super) async fn read_text(
        &mut self,
        read: Read,
        detected: Detected,
        charset: Option<String>,
        out: &Emitter,
    ) -> Outcome {
        let Read {
            mut head,
            mut body,
            ended,
        } = read;
        let hint = detected.text_hint.unwrap_or(TextHint::Bytes);
        let text = detected.format.family() == Family::Text;
        // A large text object streams when its format is taken as it is and its encoding can
        // be decoded piece by piece (not UTF-32); anything else is parsed whole.
        let streamable = extract::streamable(detected.format);
        let stream = match streamable {
            Some(structure) if text && !ended => {
                StreamDecoder::for_head(&head, hint, charset.as_deref())
                    .map(|decoder| (structure, decoder))
            }
            _ => None,
        };
        let parsed_whole = text && streamable.is_none();
        let read_whole = parsed_whole || (text && !ended && stream.is_none());
        let limit = self.request.max_text_object_bytes;
        if read_whole && self.object.size.max(head.len() as u64) > limit {
            let why = if parsed_whole {
                format!("{}, which is parsed whole", detected.format.name())
            } else {
                "text in an encoding that is decoded whole (UTF-32)".to_owned()
            };
            return Outcome::Skipped(
                SkipReason::TooLarge,
                format!(
                    "the object is {} bytes of {why}, over limits.max_text_object_bytes ({limit})",
                    self.object.size
                ),
            );
        }
        if let Some((structure, decoder)) = stream {
            return self
                .stream(head, body, decoder, structure, detected, out)
                .await
                .unwrap_or_else(Outcome::Failed);
        }
        if !ended && text {
            let cap = usize::try_from(limit)
                .unwrap_or(usize::MAX)
                .saturating_add(1);
            match self.fill(&mut body, &mut head, cap).await {
                Ok(true) if head.len() as u64 <= limit => {}
                Ok(_) => {
                    return Outcome::Skipped(
                        SkipReason::TooLarge,
                        format!(
                            "the object grew past limits.max_text_object_bytes ({limit}) while being read"
                        ),
                    );
                }
                Err(err) => return Outcome::Failed(err),
            }
        }
        drop(body);
        self.object.size = head.len() as u64;
        let (object, kind, request) = (self.object.clone(), self.kind, Arc::clone(&self.request));
        let sender = out.clone();
        let slot = self.cpu_slot().await;
        let work = tokio::task::spawn_blocking(move || -> Result<Outcome, FileError> {
            let extracted =
                match extract::extract(&head, detected, charset.as_deref(), request.max_text_bytes)
                {
                    Ok(extracted) => extracted,
                    Err(rejection) => return Ok(rejection.into()),
                };
            let mut object = object;
            if object.etag.is_none() {
                object.etag = Some(content_etag(&head));
            }
            let file = file_info(&object, detected, kind);
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

    /// Streams text through the chunker segment by segment: memory is bounded by
    /// [`SEGMENT_BYTES`], not by the object's size.
    async fn stream(
        &mut self,
        head: Vec<u8>,
        mut body: BoxStream<'static, Result<Bytes, FileError>>,
        mut decoder: StreamDecoder,
        structure: crate::chunk::Structure,
        detected: Detected,
        out: &Emitter,
    ) -> Result<Outcome, FileError> {
        let file = Arc::new(file_info(&self.object, detected, self.kind));
        let mut text = String::with_capacity(SEGMENT_BYTES + SEGMENT_BYTES / 4);
        decoder.push(&head, false, &mut text)?;
        drop(head);
        let mut at = Cursor::default();
        // Text to gather before cutting; it grows when a cut could not tell where its chunks
        // end (a segment of one or two chunks), up to a cap where the cut is forced.
        let mut want = SEGMENT_BYTES;
        loop {
            let mut ended = false;
            while text.len() < want {
                let Some(piece) = body.next().await else {
                    decoder.push(&[], true, &mut text)?;
                    ended = true;
                    break;
                };
                let piece = piece?;
                self.bytes_read += piece.len() as u64;
                decoder.push(&piece, false, &mut text)?;
            }
            let (request, file, sender) =
                (Arc::clone(&self.request), Arc::clone(&file), out.clone());
            let last = ended || text.len() >= MAX_SEGMENT_BYTES;
            let slot = self.cpu_slot().await;
            let work = tokio::task::spawn_blocking(move || {
                let segment = Segment {
                    last,
                    ..Segment::whole(&text, structure)
                };
                let done = cut(&segment, &file, &request, &mut at, slot, &sender)?;
                text.drain(..done);
                Ok((text, at, done))
            });
            let done;
            (text, at, done) = self.blocking(work).await?;
            self.emitted = at.index;
            want = if done == 0 {
                text.len() + SEGMENT_BYTES
            } else {
                SEGMENT_BYTES
            };
            if ended {
                return Ok(Outcome::Ready {
                    chunks: at.index,
                    tokens: at.tokens,
                });
            }
        }
    }
}
