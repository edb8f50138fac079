//! The reader of what symphonia does not say (frame rate, video tracks, a WAV or AIFF's sample
//! data), on any bytes taken as each container it reads: never panics and never loops
//! (libFuzzer reports both). Any rate it gives is one a video can have.
#![no_main]

use std::io::Cursor;

use ingestd::extract::frames::layout;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for format in ["mp4", "mkv", "ogg", "wav", "aiff"] {
        let found = layout(&mut Cursor::new(data), format, 1 << 20);
        if let Some(rate) = found.frame_rate {
            assert!(rate > 0.0 && rate <= 1000.0, "{rate}");
        }
    }
});
