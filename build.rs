//! Records the git commit the binary is built from, for `ingestd_build_info`: the
//! `INGESTD_GIT_COMMIT` variable when set (a container build without `.git`), else the
//! checkout's `HEAD`, else `unknown`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=INGESTD_GIT_COMMIT");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/packed-refs");
    // A commit moves the branch HEAD names, not HEAD itself.
    if let Ok(head) = std::fs::read_to_string(".git/HEAD")
        && let Some(branch) = head.trim().strip_prefix("ref: ")
    {
        println!("cargo:rerun-if-changed=.git/{branch}");
    }
    let commit = std::env::var("INGESTD_GIT_COMMIT")
        .ok()
        .filter(|commit| !commit.is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            let commit = String::from_utf8(out.stdout).ok()?;
            (out.status.success() && !commit.trim().is_empty()).then(|| commit.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=INGESTD_GIT_COMMIT={commit}");
}
