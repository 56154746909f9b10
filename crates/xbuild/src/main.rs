//! The `xbuild` binary: CLI, coordinator and agent in one.

mod agent_cmd;
mod attestations_cmd;
mod binfmt_cmd;
mod build;
mod cache_cmd;
mod cli;
mod config;
mod docgen;
mod exit;
mod explain_cmd;
mod images;
mod imagetools;
mod load;
mod login;
mod named_ctx;
mod nodes;
mod paths;
mod progress;
mod remote_ctx;
mod request;
mod run_build;
mod solve_status;
mod sshagent;
mod usage;
mod version_cmd;

use clap::Parser;
use cli::{Cli, Commands};
use std::process::ExitCode;

pub use exit::Exit;

fn run(cli: Cli) -> anyhow::Result<()> {
    if !matches!(cli.command, Commands::Agent(_)) {
        paths::cleanup_state();
    }
    match cli.command {
        Commands::Build(args) => build::run(*args),
        Commands::Node(cmd) => nodes::cmd_node(cmd),
        Commands::Agent(a) => match nodes::cmd_agent(&a)? {
            true => Ok(()),
            false => agent_cmd::run(&a),
        },
        Commands::Binfmt(cli::BinfmtCommand::Status) => binfmt_cmd::cmd_status(),
        Commands::Binfmt(cli::BinfmtCommand::Install { platforms }) => {
            binfmt_cmd::cmd_install(&platforms)
        }
        Commands::Images {
            repository,
            quiet,
            no_trunc,
        } => images::cmd_images(repository.as_deref(), quiet, no_trunc),
        Commands::History {
            image,
            platform,
            no_trunc,
            quiet,
        } => images::cmd_history(&image, platform.as_deref(), no_trunc, quiet),
        Commands::Rmi { images } => images::cmd_rmi(&images),
        Commands::Image(cli::ImageCommand::Prune { all, force }) => images::cmd_prune(all, force),
        Commands::Save {
            output,
            format,
            platform,
            images,
        } => images::cmd_save(&output, format, platform.as_deref(), &images),
        Commands::Load { input, quiet } => images::cmd_load(&input, quiet),
        Commands::Imagetools(cli::ImagetoolsCommand::Inspect {
            reference,
            raw,
            format,
        }) => imagetools::cmd_inspect(&reference, raw, format.as_deref()),
        Commands::Attestations(cli::AttestationsCommand::Ls { reference }) => {
            attestations_cmd::cmd_ls(&reference)
        }
        Commands::Attestations(cli::AttestationsCommand::Get {
            reference,
            platform,
            r#type,
        }) => attestations_cmd::cmd_get(&reference, platform.as_deref(), r#type.as_deref()),
        Commands::Imagetools(cli::ImagetoolsCommand::Create {
            tags,
            files,
            sources,
            append,
            annotations,
            platforms,
            dry_run,
            metadata_file,
        }) => imagetools::cmd_create(&imagetools::CreateOptions {
            tags,
            sources,
            files,
            append,
            annotations,
            platforms,
            dry_run,
            metadata_file,
        }),
        Commands::Cache(cli::CacheCommand::Du) => cache_cmd::cmd_du(),
        Commands::Cache(cli::CacheCommand::Check { repair }) => cache_cmd::cmd_check(repair),
        Commands::Cache(cli::CacheCommand::Prune {
            all,
            keep_storage,
            filter,
        }) => cache_cmd::cmd_prune(all, keep_storage.as_deref(), &filter),
        Commands::Login {
            registry,
            username,
            password_stdin,
        } => login::cmd_login(&registry, username.as_deref(), password_stdin),
        Commands::Logout { registry } => login::cmd_logout(&registry),
        Commands::Version => version_cmd::run(),
        Commands::Completion { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            let sh = match shell {
                cli::CompletionShell::Bash => clap_complete::Shell::Bash,
                cli::CompletionShell::Zsh => clap_complete::Shell::Zsh,
                cli::CompletionShell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(sh, &mut cmd, "xbuild", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// Hidden first argument that turns this binary into the sandbox init
/// (the engine re-executes itself so the multi-threaded build never forks).
pub use xbuild_coordinator::SANDBOX_INIT_ARG;

fn main() -> ExitCode {
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new(SANDBOX_INIT_ARG)) {
        xbuild_sandbox::init_main();
    }
    let args = cli::with_default_command(std::env::args().collect());
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::CommandFactory;
            if let Some(text) = usage::unknown_flag_message(&Cli::command(), &args, &e) {
                eprintln!("error: {text}");
                return ExitCode::from(usage::USAGE_EXIT);
            }
            e.exit()
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(Exit(code)) = e.downcast_ref::<Exit>() {
                return ExitCode::from(*code);
            }
            eprintln!("error: {}", progress::sanitize_terminal(&error_text(&e)));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, like `{:#}`, but without a cause
/// whose text the message already shows (library errors often print their
/// source in their own message: `cannot connect to h:22: Connection
/// refused` must not go on `: Connection refused` again).
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let t = cause.to_string();
        if text.is_empty() {
            text = t;
        } else if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_text;

    /// Like a thiserror variant whose message includes its source.
    #[derive(Debug)]
    struct Connect {
        source: std::io::Error,
    }

    impl std::fmt::Display for Connect {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot connect to h:22: {}", self.source)
        }
    }

    impl std::error::Error for Connect {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let e = anyhow::Error::new(Connect { source: io }).context("adding node amd1");
        assert_eq!(
            error_text(&e),
            "adding node amd1: cannot connect to h:22: Connection refused"
        );
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_text(&e), "outer: inner");
    }
}
