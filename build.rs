//! Passes the git commit the crate is built from to the code as `EVENTFLOW_GIT_COMMIT`
//! (the `eventflow_build_info` metric). Outside a git checkout, or without git, it is
//! left unset and the metric says `unknown`. An `EVENTFLOW_GIT_COMMIT` already in the
//! environment (a packager's) wins.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then_some(())?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=EVENTFLOW_GIT_COMMIT");
    if std::env::var_os("EVENTFLOW_GIT_COMMIT").is_some() {
        return;
    }
    // Rebuild when HEAD moves: HEAD itself (a branch switch) and the ref it points to (a
    // commit). Worktrees keep both outside `.git/` of the work tree; git says where.
    for path in ["HEAD", "packed-refs"] {
        if let Some(p) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(p) = git(&["rev-parse", "--git-path", &head]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    if let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) {
        println!("cargo:rustc-env=EVENTFLOW_GIT_COMMIT={commit}");
    }
}
