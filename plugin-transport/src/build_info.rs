// The git revision a binary is built from, for `--version` (see `plugin_transport::version!`).
//
// This file is compiled twice: as the module `plugin_transport::build_info` (for its tests),
// and `include!`d by the build scripts of netplugin and volplugin, which call `emit()`. So it
// uses std only and has no inner attributes or `//!` docs (not allowed in an `include!`).
//
// The revision is, in this order: `$BERTH_GIT_REV` when set (packaging builds from a source
// tarball name it so); else `git rev-parse --short HEAD` plus `-dirty` when tracked files
// differ from HEAD; else `unknown` (no git, or not a git checkout).

/// Prints the build-script lines that set `BERTH_BUILD_GIT_REV` for the crate being built and
/// make cargo rerun the script when HEAD moves, the branch it points to gets a new commit, the
/// index changes or the crate's own sources change (so the hash and `-dirty` are not stale).
pub fn emit() {
    println!("cargo:rerun-if-env-changed=BERTH_GIT_REV");
    let dir = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=Cargo.toml");
    for file in git_files(&dir) {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let rev = revision(std::env::var("BERTH_GIT_REV").ok(), || git_revision(&dir));
    println!("cargo:rustc-env=BERTH_BUILD_GIT_REV={rev}");
}

/// The revision to report: a non-empty `from_env`, else what `git` says, else `unknown`.
pub fn revision(from_env: Option<String>, git: impl FnOnce() -> Option<String>) -> String {
    match from_env.map(|r| r.trim().to_string()) {
        Some(rev) if !rev.is_empty() => rev,
        _ => git().unwrap_or_else(|| "unknown".to_string()),
    }
}

/// `git rev-parse --short HEAD` of the checkout holding `dir`, `-dirty` appended when a
/// tracked file differs from HEAD; `None` without git or outside a checkout.
pub fn git_revision(dir: &std::path::Path) -> Option<String> {
    let hash = git(dir, &["rev-parse", "--short", "HEAD"])?;
    // --no-optional-locks: no index refresh written, so the index this script watches does
    // not change under it.
    let status = git(
        dir,
        &[
            "--no-optional-locks",
            "status",
            "--porcelain",
            "--untracked-files=no",
        ],
    );
    Some(match status {
        Some(changes) if !changes.is_empty() => format!("{hash}-dirty"),
        _ => hash,
    })
}

/// The files whose change means another revision: HEAD, the ref it points to (loose, or in
/// packed-refs), and the index. Only those that exist (cargo reruns always for a missing one).
/// Works in linked worktrees too, where `.git` is a file (`git rev-parse --git-path`).
pub fn git_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut names = vec![
        "HEAD".to_string(),
        "index".to_string(),
        "packed-refs".to_string(),
    ];
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        names.push(branch);
    }
    names
        .iter()
        .filter_map(|name| git(dir, &["rev-parse", "--git-path", name]))
        .map(|path| dir.join(path))
        .filter(|path| path.exists())
        .collect()
}

/// `git -C dir ARGS`'s trimmed stdout when it succeeds.
fn git(dir: &std::path::Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_wins_then_git_then_unknown() {
        assert_eq!(revision(Some(" 1a2b3c4 ".into()), || None), "1a2b3c4");
        assert_eq!(revision(Some("".into()), || Some("abc".into())), "abc");
        assert_eq!(revision(None, || Some("abc-dirty".into())), "abc-dirty");
        assert_eq!(revision(None, || None), "unknown");
    }

    #[test]
    fn outside_a_checkout_there_is_no_revision() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(git_revision(dir.path()), None);
        assert!(git_files(dir.path()).is_empty());
    }

    #[test]
    fn this_checkout_has_a_revision_and_watches_head() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        if git(dir, &["rev-parse", "HEAD"]).is_none() {
            return; // a source tarball, or no git installed
        }
        let rev = git_revision(dir).unwrap();
        let hash = rev.trim_end_matches("-dirty");
        assert!(
            hash.len() >= 7 && hash.chars().all(|c| c.is_ascii_hexdigit()),
            "{rev}"
        );
        let files = git_files(dir);
        assert!(files.iter().any(|f| f.ends_with("HEAD")), "{files:?}");
    }
}
