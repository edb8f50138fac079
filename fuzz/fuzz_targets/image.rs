//! Image description (header, EXIF) of any bytes detected as an image, as the pipeline does
//! it: never panics, and never claims more pixels than allowed.
#![no_main]

use ingestd::detect::{self, Family};
use ingestd::extract::image;
use libfuzzer_sys::fuzz_target;

const MAX_PIXELS: u64 = 100_000_000;

fuzz_target!(|data: &[u8]| {
    let detected = detect::detect(data, None, "image");
    if detected.format.family() != Family::Image {
        return;
    }
    if let Ok(media) = image::describe(data, detected.format.name(), MAX_PIXELS, true) {
        let (w, h) = (media.width.unwrap_or(0), media.height.unwrap_or(0));
        assert!(u64::from(w) * u64::from(h) <= MAX_PIXELS);
    }
});
