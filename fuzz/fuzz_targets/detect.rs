//! Format detection of any bytes under any name: never panics, and what it calls text is in
//! the text family.
#![no_main]

use ingestd::detect::{self, Family};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for name in ["a.txt", "a.mp3", "a.png", "a.csv", "a"] {
        let detected = detect::detect(data, None, name);
        if detected.text_hint.is_some() {
            assert_eq!(detected.format.family(), Family::Text);
        }
    }
});
