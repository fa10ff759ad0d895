//! `BIN generate man DIR` and `BIN generate completions DIR`: man pages and shell completions
//! from a daemon's clap definition, for packaging. The `generate` subcommand is hidden and added
//! by [`crate::daemon::main`], so both daemons have it without naming it; the pages and
//! completions describe the daemon's command without it. Nothing here runs in `serve`.

use std::io;
use std::path::{Path, PathBuf};

use clap::{Command, FromArgMatches, Subcommand};
use clap_complete::Shell;

/// The hidden subcommand's name.
pub const SUBCOMMAND: &str = "generate";

/// The shells completions are generated for.
pub const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// What `generate` writes.
#[derive(Subcommand, Debug, PartialEq, Eq)]
pub enum Generate {
    /// Man pages (section 1): BIN.1 and BIN-SUBCOMMAND.1 for every subcommand, into DIR.
    Man { dir: PathBuf },
    /// Shell completions: BIN.bash (bash), _BIN (zsh), BIN.fish (fish), into DIR.
    Completions { dir: PathBuf },
}

impl Generate {
    /// The hidden `generate` subcommand, to add to a daemon's command.
    pub fn command() -> Command {
        Self::augment_subcommands(
            Command::new(SUBCOMMAND)
                .about("Write man pages or shell completions (for packaging)")
                .hide(true)
                .subcommand_required(true),
        )
    }

    /// Parses the matches of the `generate` subcommand.
    pub fn from_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        <Self as FromArgMatches>::from_arg_matches(matches)
    }

    /// Writes the files for `cmd` (the daemon's command, without `generate`) and prints their
    /// paths.
    pub fn run(&self, cmd: Command) -> io::Result<()> {
        let files = match self {
            Generate::Man { dir } => man_pages(cmd, dir)?,
            Generate::Completions { dir } => completions(cmd, dir)?,
        };
        for file in files {
            println!("{}", file.display());
        }
        Ok(())
    }
}

/// Writes `BIN.1` and one page per subcommand (nested ones too: `BIN-SUB-SUBSUB.1`) into
/// `dir`; returns the files, sorted.
pub fn man_pages(cmd: Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(cmd, dir)?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "1") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The top-level man page of `cmd`, as roff.
pub fn man_page(cmd: Command) -> io::Result<String> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut out)?;
    String::from_utf8(out).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Writes the completion scripts of every shell in [`SHELLS`] into `dir`; returns the files.
pub fn completions(mut cmd: Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let name = cmd.get_name().to_string();
    SHELLS
        .iter()
        .map(|shell| clap_complete::generate_to(*shell, &mut cmd, &name, dir))
        .collect()
}

/// The check both binaries' tests run on their own CLI (one copy, here): `--version` names the
/// crate version and the git revision, the man pages and the completions for every shell cover
/// every subcommand, and none mentions the hidden `generate`. `dir` is a scratch directory.
pub fn check_cli(cmd: Command, pkg_version: &str, git_rev: &str, dir: &Path) -> Result<(), String> {
    let name = cmd.get_name().to_string();
    let fail = |what: String| Err(format!("{name}: {what}"));
    if git_rev.is_empty() {
        return fail("empty git revision".into());
    }
    let version = cmd.clone().render_version();
    let want = format!("{name} {pkg_version} (git {git_rev})");
    if version.trim_end() != want {
        return fail(format!("--version says {version:?}, not {want:?}"));
    }
    let subcommands: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    if !subcommands.iter().any(|s| s == "serve") {
        return fail(format!("no serve subcommand in {subcommands:?}"));
    }
    let page = man_page(cmd.clone()).map_err(|e| format!("{name}: man page: {e}"))?;
    let pages = man_pages(cmd.clone(), dir).map_err(|e| format!("{name}: man pages: {e}"))?;
    for sub in &subcommands {
        if !page.contains(&format!("{name}\\-{sub}(1)")) {
            return fail(format!("the man page does not name {sub}"));
        }
        if !pages.contains(&dir.join(format!("{name}-{sub}.1"))) {
            return fail(format!("no page for {sub} in {pages:?}"));
        }
    }
    if page.contains("generate") {
        return fail("the man page mentions the hidden generate".into());
    }
    let files = completions(cmd, dir).map_err(|e| format!("{name}: completions: {e}"))?;
    let want: Vec<PathBuf> = [
        format!("{name}.bash"),
        format!("_{name}"),
        format!("{name}.fish"),
    ]
    .iter()
    .map(|f| dir.join(f))
    .collect();
    if files != want {
        return fail(format!("completion files {files:?}, not {want:?}"));
    }
    for file in files {
        let script =
            std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        if let Some(sub) = subcommands
            .iter()
            .find(|sub| !script.contains(sub.as_str()))
        {
            return fail(format!("{} lacks {sub}", file.display()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    #[command(name = "testd", version = "1.2.3 (git abc1234)")]
    enum Testd {
        /// Run the daemon.
        Serve,
        /// Things.
        #[command(subcommand)]
        Thing(ThingCommand),
    }

    #[derive(Subcommand, Debug)]
    enum ThingCommand {
        /// List things.
        Ls,
    }

    #[test]
    fn check_cli_passes_a_whole_cli_and_names_what_is_wrong() {
        let cmd = <Testd as clap::CommandFactory>::command;
        let dir = tempfile::tempdir().unwrap();
        check_cli(cmd(), "1.2.3", "abc1234", dir.path()).unwrap();
        let err = check_cli(cmd(), "1.2.4", "abc1234", dir.path()).unwrap_err();
        assert!(err.contains("--version says"), "{err}");
        let err = check_cli(cmd(), "1.2.3", "", dir.path()).unwrap_err();
        assert!(err.contains("empty git revision"), "{err}");
        let no_serve = Command::new("testd").version("1.2.3 (git abc1234)");
        let err = check_cli(no_serve, "1.2.3", "abc1234", dir.path()).unwrap_err();
        assert!(err.contains("no serve subcommand"), "{err}");
    }

    fn with_generate() -> Command {
        <Testd as clap::CommandFactory>::command().subcommand(Generate::command())
    }

    #[test]
    fn generate_is_a_hidden_subcommand() {
        with_generate().debug_assert();
        let matches = with_generate()
            .try_get_matches_from(["testd", "generate", "man", "/tmp/x"])
            .unwrap();
        let (name, sub) = matches.subcommand().unwrap();
        assert_eq!(name, SUBCOMMAND);
        assert_eq!(
            Generate::from_matches(sub).unwrap(),
            Generate::Man {
                dir: "/tmp/x".into()
            }
        );
        let help = with_generate().render_long_help().to_string();
        assert!(!help.contains("generate"), "{help}");
    }

    #[test]
    fn man_pages_for_the_command_and_every_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = <Testd as clap::CommandFactory>::command();
        let files = man_pages(cmd.clone(), dir.path()).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "testd-serve.1",
                "testd-thing-ls.1",
                "testd-thing.1",
                "testd.1"
            ]
        );
        let page = man_page(cmd).unwrap();
        assert!(page.starts_with(".ie"), "{page}");
        assert!(page.contains(".TH testd 1"), "{page}");
        assert!(page.contains("1.2.3 (git abc1234)"), "{page}");
        assert!(page.contains("testd\\-thing(1)"), "{page}");
    }

    #[test]
    fn completions_for_three_shells() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = <Testd as clap::CommandFactory>::command();
        let files = completions(cmd, dir.path()).unwrap();
        assert_eq!(
            files,
            ["testd.bash", "_testd", "testd.fish"].map(|f| dir.path().join(f))
        );
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            assert!(text.contains("serve") && text.contains("thing"), "{text}");
        }
    }
}
