//! Records the git revision the tool is built from (`LOAD_TEST_GIT_REV`):
//! `git rev-parse --short=12 HEAD`, with `-dirty` when `git status
//! --porcelain` lists anything, or `unknown` without git or a repository
//! (a crate tarball). Never fails the build.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Edits to this crate's own sources make the tree dirty without
    // touching the index.
    println!("cargo:rerun-if-changed=src");
    let rev = revision().unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=LOAD_TEST_GIT_REV={rev}");
}

/// The revision, or None when git or the repository is missing.
fn revision() -> Option<String> {
    let hash = git(&["rev-parse", "--short=12", "HEAD"])?;
    // Rerun when HEAD moves (checkout, or a commit on the current branch)
    // or the index changes (add, commit). Only existing paths: a missing
    // one would make cargo rerun this script on every build.
    let mut watch = vec![git(&["rev-parse", "--git-path", "HEAD"])?];
    watch.extend(git(&["rev-parse", "--git-path", "index"]));
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.extend(git(&["rev-parse", "--git-path", &branch]));
    }
    for p in watch.iter().filter(|p| Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={p}");
    }
    // --no-optional-locks: do not refresh (write) the index while a
    // developer's git command may hold it.
    // A status that cannot be read says nothing either way: no suffix.
    let status = git(&["--no-optional-locks", "status", "--porcelain"]);
    Some(match status {
        Some(s) if !s.is_empty() => format!("{hash}-dirty"),
        _ => hash,
    })
}

/// A git command's trimmed stdout, None if it cannot run or fails.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?;
    Some(s.trim().to_string())
}
