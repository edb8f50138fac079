//! What symphonia does not say of a container: a video's frame rate, from the video track's
//! sample times in an MP4/MOV/3GP index (`stts`) or from Matroska's `DefaultDuration`; whether
//! an MP4 or Ogg file has
//! a video track at all (symphonia leaves out those it cannot decode); and how much of a WAV or
//! AIFF's sample data is really there. Best effort: anything unexpected gives no answer, never
//! an error (symphonia judges the file).

use std::io::{self, Read, Seek, SeekFrom};

/// Boxes or elements of an index in memory looked at before giving up.
const MAX_ELEMENTS: usize = 10_000;

/// Top-level boxes (or segment children) stepped over to find the index: each step may fetch
/// a block of a remote object, and real files have a handful.
const MAX_STEPS: usize = 64;

/// Frames a second a real video has at most; a higher figure is damage.
const MAX_RATE: f64 = 1000.0;

/// What the container says beyond what symphonia gives.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Layout {
    /// Frames a second of the video track.
    pub frame_rate: Option<f64>,
    /// The index has a video track (an MP4 `trak` whose handler is `vide`), or an Ogg stream
    /// starts with a video codec's header (Theora, Dirac, Daala, VP8).
    pub video_track: bool,
    /// A WAV or AIFF's sample data: where it starts and how many bytes its header says it has.
    pub data: Option<(u64, u64)>,
}

/// The layout of a `format` file (a name of [`crate::detect`]), reading at most
/// `max_index_bytes` of its index.
#[must_use]
pub fn layout<R: Read + Seek>(input: &mut R, format: &str, max_index_bytes: u64) -> Layout {
    let mut layout = Layout::default();
    let rate = match format {
        "mp4" | "m4v" | "m4a" | "mov" | "3gp" | "3g2" => {
            let mut found = None;
            // A read error keeps what was found before it.
            let _ = find_moov(input, max_index_bytes, &mut found);
            let moov = found.unwrap_or_default();
            layout.video_track = video_trak(&moov).is_some();
            iso_rate(&moov)
        }
        "mkv" | "webm" => matroska_rate(input, max_index_bytes).ok().flatten(),
        "ogg" | "opus" => {
            layout.video_track = ogg_video(input).unwrap_or(false);
            None
        }
        "wav" | "aiff" => {
            layout.data = sample_data(input, format).ok().flatten();
            None
        }
        _ => None,
    };
    // Rounded first: a rate that rounds to nothing is no rate.
    let frame_rate = rate
        .map(|rate| (rate * 1000.0).round() / 1000.0)
        .filter(|rate| rate.is_finite() && *rate > 0.0 && *rate <= MAX_RATE);
    Layout {
        frame_rate,
        ..layout
    }
}

/// The `mdia` of the first track whose handler is `vide`.
fn video_trak(moov: &[u8]) -> Option<&[u8]> {
    boxes(moov)
        .filter(|(kind, _)| kind == b"trak")
        .filter_map(|(_, trak)| child(trak, *b"mdia"))
        // hdlr: version and flags, pre_defined, then the handler type.
        .find(|mdia| child(mdia, *b"hdlr").and_then(|h| h.get(8..12)) == Some(b"vide"))
}

/// Pages at the start of an Ogg file looked at for the streams' first packets.
const MAX_OGG_PAGES: usize = 16;

/// Whether an Ogg file's first pages start a video stream: every stream's first page (its
/// "beginning of stream" page, all of them before any other) holds its codec's header.
fn ogg_video<R: Read + Seek>(input: &mut R) -> io::Result<bool> {
    input.seek(SeekFrom::Start(0))?;
    for _ in 0..MAX_OGG_PAGES {
        let mut header = [0_u8; 27];
        input.read_exact(&mut header)?;
        if &header[..4] != b"OggS" || header[5] & 0x02 == 0 {
            return Ok(false);
        }
        let mut lacing = vec![0_u8; usize::from(header[26])];
        input.read_exact(&mut lacing)?;
        let body: u64 = lacing.iter().map(|&n| u64::from(n)).sum();
        let mut first = [0_u8; 8];
        let take = usize::try_from(body.min(8)).unwrap_or(0);
        input.read_exact(&mut first[..take])?;
        let packet = &first[..take];
        if packet.starts_with(b"\x80theora")
            || packet.starts_with(b"\x80daala")
            || packet.starts_with(b"BBCD\0")
            || packet.starts_with(b"OVP80")
            || packet.starts_with(b"\x01video")
        {
            return Ok(true);
        }
        input.seek(SeekFrom::Current(
            i64::try_from(body - take as u64).map_err(io::Error::other)?,
        ))?;
    }
    Ok(false)
}

/// Where a WAV's `data` chunk (an AIFF's `SSND` samples) starts, and the bytes its header
/// gives it.
fn sample_data<R: Read + Seek>(input: &mut R, format: &str) -> io::Result<Option<(u64, u64)>> {
    let little = format == "wav";
    let (wanted, skip): (&[u8; 4], u64) = if little {
        (b"data", 0)
    } else {
        // SSND: an offset and a block size come before the samples.
        (b"SSND", 8)
    };
    let end = input.seek(SeekFrom::End(0))?;
    let mut at = 12_u64;
    for _ in 0..MAX_STEPS {
        if at.saturating_add(8) > end {
            return Ok(None);
        }
        input.seek(SeekFrom::Start(at))?;
        let mut header = [0_u8; 8];
        input.read_exact(&mut header)?;
        let size = [header[4], header[5], header[6], header[7]];
        let size = u64::from(if little {
            u32::from_le_bytes(size)
        } else {
            u32::from_be_bytes(size)
        });
        if &header[..4] == wanted {
            return Ok(Some((at + 8 + skip, size.saturating_sub(skip))));
        }
        // Chunks are padded to an even size.
        at = at.saturating_add(8).saturating_add(size + (size & 1));
    }
    Ok(None)
}

/// Finds the contents of the top-level `moov` box, wherever it is in the file, into `found`
/// (when within `max_bytes`).
fn find_moov<R: Read + Seek>(
    input: &mut R,
    max_bytes: u64,
    found: &mut Option<Vec<u8>>,
) -> io::Result<()> {
    let end = input.seek(SeekFrom::End(0))?;
    let mut at = 0_u64;
    for _ in 0..MAX_STEPS {
        if at.saturating_add(8) > end {
            return Ok(());
        }
        input.seek(SeekFrom::Start(at))?;
        let mut header = [0_u8; 16];
        input.read_exact(&mut header[..8])?;
        let kind = [header[4], header[5], header[6], header[7]];
        let (size, header_len) =
            match u32::from_be_bytes([header[0], header[1], header[2], header[3]]) {
                0 => (end - at, 8),
                1 => {
                    input.read_exact(&mut header[8..])?;
                    (
                        u64::from_be_bytes(header[8..16].try_into().unwrap_or_default()),
                        16,
                    )
                }
                size => (u64::from(size), 8),
            };
        if size < header_len {
            return Ok(());
        }
        if &kind == b"moov" {
            let body = size - header_len;
            if body <= max_bytes {
                let mut moov = Vec::new();
                input.take(body).read_to_end(&mut moov)?;
                *found = Some(moov);
            }
            return Ok(());
        }
        at = at.saturating_add(size);
    }
    Ok(())
}

/// The boxes inside `body`: (type, contents).
fn boxes(mut body: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    std::iter::from_fn(move || {
        let header = body.get(..8)?;
        let size = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let kind = [header[4], header[5], header[6], header[7]];
        let (size, header_len) = match size {
            0 => (body.len(), 8),
            1 => {
                let large = body.get(8..16)?;
                (
                    usize::try_from(u64::from_be_bytes(large.try_into().ok()?)).ok()?,
                    16,
                )
            }
            size => (usize::try_from(size).ok()?, 8),
        };
        let contents = body.get(header_len..size)?;
        body = &body[size..];
        Some((kind, contents))
    })
    .take(MAX_ELEMENTS)
}

fn child(body: &[u8], kind: [u8; 4]) -> Option<&[u8]> {
    boxes(body)
        .find(|(k, _)| *k == kind)
        .map(|(_, contents)| contents)
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// The first video track's frames a second: its media time scale over the frames' duration.
fn iso_rate(moov: &[u8]) -> Option<f64> {
    let mdia = video_trak(moov)?;
    let mdhd = child(mdia, *b"mdhd")?;
    let timescale = if mdhd.first() == Some(&1) {
        be_u32(mdhd, 20)?
    } else {
        be_u32(mdhd, 12)?
    };
    let stts = child(child(child(mdia, *b"minf")?, *b"stbl")?, *b"stts")?;
    let entries = be_u32(stts, 4)?;
    let (mut frames, mut ticks) = (0_u128, 0_u128);
    for entry in 0..usize::try_from(entries).ok()? {
        let at = 8 + entry * 8;
        let (count, delta) = (
            u128::from(be_u32(stts, at)?),
            u128::from(be_u32(stts, at + 4)?),
        );
        frames += count;
        ticks += count * delta;
    }
    (ticks > 0).then(|| frames as f64 * f64::from(timescale) / ticks as f64)
}

const SEGMENT: u32 = 0x1853_8067;
const TRACKS: u32 = 0x1654_AE6B;
const CLUSTER: u32 = 0x1F43_B675;
const TRACK_ENTRY: u32 = 0xAE;
const TRACK_TYPE: u32 = 0x83;
const DEFAULT_DURATION: u32 = 0x0023_E383;
const VIDEO_TRACK: u64 = 1;

/// An EBML variable-length integer: (value, length). An ID keeps its marker bit; a size drops
/// it, and a size of all ones is unknown (`None`).
fn vint(input: &mut impl Read, keep_marker: bool) -> io::Result<(Option<u64>, u64)> {
    let mut first = [0_u8; 1];
    input.read_exact(&mut first)?;
    let len = first[0].leading_zeros() + 1;
    if len > 8 {
        return Err(io::Error::other("bad EBML number"));
    }
    let mut value = u64::from(first[0]);
    if !keep_marker {
        value &= (1_u64 << (8 - len)) - 1;
    }
    let mut all_ones = value == (1_u64 << (8 - len)) - 1;
    for _ in 1..len {
        input.read_exact(&mut first)?;
        all_ones &= first[0] == 0xFF;
        value = (value << 8) | u64::from(first[0]);
    }
    let unknown = !keep_marker && all_ones;
    Ok(((!unknown).then_some(value), u64::from(len)))
}

/// The first video track's `DefaultDuration` (nanoseconds a frame) as frames a second, from
/// the `Tracks` before the first cluster.
fn matroska_rate<R: Read + Seek>(input: &mut R, max_bytes: u64) -> io::Result<Option<f64>> {
    input.seek(SeekFrom::Start(0))?;
    // The EBML header, then the segment, whose children are walked.
    let (_, _) = vint(input, true)?;
    let (Some(size), _) = vint(input, false)? else {
        return Ok(None);
    };
    input.seek(SeekFrom::Current(
        i64::try_from(size).map_err(io::Error::other)?,
    ))?;
    let (id, _) = vint(input, true)?;
    if id != Some(u64::from(SEGMENT)) {
        return Ok(None);
    }
    vint(input, false)?;
    for _ in 0..MAX_STEPS {
        let (id, _) = vint(input, true)?;
        let (size, _) = vint(input, false)?;
        match (id.and_then(|id| u32::try_from(id).ok()), size) {
            (Some(TRACKS), Some(size)) if size <= max_bytes => {
                let mut tracks = Vec::new();
                input.take(size).read_to_end(&mut tracks)?;
                return Ok(video_default_duration(&tracks).map(|ns| 1e9 / ns as f64));
            }
            (Some(CLUSTER), _) | (_, None) => return Ok(None),
            (_, Some(size)) => {
                input.seek(SeekFrom::Current(
                    i64::try_from(size).map_err(io::Error::other)?,
                ))?;
            }
        }
    }
    Ok(None)
}

/// The elements in `body`: (id, contents).
fn elements(body: &[u8]) -> Vec<(u64, &[u8])> {
    let mut found = Vec::new();
    let mut reader = io::Cursor::new(body);
    while found.len() < MAX_ELEMENTS {
        let Ok((Some(id), _)) = vint(&mut reader, true) else {
            break;
        };
        let Ok((Some(size), _)) = vint(&mut reader, false) else {
            break;
        };
        let start = usize::try_from(reader.position()).unwrap_or(usize::MAX);
        let Some(contents) = usize::try_from(size)
            .ok()
            .and_then(|size| body.get(start..start.checked_add(size)?))
        else {
            break;
        };
        found.push((id, contents));
        reader.set_position((start + contents.len()) as u64);
    }
    found
}

fn uint(bytes: &[u8]) -> Option<u64> {
    (bytes.len() <= 8).then(|| bytes.iter().fold(0, |n, b| (n << 8) | u64::from(*b)))
}

fn video_default_duration(tracks: &[u8]) -> Option<u64> {
    elements(tracks)
        .into_iter()
        .filter(|(id, _)| *id == u64::from(TRACK_ENTRY))
        .find_map(|(_, entry)| {
            let fields = elements(entry);
            let field = |wanted: u32| {
                fields
                    .iter()
                    .find(|(id, _)| *id == u64::from(wanted))
                    .and_then(|(_, value)| uint(value))
            };
            (field(TRACK_TYPE) == Some(VIDEO_TRACK))
                .then(|| field(DEFAULT_DURATION))
                .flatten()
        })
        .filter(|ns| *ns > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mp4_box(kind: [u8; 4], contents: &[u8]) -> Vec<u8> {
        let mut out = ((contents.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&kind);
        out.extend_from_slice(contents);
        out
    }

    /// A video track of `frames` frames of `delta` ticks at `timescale`, then a sound track.
    fn moov(timescale: u32, stts: &[(u32, u32)]) -> Vec<u8> {
        let mut mdhd = vec![0_u8; 12];
        mdhd.extend_from_slice(&timescale.to_be_bytes());
        mdhd.extend_from_slice(&[0; 8]);
        let mut table = vec![0_u8; 4];
        table.extend_from_slice(&(stts.len() as u32).to_be_bytes());
        for (count, delta) in stts {
            table.extend_from_slice(&count.to_be_bytes());
            table.extend_from_slice(&delta.to_be_bytes());
        }
        let track = |handler: [u8; 4]| {
            let mut hdlr = vec![0_u8; 8];
            hdlr.extend_from_slice(&handler);
            let stbl = mp4_box(*b"stbl", &mp4_box(*b"stts", &table));
            let mdia = [
                mp4_box(*b"mdhd", &mdhd),
                mp4_box(*b"hdlr", &hdlr),
                mp4_box(*b"minf", &stbl),
            ]
            .concat();
            mp4_box(*b"trak", &mp4_box(*b"mdia", &mdia))
        };
        // The sound track first: the video one must be picked by its handler.
        mp4_box(*b"moov", &[track(*b"soun"), track(*b"vide")].concat())
    }

    #[test]
    fn an_mp4_index_at_either_end_gives_the_video_frame_rate() {
        let mdat = mp4_box(*b"mdat", &[0; 5000]);
        let ftyp = mp4_box(*b"ftyp", b"isom");
        let constant = moov(12_800, &[(250, 512)]);
        for file in [
            [ftyp.clone(), mdat.clone(), constant.clone()].concat(),
            [ftyp.clone(), constant, mdat.clone()].concat(),
        ] {
            let layout = layout(&mut io::Cursor::new(file), "mp4", 1 << 20);
            assert_eq!(layout.frame_rate, Some(25.0));
            assert!(layout.video_track);
        }
        // 30000/1001, with one frame of another length: the mean.
        let ntsc = moov(30_000, &[(99, 1001), (1, 2002)]);
        let file = [ftyp.clone(), ntsc].concat();
        let rate = layout(&mut io::Cursor::new(file), "mov", 1 << 20)
            .frame_rate
            .unwrap();
        assert!((rate - 100.0 * 30_000.0 / (100.0 * 1001.0 + 1001.0)).abs() < 0.001);
        // An index over the limit, or a rate no video has, is not read.
        let file = [ftyp.clone(), moov(12_800, &[(250, 512)])].concat();
        assert_eq!(
            layout(&mut io::Cursor::new(file), "mp4", 64).frame_rate,
            None
        );
        // Past the steps a real file takes to reach its index: not looked for.
        let free = mp4_box(*b"free", &[0; 16]);
        let file = [
            vec![ftyp.clone()],
            vec![free; MAX_STEPS],
            vec![moov(12_800, &[(250, 512)])],
        ]
        .concat()
        .concat();
        assert_eq!(
            layout(&mut io::Cursor::new(file), "mp4", 1 << 20).frame_rate,
            None
        );
        let file = [ftyp.clone(), moov(1_000_000, &[(10, 1)])].concat();
        assert_eq!(
            layout(&mut io::Cursor::new(file), "mp4", 1 << 20).frame_rate,
            None
        );
        // Nor one that rounds to nothing (found by the fuzzer).
        let file = [ftyp, moov(1, &[(1, 10_000)])].concat();
        assert_eq!(
            layout(&mut io::Cursor::new(file), "mp4", 1 << 20).frame_rate,
            None
        );
    }

    fn element(id: &[u8], contents: &[u8]) -> Vec<u8> {
        let mut out = id.to_vec();
        out.push(0x80 | contents.len() as u8);
        out.extend_from_slice(contents);
        out
    }

    #[test]
    fn matroska_default_duration_gives_the_frame_rate() {
        let header = element(&[0x1A, 0x45, 0xDF, 0xA3], &element(&[0x42, 0x82], b"webm"));
        let audio = element(&[0xAE], &element(&[0x83], &[2]));
        let video = element(
            &[0xAE],
            &[
                element(&[0x83], &[1]),
                element(&[0x23, 0xE3, 0x83], &40_000_000_u32.to_be_bytes()),
            ]
            .concat(),
        );
        let tracks = element(&[0x16, 0x54, 0xAE, 0x6B], &[audio, video].concat());
        let info = element(&[0x15, 0x49, 0xA9, 0x66], &[0; 10]);
        // A segment of unknown size, as live recorders write it.
        let mut segment = vec![
            0x18, 0x53, 0x80, 0x67, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
        ];
        segment.extend_from_slice(&[info, tracks].concat());
        let file = [header, segment].concat();
        assert_eq!(
            layout(&mut io::Cursor::new(file.clone()), "webm", 1 << 20).frame_rate,
            Some(25.0)
        );
        // Cut inside the tracks: no rate, no error.
        let cut = file[..file.len() - 3].to_vec();
        assert_eq!(
            layout(&mut io::Cursor::new(cut), "mkv", 1 << 20).frame_rate,
            None
        );
    }
}
