//! Records the git commit the binary is built from, for `ingestd_build_info`: the
//! `INGESTD_GIT_COMMIT` variable when set (a container build without `.git`), else the
//! checkout's `HEAD`, else `unknown`.

use std::path::PathBuf;
use std::process::Command;

/// What `git ARGS` prints, trimmed, when it succeeds.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=INGESTD_GIT_COMMIT");
    // A commit moves the branch HEAD names, not HEAD itself. Only paths that exist are
    // watched: cargo takes a missing one for a change and would build again every time.
    let watched = [
        git(&["rev-parse", "--git-path", "HEAD"]),
        git(&["rev-parse", "--symbolic-full-name", "HEAD"])
            .and_then(|branch| git(&["rev-parse", "--git-path", &branch])),
        git(&["rev-parse", "--git-path", "packed-refs"]),
    ];
    for path in watched.into_iter().flatten().map(PathBuf::from) {
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    let commit = std::env::var("INGESTD_GIT_COMMIT")
        .ok()
        .filter(|commit| !commit.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=INGESTD_GIT_COMMIT={commit}");
}
