//! Command-line usage errors in plain words. An unknown flag gets
//! `unknown flag --x` and the closest flag the command knows, instead of
//! clap's advice to pass the flag as a value after `--` (which is never
//! what someone typing `--load` meant).

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::Command;

/// Exit code for usage errors (clap's and Docker's).
pub const USAGE_EXIT: u8 = 2;

/// Flags of other tools that xbuild deliberately lacks, with what to use
/// (`--load` used to be one; it now loads into xbuild's store and a local
/// docker or podman).
const FOREIGN_FLAGS: &[(&str, &str)] = &[(
    "--cgroup-parent",
    "xbuild uses no cgroups: RUN steps run in the worker's own cgroup",
)];

/// The message for a usage error when it is an unknown flag; `None` for
/// other errors (clap's own text is fine for those).
pub fn unknown_flag_message(cmd: &Command, args: &[String], err: &clap::Error) -> Option<String> {
    if err.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let flag = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s.clone(),
        _ => return None,
    };
    if !flag.starts_with('-') {
        return None;
    }
    // `--flag=value`: name the flag alone.
    let name = flag.split('=').next().unwrap_or(&flag).to_string();
    let sub = deepest_subcommand(cmd, args);
    let path = sub_path(cmd, args);
    let mut text = format!("unknown flag {name}");
    if let Some((_, hint)) = FOREIGN_FLAGS.iter().find(|(f, _)| *f == name) {
        text.push_str(&format!("\n  {hint}"));
    } else if let Some(best) = closest_flag(sub, &name) {
        text.push_str(&format!("\n  did you mean {best}?"));
    }
    text.push_str(&format!("\n  see '{path} --help' for the flags it takes"));
    Some(text)
}

/// The subcommand the arguments select (`xbuild node add` → `add`).
fn deepest_subcommand<'c>(cmd: &'c Command, args: &[String]) -> &'c Command {
    let mut cur = cmd;
    for a in args.iter().skip(1) {
        if a.starts_with('-') {
            continue;
        }
        match cur.find_subcommand(a) {
            Some(s) => cur = s,
            None => break,
        }
    }
    cur
}

fn sub_path(cmd: &Command, args: &[String]) -> String {
    let mut cur = cmd;
    let mut path = vec![cmd.get_name().to_string()];
    for a in args.iter().skip(1) {
        if a.starts_with('-') {
            continue;
        }
        match cur.find_subcommand(a) {
            Some(s) => {
                path.push(s.get_name().to_string());
                cur = s;
            }
            None => break,
        }
    }
    path.join(" ")
}

/// The known flag nearest to `flag` by edit distance, when near enough to
/// be a typo (at most a third of its length, and at least 1 edit allowed).
fn closest_flag(cmd: &Command, flag: &str) -> Option<String> {
    let mut names: Vec<String> = Vec::new();
    for a in cmd.get_arguments() {
        if a.is_hide_set() {
            continue;
        }
        if let Some(l) = a.get_long() {
            names.push(format!("--{l}"));
        }
        if let Some(aliases) = a.get_visible_aliases() {
            names.extend(aliases.iter().map(|l| format!("--{l}")));
        }
        if let Some(s) = a.get_short() {
            names.push(format!("-{s}"));
        }
    }
    names.push("--help".into());
    let bare = flag.trim_start_matches('-');
    let allowed = (bare.chars().count() / 3).max(1);
    names
        .into_iter()
        .map(|n| {
            let d = distance(n.trim_start_matches('-'), bare);
            (d, n)
        })
        .filter(|(d, _)| *d <= allowed)
        .min_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)))
        .map(|(_, n)| n)
}

/// Levenshtein distance over characters.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{with_default_command, Cli};
    use clap::{CommandFactory, Parser};

    fn message(args: &[&str]) -> Option<String> {
        let args = with_default_command(args.iter().map(|s| s.to_string()).collect());
        let err = Cli::try_parse_from(&args).expect_err("a usage error");
        unknown_flag_message(&Cli::command(), &args, &err)
    }

    #[test]
    fn typos_get_the_closest_flag() {
        let m = message(&["xbuild", "--platfrom", "linux/amd64", "."]).unwrap();
        assert!(
            m.starts_with("unknown flag --platfrom\n  did you mean --platform?"),
            "{m}"
        );
        assert!(m.contains("see 'xbuild build --help'"), "{m}");
        assert!(!m.contains("-- --"), "{m}");
        let m = message(&["xbuild", "build", "--no-cach", "."]).unwrap();
        assert!(m.contains("did you mean --no-cache?"), "{m}");
        let m = message(&["xbuild", "node", "add", "--identiy=k", "n", "ssh://h"]).unwrap();
        assert!(m.starts_with("unknown flag --identiy\n"), "{m}");
        assert!(m.contains("did you mean --identity?"), "{m}");
        assert!(m.contains("'xbuild node add --help'"), "{m}");
    }

    #[test]
    fn foreign_flags_explain_themselves_and_nonsense_gets_no_guess() {
        let m = message(&["xbuild", "--cgroup-parent", "x", "."]).unwrap();
        assert!(m.starts_with("unknown flag --cgroup-parent\n"), "{m}");
        assert!(m.contains("no cgroups"), "{m}");
        // --load is a flag now.
        assert!(Cli::try_parse_from(["xbuild", "build", "--load", "."]).is_ok());
        let m = message(&["xbuild", "images", "--zzzzzzzz"]).unwrap();
        assert!(!m.contains("did you mean"), "{m}");
        // Not an unknown flag: clap's own message.
        let args: Vec<String> = ["xbuild", "build"].iter().map(|s| s.to_string()).collect();
        let err = Cli::try_parse_from(&args).unwrap_err();
        assert!(unknown_flag_message(&Cli::command(), &args, &err).is_none());
    }

    #[test]
    fn edit_distance() {
        assert_eq!(distance("platfrom", "platform"), 2);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("push", "push"), 0);
    }

    #[test]
    fn the_parser_is_the_real_one() {
        assert!(Cli::try_parse_from(["xbuild", "images"]).is_ok());
    }
}
