//! Audio and video through the real binary: described as ffprobe describes them, transcribed
//! through a local provider speaking OpenAI's wire format with the time of each chunk's speech,
//! and every broken or hostile recording classified while the next file goes on.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use common::transcribe::{API_KEY, Fault, Provider};
use common::{assert_exit, fixture, ingestd, ingestd_with, lines, outcome};
use serde_json::Value;

const KEY_VAR: &str = "INGESTD_TEST_TRANSCRIPTION_KEY";

fn json(relative: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(relative)).unwrap()).unwrap()
}

/// Runs `sync` in `dir` with `[transcription]` pointed at `provider` and `extra` config.
fn transcribe(dir: &Path, provider: &Provider, extra: &str, args: &[&str]) -> Output {
    std::fs::write(
        dir.join("pipeline.toml"),
        format!(
            "[transcription]\nurl = \"{}\"\napi_key_env = \"{KEY_VAR}\"\nlanguage = \"en\"\n\
             max_attempts = 3\n{extra}",
            provider.url()
        ),
    )
    .unwrap();
    let mut all = vec!["sync"];
    all.extend_from_slice(args);
    ingestd_with(dir, &all, &[(KEY_VAR, API_KEY)])
}

/// Where the fixture recording's two sentences are audible (ms), found in the original WAV
/// by the same detector the provider runs on what it is sent: any difference is ingestd's
/// (decoding, resampling, cutting into pieces, putting the pieces' times together).
#[allow(clippy::cast_sign_loss)]
fn sentences() -> Vec<(u64, u64)> {
    let bytes = std::fs::read(fixture("audio/speech/speech.wav")).unwrap();
    let (rate, channels, samples) = common::transcribe::wav(&bytes).unwrap();
    assert_eq!(channels, 1);
    let runs: Vec<_> = common::transcribe::speech(&samples, rate)
        .into_iter()
        .map(|(start, end)| {
            (
                (start * 1000.0).round() as u64,
                (end * 1000.0).round() as u64,
            )
        })
        .collect();
    // As the fixture script built it: two sentences 2 s apart, the first at 0.5 s.
    assert_eq!(runs.len(), 2, "{runs:?}");
    let built = json("audio/speech.json");
    assert_eq!(
        runs[0].0,
        built["sentences"][0]["start_ms"].as_u64().unwrap()
    );
    runs
}

#[test]
fn audio_and_video_are_described_as_ffprobe_describes_them() {
    let dir = tempfile::tempdir().unwrap();
    let probe = json("audio/probe.json");
    let true_ms = json("audio/speech.json")["duration_ms"].as_u64().unwrap();
    for folder in ["speech", "video"] {
        let path = fixture(&format!("audio/{folder}"));
        let out = ingestd(dir.path(), &["sync", path.to_str().unwrap()]);
        assert_exit(&out, 0);
        let records = lines(&out.stdout);
        let events = lines(&out.stderr);
        let expected = probe.as_object().unwrap();
        let mine: Vec<_> = expected
            .keys()
            .filter(|k| k.starts_with(&format!("{folder}/")))
            .collect();
        assert_eq!(records.len(), mine.len(), "one record per file");
        for name in mine {
            let key = name.split_once('/').unwrap().1;
            let said = &expected[name.as_str()];
            let record = records.iter().find(|r| r["file"]["key"] == key).unwrap();
            let media = &record["media"];
            assert_eq!(record["text"], "", "{key}");
            assert_eq!(record["token_count"], 0, "{key}");
            assert_eq!(media["sample_rate"], said["sample_rate"], "{key}: {media}");
            assert_eq!(media["channels"], said["channels"], "{key}: {media}");
            let audio_codec = if folder == "video" {
                &media["audio_codec"]
            } else {
                &media["codec"]
            };
            assert_eq!(audio_codec, &said["codec"], "{key}: {media}");
            for tag in ["title", "artist", "album"] {
                assert_eq!(
                    media["tags"].get(tag),
                    said["tags"].get(tag),
                    "{key}: {tag}"
                );
            }
            // Against the recording's true length (ffprobe only estimates ADTS AAC's from
            // its bitrate); containers with a video track are as long as their longest track.
            let ms = media["duration_ms"].as_u64().unwrap();
            let reference = if folder == "video" {
                said["duration_ms"].as_u64().unwrap()
            } else {
                true_ms
            };
            assert!(
                ms.abs_diff(reference) <= 120,
                "{key}: {ms} ms, not {reference}"
            );
            if folder == "video" {
                assert_eq!(record["file"]["media_type"], "VIDEO", "{key}");
                assert_eq!(media["width"], said["width"], "{key}");
                assert_eq!(media["height"], said["height"], "{key}");
                assert_eq!(media["codec"], said["video_codec"], "{key}");
                assert_eq!(media["frame_rate"], said["frame_rate"], "{key}: {media}");
            } else {
                assert_eq!(record["file"]["media_type"], "AUDIO", "{key}");
                assert!(media.get("frame_rate").is_none(), "{key}: {media}");
            }
            let ready = outcome(&events, key);
            assert_eq!(ready["event"], "FILE_READY", "{key}");
            assert!(
                ready["message"]
                    .as_str()
                    .unwrap()
                    .contains("no transcription provider is configured"),
                "{ready}"
            );
        }
    }
}

#[test]
fn other_containers_are_described_by_ffprobe_or_skipped_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let probe = json("audio/probe.json");
    let folder = fixture("audio/ffprobe");
    let out = ingestd(dir.path(), &["sync", folder.to_str().unwrap()]);
    assert_exit(&out, 0);
    let records = lines(&out.stdout);
    assert_eq!(records.len(), 4);
    for record in &records {
        let key = record["file"]["key"].as_str().unwrap();
        let said = &probe[format!("ffprobe/{key}").as_str()];
        let media = &record["media"];
        assert_eq!(record["file"]["media_type"], "VIDEO", "{key}");
        for (mine, theirs) in [
            ("width", "width"),
            ("height", "height"),
            ("codec", "video_codec"),
            ("audio_codec", "codec"),
            ("sample_rate", "sample_rate"),
            ("channels", "channels"),
            ("frame_rate", "frame_rate"),
        ] {
            assert_eq!(
                media[mine].as_f64(),
                said[theirs].as_f64(),
                "{key}: {mine}: {media}"
            );
            assert_eq!(
                media[mine].as_str(),
                said[theirs].as_str(),
                "{key}: {mine}: {media}"
            );
        }
        // (An MPEG program stream says its length only in its last timestamps: ffprobe seeks
        // to the end for them.)
        let ms = media["duration_ms"].as_u64().unwrap();
        assert!(
            ms.abs_diff(said["duration_ms"].as_u64().unwrap()) <= 150,
            "{key}: {ms}"
        );
    }
    // Without ffprobe: recognised, and skipped saying what to install.
    std::fs::write(
        dir.path().join("pipeline.toml"),
        "[media]\nffprobe = \"/nonexistent/ffprobe\"\n",
    )
    .unwrap();
    let out = ingestd(dir.path(), &["sync", folder.to_str().unwrap()]);
    assert_exit(&out, 0);
    let events = lines(&out.stderr);
    let skipped = outcome(&events, "clip.avi");
    assert_eq!(skipped["reason"], "UNSUPPORTED_FORMAT", "{skipped}");
    assert!(
        skipped["message"]
            .as_str()
            .unwrap()
            .contains("install ffmpeg")
    );
    // An ffprobe that answers without end: what is past the limit is read and dropped, and the
    // file fails.
    let chatty = common::program(
        &dir.path().join("chatty-ffprobe"),
        "cat > /dev/null\nhead -c 50000000 /dev/zero | tr '\\0' ' '",
    );
    std::fs::write(
        dir.path().join("pipeline.toml"),
        format!("[media]\nffprobe = \"{}\"\n", chatty.display()),
    )
    .unwrap();
    let out = ingestd(dir.path(), &["sync", folder.to_str().unwrap()]);
    assert_exit(&out, 3);
    let events = lines(&out.stderr);
    let failed = outcome(&events, "clip.avi");
    assert_eq!(failed["error_code"], "CORRUPT_FILE", "{failed}");
    assert!(
        failed["message"].as_str().unwrap().contains("too large"),
        "{failed}"
    );
}

#[test]
fn whatever_reads_a_file_it_is_described_as_what_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let probe = json("audio/probe.json");
    let folder = fixture("audio/elsewhere");
    let out = ingestd(dir.path(), &["sync", folder.to_str().unwrap()]);
    assert_exit(&out, 0);
    let records = lines(&out.stdout);
    let events = lines(&out.stderr);
    let expected: Vec<&String> = probe
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("elsewhere/"))
        .collect();
    assert_eq!(records.len(), expected.len(), "one record per file");
    for record in &records {
        let key = record["file"]["key"].as_str().unwrap();
        let said = &probe[format!("elsewhere/{key}").as_str()];
        let media = &record["media"];
        let video = said.get("width").is_some();
        assert_eq!(
            record["file"]["media_type"],
            if video { "VIDEO" } else { "AUDIO" },
            "{key}: {media}"
        );
        let mut fields = vec![("sample_rate", "sample_rate"), ("channels", "channels")];
        if video {
            fields.extend([
                ("width", "width"),
                ("height", "height"),
                ("codec", "video_codec"),
                ("frame_rate", "frame_rate"),
                ("audio_codec", "codec"),
            ]);
        } else {
            fields.push(("codec", "codec"));
        }
        for (mine, theirs) in fields {
            assert_eq!(media.get(mine), said.get(theirs), "{key}: {mine}: {media}");
        }
        // The length where the container says it (a FLIC does not), else none.
        match said.get("duration_ms") {
            Some(ms) => {
                let (ms, mine) = (ms.as_u64().unwrap(), media["duration_ms"].as_u64().unwrap());
                assert!(ms.abs_diff(mine) <= 150, "{key}: {mine} ms, not {ms}");
            }
            None => assert!(media.get("duration_ms").is_none(), "{key}: {media}"),
        }
        let ready = outcome(&events, key);
        assert_eq!(ready["event"], "FILE_READY", "{key}: {ready}");
    }
}

#[test]
fn durations_are_what_the_media_holds_not_what_the_header_claims() {
    let dir = tempfile::tempdir().unwrap();
    let true_ms = json("audio/speech.json")["duration_ms"].as_u64().unwrap();
    let folder = fixture("audio/durations");
    let out = ingestd(dir.path(), &["sync", folder.to_str().unwrap()]);
    assert_exit(&out, 0);
    let records = lines(&out.stdout);
    assert_eq!(records.len(), 2);
    for record in &records {
        let key = record["file"]["key"].as_str().unwrap();
        let ms = record["media"]["duration_ms"].as_u64().unwrap();
        assert!(ms.abs_diff(true_ms) <= 150, "{key}: {ms} ms, not {true_ms}");
        assert_eq!(record["file"]["media_type"], "AUDIO", "{key}");
    }
    // The duration limit holds against what is there: the WAV's header claims twice the
    // limit, its samples are within it; then a limit below them.
    let half = folder.join("half.wav");
    for (limit_secs, event) in [
        (true_ms / 1000 + 2, "FILE_READY"),
        (true_ms / 2000, "FILE_ERROR"),
    ] {
        std::fs::write(
            dir.path().join("pipeline.toml"),
            format!("[limits]\nmax_media_duration_secs = {limit_secs}\n"),
        )
        .unwrap();
        let out = ingestd(dir.path(), &["sync", half.to_str().unwrap()]);
        let events = lines(&out.stderr);
        let got = outcome(&events, "half.wav");
        assert_eq!(got["event"], event, "limit {limit_secs} s: {got}");
        if event == "FILE_ERROR" {
            assert_eq!(got["error_code"], "LIMIT_EXCEEDED", "{got}");
        }
    }
}

#[test]
fn transcripts_carry_the_time_of_the_speech_in_each_chunk() {
    let provider = Provider::start();
    let dir = tempfile::tempdir().unwrap();
    let spoken = sentences();
    // 6 s pieces: the 9.4 s recording is cut once, in the pause between its two sentences.
    // (file, largest error in ms, audio heard at least; an AMR's last half second is comfort
    // noise ffmpeg does not decode, and nothing after it says how long it lasts)
    for (file, max_error_ms, whole_ms) in [
        ("speech/speech.wav", 100, 9000),
        ("speech/speech.flac", 100, 9000),
        ("speech/speech.mp3", 150, 9000),
        ("speech/speech.m4a", 150, 9000),
        ("video/clip.mp4", 150, 9000),
        // Decoded by ffmpeg: Opus, which symphonia has no decoder for, and the soundtracks of
        // containers it does not read.
        ("speech/speech.opus", 100, 9000),
        ("speech/speech.webm", 100, 9000),
        ("video/clip.webm", 100, 9000),
        ("ffprobe/clip.avi", 100, 9000),
        ("ffprobe/clip.flv", 100, 9000),
        ("ffprobe/clip.wmv", 100, 9000),
        ("ffprobe/clip.mpg", 100, 9000),
        // AC-3, which symphonia has no decoder for, in an MP4 whose index comes first.
        ("foreign/ac3-faststart.mp4", 100, 9000),
        // Opus, then MP3: the MP3 track is decoded here.
        ("foreign/two-tracks.mkv", 100, 9000),
        // AMR, described by ffprobe and decoded by ffmpeg around its comfort-noise frames.
        ("foreign/speech.amr", 150, 8000),
        // Containers and codecs symphonia does not read, and videos whose picture it does not
        // describe: decoded by ffmpeg, or by symphonia where it reads the sound.
        ("elsewhere/clip.ts", 150, 9000),
        ("elsewhere/clip.3gp", 150, 8000),
        ("elsewhere/clip.3g2", 150, 9000),
        ("elsewhere/speech.ac3", 150, 9000),
        ("elsewhere/speech.eac3", 150, 9000),
        ("elsewhere/alaw.aifc", 100, 9000),
        ("elsewhere/ulaw.aifc", 100, 9000),
        ("elsewhere/speech.spx", 150, 9000),
        ("elsewhere/clip.ogv", 150, 9000),
        ("elsewhere/hevc.mov", 150, 9000),
        ("elsewhere/prores.mov", 100, 9000),
    ] {
        let before = provider.seen().len();
        let path = fixture(&format!("audio/{file}"));
        let out = transcribe(
            dir.path(),
            &provider,
            "max_piece_secs = 6\n[limits]\nmax_media_secs = 60\n",
            &[
                path.to_str().unwrap(),
                "--chunk-size",
                "12",
                "--chunk-overlap",
                "0",
            ],
        );
        assert_exit(&out, 0);
        let seen = &provider.seen()[before..];
        assert_eq!(seen.len(), 2, "{file}: two pieces");
        if file == "foreign/two-tracks.mkv" {
            // The second track, the one symphonia decodes.
            assert_eq!(lines(&out.stdout)[0]["media"]["codec"], "mp3");
        }
        let mut start = 0;
        for piece in seen {
            assert_eq!(piece.format, Some((16_000, 1)), "{file}: 16 kHz mono");
            assert!(
                piece.samples <= 6 * 16_000,
                "{file}: {} samples",
                piece.samples
            );
            assert_eq!(piece.fields["response_format"], "verbose_json");
            assert_eq!(piece.fields["language"], "en");
            start += piece.samples;
        }
        let cut_ms = (seen[0].samples * 1000 / 16_000) as u64;
        assert!(
            spoken[0].1 < cut_ms && cut_ms < spoken[1].0,
            "{file}: cut at {cut_ms} ms, inside a sentence {spoken:?}"
        );
        assert!(
            start as u64 > whole_ms * 16,
            "{file}: the whole recording was sent"
        );
        let records = lines(&out.stdout);
        assert_eq!(records.len(), 2, "{file}: one chunk per sentence here");
        for (record, (from, to)) in records.iter().zip(&spoken) {
            let range = record["time_range_ms"].as_array().unwrap();
            let (start, end) = (range[0].as_u64().unwrap(), range[1].as_u64().unwrap());
            eprintln!("{file}: heard {start}-{end} ms, spoken {from}-{to} ms");
            assert!(
                start.abs_diff(*from) <= max_error_ms && end.abs_diff(*to) <= max_error_ms,
                "{file}: {start}-{end} ms, not {from}-{to}"
            );
            assert!(
                record["text"].as_str().unwrap().starts_with("Passage 0"),
                "{record}"
            );
            assert!(record["token_count"].as_u64().unwrap() > 0);
            assert_eq!(record["media"]["language"], "english");
            // (ffprobe estimates an AMR's length from its bitrate.)
            assert!(record["media"]["duration_ms"].as_u64().unwrap() > whole_ms);
        }
        let events = lines(&out.stderr);
        let key = Path::new(file).file_name().unwrap().to_str().unwrap();
        let ready = outcome(&events, key);
        assert_eq!(ready["chunk_count"], 2, "{ready}");
        assert!(ready.get("message").is_none(), "{ready}");
    }
}

#[test]
fn speaker_labels_and_language_detection_are_passed_through() {
    let provider = Provider::start();
    let dir = tempfile::tempdir().unwrap();
    let path = fixture("audio/speech/speech.wav");
    let out = transcribe(
        dir.path(),
        &provider,
        "speaker_labels_model = \"gpt-4o-transcribe-diarize\"\n",
        &[
            path.to_str().unwrap(),
            "--speaker-labels",
            "--detect-language",
        ],
    );
    assert_exit(&out, 0);
    let seen = provider.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].fields["model"], "gpt-4o-transcribe-diarize");
    assert_eq!(seen[0].fields["response_format"], "diarized_json");
    assert!(
        !seen[0].fields.contains_key("language"),
        "{:?}",
        seen[0].fields
    );
    let records = lines(&out.stdout);
    let text: String = records
        .iter()
        .map(|r| r["text"].as_str().unwrap())
        .collect();
    assert!(text.contains("Speaker A: Passage 0"), "{text}");
    assert!(text.contains("Speaker B: Passage 1"), "{text}");
    // Without a diarizing model, the job's wish cannot be met: plain segments.
    let out = transcribe(
        dir.path(),
        &provider,
        "",
        &[path.to_str().unwrap(), "--speaker-labels"],
    );
    assert_exit(&out, 0);
    let last = provider.seen().pop().unwrap();
    assert_eq!(last.fields["model"], "whisper-1");
    assert_eq!(last.fields["response_format"], "verbose_json");
}

#[test]
fn a_provider_that_fails_is_retried_then_the_file_fails_retryably() {
    let provider = Provider::start();
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("in");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(fixture("audio/speech/speech.mp3"), folder.join("a.mp3")).unwrap();
    std::fs::write(
        folder.join("b.txt"),
        "Text after the recording is chunked.\n",
    )
    .unwrap();
    let run = || {
        transcribe(
            dir.path(),
            &provider,
            "timeout_secs = 1\n",
            &[folder.to_str().unwrap()],
        )
    };

    // 429 with Retry-After, then 500: the third attempt succeeds.
    provider.fail_next([Fault::RateLimited(Some("1")), Fault::ServerError]);
    let out = run();
    assert_exit(&out, 0);
    assert_eq!(provider.seen().len(), 3);
    assert_eq!(provider.seen()[0].status, 429);
    assert_eq!(outcome(&lines(&out.stderr), "a.mp3")["event"], "FILE_READY");

    // Timeouts too: one second per attempt here, against an answer that takes three.
    for fault in [
        Fault::ServerError,
        Fault::Garbage,
        Fault::RateLimited(None),
        Fault::Slow(std::time::Duration::from_secs(3)),
    ] {
        provider.fail_always(Some(fault.clone()));
        let before = provider.seen().len();
        let out = run();
        assert_exit(&out, 3);
        assert_eq!(
            provider.seen().len() - before,
            3,
            "{fault:?}: three attempts"
        );
        let events = lines(&out.stderr);
        let failed = outcome(&events, "a.mp3");
        assert_eq!(failed["error_code"], "TRANSCRIPTION_FAILED", "{failed}");
        assert_eq!(failed["retryable"], true, "{failed}");
        assert_eq!(outcome(&events, "b.txt")["event"], "FILE_READY");
    }
    provider.fail_always(None);

    // A wrong key: refused at once, for good, and the key is never shown.
    let wrong = "sk-wrong-key-that-must-stay-secret";
    std::fs::write(
        dir.path().join("pipeline.toml"),
        format!(
            "[transcription]\nurl = \"{}\"\napi_key_env = \"{KEY_VAR}\"\n",
            provider.url()
        ),
    )
    .unwrap();
    // (An Opus recording too: its ffmpeg stops with the refusal, which is what is reported.)
    std::fs::copy(fixture("audio/speech/speech.opus"), folder.join("c.opus")).unwrap();
    let before = provider.seen().len();
    let out = ingestd_with(
        dir.path(),
        &["sync", folder.to_str().unwrap()],
        &[(KEY_VAR, wrong)],
    );
    assert_exit(&out, 3);
    assert_eq!(provider.seen().len() - before, 2);
    let events = lines(&out.stderr);
    for key in ["a.mp3", "c.opus"] {
        let failed = outcome(&events, key);
        assert_eq!(failed["error_code"], "TRANSCRIPTION_FAILED", "{failed}");
        assert_eq!(failed["retryable"], false, "{failed}");
    }
    for stream in [&out.stdout, &out.stderr] {
        assert!(
            !String::from_utf8_lossy(stream).contains(wrong),
            "the key leaked"
        );
    }

    // A key that is not set: refused before anything is written.
    let out = ingestd(dir.path(), &["sync", folder.to_str().unwrap()]);
    assert_exit(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains(KEY_VAR));
    assert!(out.stdout.is_empty());
}

#[test]
fn ffmpeg_seeks_an_mp4_whose_index_follows_its_media() {
    let provider = Provider::start();
    let dir = tempfile::tempdir().unwrap();
    // AC-3 (no decoder here) in an MP4 whose index follows its media, and in a copy whose
    // index comes first: ffmpeg reads either through ranged requests, and transcribes both.
    let started = dir.path().join("started");
    let ffmpeg = common::program(
        &dir.path().join("ffmpeg"),
        &format!("touch {}\nexec ffmpeg \"$@\"", started.display()),
    );
    for name in ["ac3.mp4", "ac3-faststart.mp4"] {
        let path = fixture(&format!("audio/foreign/{name}"));
        let _ = std::fs::remove_file(&started);
        let out = transcribe(
            dir.path(),
            &provider,
            &format!("[media]\nffmpeg = \"{}\"\n", ffmpeg.display()),
            &[path.to_str().unwrap()],
        );
        assert_exit(&out, 0);
        assert!(started.exists(), "{name}: ffmpeg was not started");
        let events = lines(&out.stderr);
        let ready = outcome(&events, name);
        assert_eq!(ready["event"], "FILE_READY", "{ready}");
        assert!(ready.get("message").is_none(), "{ready}");
        let records = lines(&out.stdout);
        assert_eq!(records.len(), 1, "{name}");
        assert!(records[0]["text"].as_str().unwrap().contains("Passage 1"));
        assert!(records[0]["time_range_ms"].is_array());
        assert_eq!(records[0]["media"]["audio_codec"], "ac3");
        assert_eq!(records[0]["media"]["frame_rate"], 25.0);
    }
}

#[test]
fn without_ffmpeg_such_audio_keeps_its_record_and_a_hung_ffmpeg_is_killed() {
    let provider = Provider::start();
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("in");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(fixture("audio/speech/speech.opus"), folder.join("a.opus")).unwrap();
    std::fs::copy(fixture("audio/ffprobe/clip.avi"), folder.join("b.avi")).unwrap();
    std::fs::write(
        folder.join("c.txt"),
        "Text after the recordings is chunked.\n",
    )
    .unwrap();
    // No ffmpeg: described, and FILE_READY says why there is no transcript.
    let out = transcribe(
        dir.path(),
        &provider,
        "[media]\nffmpeg = \"/nonexistent/ffmpeg\"\n",
        &[folder.to_str().unwrap()],
    );
    assert_exit(&out, 0);
    let events = lines(&out.stderr);
    for key in ["a.opus", "b.avi"] {
        let ready = outcome(&events, key);
        assert_eq!(ready["event"], "FILE_READY", "{ready}");
        assert_eq!(ready["chunk_count"], 1, "{ready}");
        let message = ready["message"].as_str().unwrap();
        assert!(
            message.starts_with("no transcript was made") && message.contains("install ffmpeg"),
            "{message}"
        );
    }
    let records = lines(&out.stdout);
    let opus = records
        .iter()
        .find(|r| r["file"]["key"] == "a.opus")
        .unwrap();
    assert_eq!(opus["media"]["codec"], "opus");
    assert_eq!(opus["text"], "");
    assert!(provider.seen().is_empty());
    // An ffmpeg that hangs is killed at the media time limit, and the next file goes on.
    let (pids, env) = (dir.path().join("pids"), dir.path().join("env"));
    let hung = common::program(
        &dir.path().join("hung-ffmpeg"),
        &format!(
            "echo $$ >> {}\nenv > {}\nexec sleep 60",
            pids.display(),
            env.display()
        ),
    );
    let started = std::time::Instant::now();
    let out = transcribe(
        dir.path(),
        &provider,
        &format!(
            "[media]\nffmpeg = \"{}\"\n[limits]\nmax_media_secs = 2\n",
            hung.display()
        ),
        &[folder.to_str().unwrap()],
    );
    assert_exit(&out, 3);
    assert!(started.elapsed().as_secs() < 20, "{:?}", started.elapsed());
    let events = lines(&out.stderr);
    for key in ["a.opus", "b.avi"] {
        let failed = outcome(&events, key);
        assert_eq!(failed["error_code"], "LIMIT_EXCEEDED", "{failed}");
    }
    assert_eq!(outcome(&events, "c.txt")["event"], "FILE_READY");
    // It was not given the service's environment: no provider key.
    let env = std::fs::read_to_string(&env).unwrap();
    assert!(env.contains("PATH=") && !env.contains(API_KEY), "{env}");
    let pids = std::fs::read_to_string(&pids).unwrap();
    assert_eq!(pids.lines().count(), 2, "{pids}");
    // Gone, or a zombie waiting to be reaped: not running.
    for pid in pids.lines() {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = state.rsplit(')').next().unwrap_or_default().trim_start();
        assert!(
            state.is_empty() || state.starts_with('Z'),
            "ffmpeg {pid} still runs: {state}"
        );
    }
}

#[test]
fn a_file_that_takes_too_long_is_abandoned_and_the_next_goes_on() {
    let provider = Provider::start();
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("in");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(fixture("audio/speech/speech.ogg"), folder.join("a.ogg")).unwrap();
    std::fs::write(
        folder.join("b.txt"),
        "Text after the recording is chunked.\n",
    )
    .unwrap();
    provider.fail_always(Some(Fault::Slow(std::time::Duration::from_secs(20))));
    let started = std::time::Instant::now();
    let out = transcribe(
        dir.path(),
        &provider,
        "[limits]\nmax_media_secs = 2\n",
        &[folder.to_str().unwrap()],
    );
    assert_exit(&out, 3);
    assert!(started.elapsed().as_secs() < 15, "{:?}", started.elapsed());
    let events = lines(&out.stderr);
    let failed = outcome(&events, "a.ogg");
    assert_eq!(failed["error_code"], "LIMIT_EXCEEDED", "{failed}");
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("max_media_secs")
    );
    assert_eq!(outcome(&events, "b.txt")["event"], "FILE_READY");
}

#[test]
fn broken_and_hostile_recordings_each_get_their_outcome() {
    let provider = Provider::start();
    let dir = tempfile::tempdir().unwrap();
    let bad = fixture("audio/bad");
    // (file, event, code or reason)
    let expected: BTreeMap<&str, (&str, &str)> = BTreeMap::from([
        ("empty.wav", ("FILES_SKIPPED", "EMPTY")),
        ("noise.flac", ("FILES_SKIPPED", "UNSUPPORTED_FORMAT")),
        ("truncated.mp3", ("FILE_ERROR", "CORRUPT_FILE")),
        ("header-only.wav", ("FILE_ERROR", "CORRUPT_FILE")),
        ("cut.m4a", ("FILE_ERROR", "CORRUPT_FILE")),
        ("endless.wav", ("FILE_READY", "")),
        ("absurd-rate.wav", ("FILE_ERROR", "CORRUPT_FILE")),
        ("cover-bomb.mp3", ("FILE_ERROR", "LIMIT_EXCEEDED")),
        ("wrong-extension.mp3", ("FILE_READY", "")),
        ("damaged.flac", ("FILE_READY", "")),
        ("after.txt", ("FILE_READY", "")),
    ]);
    // Described only, and described and transcribed: the same outcomes, but for an AVI whose
    // header is whole and whose media is noise: described, then no audio decodes from it.
    for transcribed in [false, true] {
        let mut expected = expected.clone();
        expected.insert(
            "garbled.avi",
            if transcribed {
                ("FILE_ERROR", "CORRUPT_FILE")
            } else {
                ("FILE_READY", "")
            },
        );
        let limits = "[limits]\nmax_media_metadata_bytes = 65536\n";
        let out = if transcribed {
            transcribe(dir.path(), &provider, limits, &[bad.to_str().unwrap()])
        } else {
            std::fs::write(dir.path().join("pipeline.toml"), limits).unwrap();
            ingestd(dir.path(), &["sync", bad.to_str().unwrap()])
        };
        assert_exit(&out, 3);
        let events = lines(&out.stderr);
        for (file, (event, code)) in &expected {
            let got = outcome(&events, file);
            assert_eq!(
                got["event"], *event,
                "{file} (transcribed: {transcribed}): {got}"
            );
            if *event == "FILE_ERROR" {
                assert_eq!(got["error_code"], *code, "{file}: {got}");
                assert_eq!(got["retryable"], false, "{file}: {got}");
            } else if *event == "FILES_SKIPPED" {
                assert_eq!(got["reason"], *code, "{file}: {got}");
            }
        }
        let records = lines(&out.stdout);
        let of = |key: &str| records.iter().find(|r| r["file"]["key"] == key).unwrap();
        assert_eq!(of("wrong-extension.mp3")["file"]["format"], "ogg");
        // A header claiming 74 hours, then one second: the second is what is described.
        let endless = of("endless.wav")["media"]["duration_ms"].as_u64().unwrap();
        assert!(endless.abs_diff(1000) <= 20, "{endless} ms");
        if transcribed {
            // The damaged FLAC decodes around its damage (a second of frames missing, one
            // broken): both sentences are heard, the second still at its time.
            let damaged: Vec<_> = records
                .iter()
                .filter(|r| r["file"]["key"] == "damaged.flac")
                .collect();
            let text: String = damaged
                .iter()
                .map(|r| r["text"].as_str().unwrap())
                .collect();
            assert!(text.matches("Passage").count() == 2, "{text}");
            let second = sentences()[1];
            let last = damaged.last().unwrap()["time_range_ms"].as_array().unwrap();
            let end = last[1].as_u64().unwrap();
            assert!(
                end.abs_diff(second.1) <= 150,
                "ends at {end} ms, not {}",
                second.1
            );
        }
    }
}
