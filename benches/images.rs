//! Image metadata records per second: `ingestd sync` over a folder of mixed images (JPEG, PNG,
//! GIF, BMP, TIFF, ICO of 64 px to 3000 px a side), which reads each header and decodes no
//! pixel, against decoding every image whole with the same decoders (`image::load_from_memory`
//! on one core, in this process) — what describing would cost if it decoded. Both are measured
//! in the same run.
//!
//! The process's start (about 0.1 s, mostly building the tokenizer) is measured on an empty
//! folder and taken off. The two 20 MB TIFFs keep their directory at the end, so they are read
//! whole; every other image is described from its first 4 MiB at most.
//!
//! Run: `cargo bench --bench images`.

mod common;

use std::io::Cursor;
use std::process::Command;
use std::time::Instant;

use common::median;
use image::{ImageFormat, RgbImage};

const RUNS: usize = 5;

fn main() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let (files, bytes) = write_images(folder.path());
    let count = files.len();
    println!(
        "image bench: {count} images, {:.1} MB, median of {RUNS}",
        bytes as f64 / 1e6
    );

    let empty = tempfile::tempdir().expect("temporary folder");
    let mut described = Vec::new();
    let mut decoded = Vec::new();
    let mut started_up = Vec::new();
    for _ in 0..RUNS {
        // The process's own start (the tokenizer is built before any file is read).
        let started = Instant::now();
        let status = Command::new(env!("CARGO_BIN_EXE_ingestd"))
            .args(["sync", empty.path().to_str().expect("a UTF-8 path")])
            .env_remove("RUST_LOG")
            .output()
            .expect("running ingestd")
            .status;
        assert!(status.success());
        started_up.push(started.elapsed());

        let started = Instant::now();
        let output = Command::new(env!("CARGO_BIN_EXE_ingestd"))
            .args([
                "sync",
                folder.path().to_str().expect("a UTF-8 path"),
                "--concurrency",
                "1",
            ])
            .env_remove("RUST_LOG")
            .output()
            .expect("running ingestd");
        described.push(started.elapsed());
        let stderr = String::from_utf8_lossy(&output.stderr);
        let failures: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("FILE_ERROR"))
            .collect();
        assert!(
            output.status.success(),
            "ingestd sync failed: {failures:#?}"
        );
        let records = memchr::memchr_iter(b'\n', &output.stdout).count();
        assert_eq!(records, count, "one record per image");

        let started = Instant::now();
        for file in &files {
            let image = image::load_from_memory(file).expect("decoding");
            std::hint::black_box(image);
        }
        decoded.push(started.elapsed());
    }
    let (whole_run, decode) = (median(&mut described), median(&mut decoded));
    let startup = median(&mut started_up);
    let describe = whole_run.saturating_sub(startup);
    println!(
        "ingestd sync: {:.3} s, of which {:.3} s is the process starting; describing {:.3} s, {:.0} records/s",
        whole_run.as_secs_f64(),
        startup.as_secs_f64(),
        describe.as_secs_f64(),
        count as f64 / describe.as_secs_f64()
    );
    println!(
        "decoding every image whole, in process:               {:.3} s, {:.0} images/s",
        decode.as_secs_f64(),
        count as f64 / decode.as_secs_f64()
    );
    println!(
        "describing is {:.1}x faster than decoding",
        decode.as_secs_f64() / describe.as_secs_f64()
    );
}

/// Writes the mixed images into `folder`: their encoded bytes, and their total size.
fn write_images(folder: &std::path::Path) -> (Vec<Vec<u8>>, usize) {
    let formats = [
        (ImageFormat::Jpeg, "jpg"),
        (ImageFormat::Png, "png"),
        (ImageFormat::Gif, "gif"),
        (ImageFormat::Bmp, "bmp"),
        (ImageFormat::Tiff, "tiff"),
    ];
    let sides = [64u32, 256, 1024, 3000];
    let mut bytes = 0;
    let mut files = Vec::new();
    for (i, &side) in sides.iter().cycle().take(40).enumerate() {
        let (format, extension) = formats[i % formats.len()];
        let side = if format == ImageFormat::Gif {
            side.min(1024)
        } else {
            side
        };
        let image = RgbImage::from_fn(side, side * 3 / 4, |x, y| {
            image::Rgb([
                (x % 251) as u8,
                (y % 241) as u8,
                ((x * y + i as u32) % 239) as u8,
            ])
        });
        let mut encoded = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut encoded), format)
            .expect("encoding");
        bytes += encoded.len();
        let path = folder.join(format!("image-{i:02}.{extension}"));
        std::fs::write(&path, &encoded).expect("image");
        files.push(encoded);
    }
    for i in 0..10 {
        let icon = image::RgbaImage::from_fn(32, 32, |x, y| {
            image::Rgba([x as u8 * 8, y as u8 * 8, i * 20, 255])
        });
        let mut encoded = Vec::new();
        icon.write_to(&mut Cursor::new(&mut encoded), ImageFormat::Ico)
            .expect("encoding");
        bytes += encoded.len();
        std::fs::write(folder.join(format!("icon-{i}.ico")), &encoded).expect("icon");
        files.push(encoded);
    }
    (files, bytes)
}
