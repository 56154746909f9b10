//! The command line, as DESIGN.md's contract lays it out. Flags follow
//! `docker buildx build` wherever buildx has them.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Build container images for several platforms at once.
#[derive(Debug, Parser)]
#[command(
    name = "xbuild",
    version,
    about = "Build container images for several platforms at once and publish them as one multi-platform image",
    long_about = "Build container images from a Dockerfile for several platforms at once and publish them \
as one multi-platform image.\n\n`xbuild [BUILD OPTIONS] PATH` is the same as `xbuild build [BUILD OPTIONS] PATH`.",
    after_help = "Example:\n  xbuild --platform linux/amd64,linux/arm64 -t registry.example.com/app:1.0 --push ."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Commands,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Build an image from a Dockerfile (the default command).
    Build(Box<BuildArgs>),
    /// Manage remote build nodes reached over SSH.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Run the build agent (started by the coordinator over SSH).
    Agent(AgentArgs),
    /// Inspect and register QEMU emulators in binfmt_misc.
    #[command(subcommand)]
    Binfmt(BinfmtCommand),
    /// List images in the local store.
    Images {
        /// Only show images of this repository (`app`, `app:1.0`).
        #[arg(value_name = "REPOSITORY[:TAG]")]
        repository: Option<String>,
        /// Only show image IDs.
        #[arg(short, long)]
        quiet: bool,
        /// Do not truncate image IDs.
        #[arg(long)]
        no_trunc: bool,
    },
    /// Show the history of an image.
    History {
        /// Image reference.
        image: String,
        /// For a multi-platform image, the platform to show (default: this machine's).
        #[arg(long, value_name = "PLATFORM")]
        platform: Option<String>,
        /// Do not truncate output.
        #[arg(long)]
        no_trunc: bool,
        /// Only show the top image ID.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove images (tags) from the local store, then delete the blobs no
    /// image or build cache uses any more.
    Rmi {
        /// Image references, or image IDs as `xbuild images` shows them.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Manage images in the local store.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Save images to a tar archive (`docker load` format by default).
    Save {
        /// Output file (`-` for standard output).
        #[arg(short, long)]
        output: PathBuf,
        /// Archive format: `docker` (docker/podman load; one platform per
        /// image) or `oci` (an OCI image layout; keeps multi-platform images whole).
        #[arg(long, value_enum, default_value_t = SaveFormat::Docker)]
        format: SaveFormat,
        /// For multi-platform images in a docker archive: the platform to
        /// save (default: this machine's).
        #[arg(long, value_name = "PLATFORM")]
        platform: Option<String>,
        /// Image references.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Load images from a tar archive (docker save or OCI layout, plain or gzip).
    Load {
        /// Input file (`-` for standard input).
        #[arg(short, long)]
        input: PathBuf,
        /// Print only the loaded names.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Work with images and indexes in a registry.
    #[command(subcommand)]
    Imagetools(ImagetoolsCommand),
    /// List and fetch the provenance and SBOM attestations of an image.
    #[command(subcommand)]
    Attestations(AttestationsCommand),
    /// Manage the build cache.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Log in to a registry.
    Login {
        /// Registry host (e.g. registry.example.com or localhost:5000).
        registry: String,
        /// User name.
        #[arg(short, long)]
        username: Option<String>,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Log out of a registry.
    Logout {
        /// Registry host.
        registry: String,
    },
    /// Show the version, git commit, compiler and platform of this binary.
    Version,
    /// Print a shell completion script (`source <(xbuild completion bash)`).
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: CompletionShell,
    },
}

/// Shells `xbuild completion` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    /// GNU bash.
    Bash,
    /// Z shell.
    Zsh,
    /// fish.
    Fish,
}

/// `--progress` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum ProgressMode {
    /// tty when stderr is a terminal, else plain.
    #[default]
    Auto,
    /// Live per-platform view.
    Tty,
    /// BuildKit-style numbered lines.
    Plain,
    /// BuildKit's SolveStatus JSON, one object per line (what
    /// `docker buildx build --progress=rawjson` prints).
    Rawjson,
    /// xbuild's own events, one JSON object per line (with cache-miss
    /// reasons and transfer kinds).
    Json,
    /// Only the final digest (`none` is accepted as an alias).
    #[value(alias = "none")]
    Quiet,
}

/// Options of `xbuild build`.
#[derive(Debug, Args, Clone)]
pub struct BuildArgs {
    /// Build context directory, or `-` to read a Dockerfile from standard input.
    #[arg(value_name = "PATH|-")]
    pub context: String,
    /// Name of the Dockerfile (default: PATH/Dockerfile).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Name and optionally a tag (`name:tag`); repeatable.
    #[arg(short = 't', long = "tag", value_name = "REF")]
    pub tags: Vec<String>,
    /// Target platforms, comma-separated (default: the local platform).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub platform: Vec<String>,
    /// Set a build-time variable (`KEY=VALUE`, or `KEY` to take it from the environment).
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,
    /// Set the target build stage.
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,
    /// Do not use the cache when building.
    #[arg(long)]
    pub no_cache: bool,
    /// Do not cache the given stage (repeatable).
    #[arg(long = "no-cache-filter", value_name = "STAGE")]
    pub no_cache_filter: Vec<String>,
    /// Always look up a newer version of base images.
    #[arg(long)]
    pub pull: bool,
    /// Secret to expose to the build (`id=ID[,src=FILE|,env=VAR]`).
    #[arg(long = "secret", value_name = "SPEC")]
    pub secrets: Vec<String>,
    /// Allow extra privileges for RUN steps (repeatable, comma-separated):
    /// `network.host` (`RUN --network=host`, `--network host`) and
    /// `security.insecure` (`RUN --security=insecure`: every capability, no
    /// seccomp). Without them a step gets Docker's default confinement:
    /// 14 capabilities, the default seccomp profile, masked /proc, and its
    /// own network namespace with outbound access through `pasta`.
    #[arg(long = "allow", value_name = "ENTITLEMENT")]
    pub allow: Vec<String>,
    /// Network of RUN steps that do not set `--network`: `default` (own
    /// namespace, outbound only, no access to the host's loopback), `none`
    /// (loopback only) or `host` (needs `--allow network.host`).
    #[arg(long = "network", value_name = "MODE", default_value = "default")]
    pub network: String,
    /// Shorthand for `--output type=image,push=true`.
    #[arg(long)]
    pub push: bool,
    /// Attestation to attach, repeatable:
    /// `type=provenance[,mode=min|max][,builder-id=ID][,version=v1|v0.2]` or
    /// `type=sbom[,generator=IMAGE]` (`disabled=true` turns one off).
    #[arg(long = "attest", value_name = "SPEC")]
    pub attest: Vec<String>,
    /// Shorthand for `--attest=type=provenance`: `true`, `false`, or options
    /// such as `mode=max` (default when pushing: `mode=min`).
    #[arg(long, value_name = "VALUE")]
    pub provenance: Option<String>,
    /// Shorthand for `--attest=type=sbom`: `true`, `false`, or
    /// `generator=IMAGE`.
    #[arg(long, value_name = "VALUE")]
    pub sbom: Option<String>,
    /// Output destination (`type=image[,push=true]|oci,dest=F|docker,dest=F|local,dest=DIR`).
    #[arg(short = 'o', long = "output", value_name = "SPEC")]
    pub outputs: Vec<String>,
    /// External cache sources, repeatable (`type=registry,ref=REF` |
    /// `type=local,src=DIR`): records are read, then only the layers of
    /// steps that hit are fetched.
    #[arg(long = "cache-from", value_name = "SPEC")]
    pub cache_from: Vec<String>,
    /// Cache export destinations (`type=registry,ref=REF[,mode=min|max]` |
    /// `type=local,dest=DIR[,mode=min|max]`): one OCI index over platforms;
    /// `min` exports the target stage's steps, `max` every stage's.
    #[arg(long = "cache-to", value_name = "SPEC")]
    pub cache_to: Vec<String>,
    /// Progress output (default from `BUILDKIT_PROGRESS`, else `auto`).
    #[arg(long, value_enum, env = "BUILDKIT_PROGRESS", default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    /// Print only the image digest on stdout (same as `--progress quiet`).
    #[arg(short, long)]
    pub quiet: bool,
    /// Write build result metadata (digests, workers, cache counts) to FILE as JSON.
    #[arg(long = "metadata-file", value_name = "FILE")]
    pub metadata_file: Option<PathBuf>,
    /// Write the image digest to FILE (the manifest digest for one
    /// platform, the index digest for several; the config digest when the
    /// image only goes to a local store with `--load`, as buildx writes it;
    /// see docs/guide/identifiers.md).
    #[arg(long, value_name = "FILE")]
    pub iidfile: Option<PathBuf>,
    /// Pin a platform to a node (`PLATFORM=NODE`; repeatable).
    #[arg(long = "node", value_name = "PLATFORM=NODE")]
    pub nodes: Vec<String>,
    /// What to do instead of building: `build`, `outline`, `targets`, `check`,
    /// `explain` (per platform and step: cache hit or miss and why, nothing
    /// run) (append `,format=json` for JSON).
    #[arg(long = "call", value_name = "METHOD", default_value = "build")]
    pub call: String,
    /// Shorthand for `--call=check`.
    #[arg(long)]
    pub check: bool,
    /// Set a label in the image config (`KEY=VALUE`; repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Add an annotation (`[TYPE[,TYPE]:]KEY=VALUE`; TYPE is `manifest`
    /// (default), `index`, `manifest-descriptor` or `index-descriptor`,
    /// optionally with a platform: `manifest[linux/amd64]`; repeatable).
    #[arg(long = "annotation", value_name = "[TYPE:]KEY=VALUE")]
    pub annotations: Vec<String>,
    /// Additional build context (`NAME=DIR`, `NAME=docker-image://REF`,
    /// `NAME=oci-layout://PATH[@DIGEST]`, `NAME=https://…`, `NAME=GIT-URL`),
    /// usable as `FROM NAME`, `COPY --from=NAME`, `RUN --mount=from=NAME`.
    #[arg(long = "build-context", value_name = "NAME=VALUE")]
    pub build_contexts: Vec<String>,
    /// SSH agent socket or keys to expose to `RUN --mount=type=ssh`
    /// (`default` = `$SSH_AUTH_SOCK`, or `ID[=SOCKET|KEY[,KEY…]]`; repeatable).
    #[arg(long = "ssh", value_name = "default|ID[=SOCKET|KEY,…]")]
    pub ssh: Vec<String>,
    /// Shorthand for `--output type=docker`: into xbuild's image store, and
    /// into a local `docker` or `podman` when one is found.
    #[arg(long)]
    pub load: bool,
    /// Add a custom host-to-IP mapping to /etc/hosts of RUN steps
    /// (`HOST:IP`; repeatable).
    #[arg(long = "add-host", value_name = "HOST:IP")]
    pub add_hosts: Vec<String>,
    /// Size of /dev/shm in RUN steps (e.g. `128m`).
    #[arg(long = "shm-size", value_name = "SIZE")]
    pub shm_size: Option<String>,
    /// Resource limits of RUN steps (`nofile=1024:2048`, `-1` for unlimited;
    /// types: core, cpu, data, fsize, locks, memlock, msgqueue, nice, nofile,
    /// nproc, rss, rtprio, rttime, sigpending, stack; repeatable).
    #[arg(long = "ulimit", value_name = "TYPE=SOFT[:HARD]")]
    pub ulimits: Vec<String>,
    /// Accepted for compatibility with `docker buildx build`; xbuild has no
    /// builder instances, so the value is ignored (a note says so).
    #[arg(long, value_name = "NAME")]
    pub builder: Option<String>,
    /// Print debug information about the build (errors with their causes).
    #[arg(short = 'D', long)]
    pub debug: bool,
}

/// `xbuild save --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SaveFormat {
    /// `docker save` format, for `docker load` / `podman load`.
    Docker,
    /// OCI image layout.
    Oci,
}

/// `xbuild node ...`.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Add a node: connect to it, check its host key and that it runs the agent.
    Add {
        /// Node name.
        name: String,
        /// `ssh://[user@]host[:port]`.
        endpoint: String,
        /// Platforms the node builds natively.
        #[arg(long, value_delimiter = ',', required = true)]
        platform: Vec<String>,
        /// SSH private key file (without passphrase; else the ssh-agent and
        /// ~/.ssh/id_* are used).
        #[arg(long)]
        identity: Option<PathBuf>,
        /// Builds the node runs at once.
        #[arg(long)]
        max_parallel: Option<u32>,
        /// Record the node's host key if none is known yet (like OpenSSH's
        /// `StrictHostKeyChecking accept-new`); a changed key is still refused.
        #[arg(long)]
        accept_new_host_key: bool,
        /// Command that starts the agent on the node.
        #[arg(long, value_name = "COMMAND", default_value = "xbuild agent --stdio")]
        agent_command: String,
        /// known_hosts file for this node (default: ~/.ssh/known_hosts).
        #[arg(long, value_name = "FILE")]
        known_hosts: Option<PathBuf>,
        /// Save the node without connecting to it.
        #[arg(long)]
        no_check: bool,
    },
    /// List nodes with their health, as each node reports it.
    Ls {
        /// Output format: `table` or `json`.
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
    },
    /// Remove a node.
    Rm {
        /// Node name.
        name: String,
    },
    /// Show a node's configuration and what it reports, as JSON.
    Inspect {
        /// Node name.
        name: String,
    },
}

/// `xbuild agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Speak the protocol on standard input and output.
    #[arg(long, required_unless_present = "info")]
    pub stdio: bool,
    /// Print this machine's agent version, platforms, load and CPUs as JSON, then exit.
    #[arg(long, conflicts_with = "stdio")]
    pub info: bool,
    /// State directory for the agent (default: `$XBUILD_ROOT` or its default).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

/// `xbuild binfmt ...`.
#[derive(Debug, Subcommand)]
pub enum BinfmtCommand {
    /// Show which platforms run natively, emulated or not at all.
    Status,
    /// Register QEMU emulators for platforms (default: all found).
    Install {
        /// Platforms.
        platforms: Vec<String>,
    },
}

/// `xbuild image ...`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Remove unused image data.
    ///
    /// Every image in xbuild's store is named by a tag, so an image that lost
    /// its last tag (Docker's "dangling" image) is simply content no tag
    /// reaches. `xbuild image prune` removes that content, and tags whose
    /// image is missing or unreadable. With `--all`, every tag is removed too
    /// (xbuild has no containers, so no image counts as in use). Content the
    /// build cache still uses is always kept; see `xbuild cache prune`.
    Prune {
        /// Remove all images (every tag), not just dangling content.
        #[arg(short, long)]
        all: bool,
        /// Do not prompt for confirmation.
        #[arg(short, long)]
        force: bool,
    },
}

/// `xbuild imagetools ...`.
#[derive(Debug, Subcommand)]
pub enum ImagetoolsCommand {
    /// Show an image or index in a registry.
    Inspect {
        /// Reference.
        reference: String,
        /// Print the raw manifest.
        #[arg(long)]
        raw: bool,
        /// Format the output with a Go-template subset: `{{.Name}}`,
        /// `{{.Manifest.Digest}}`, `{{json .Manifest}}`, `{{json .Image}}`,
        /// `{{json .Provenance}}`, `{{json .SBOM}}` (by platform when there
        /// are several), `{{json .}}` — the fields buildx shows.
        #[arg(long, value_name = "TEMPLATE")]
        format: Option<String>,
    },
    /// Create an index from images already in a registry.
    ///
    /// Sources are references, digests (in the repository of the tags) or
    /// OCI descriptors as JSON. Entries with the same digest are merged;
    /// different manifests of the same platform are all kept, as buildx does.
    Create {
        /// Reference to push the index to (repeatable).
        #[arg(short = 't', long = "tag", value_name = "REF")]
        tags: Vec<String>,
        /// Read a source (a descriptor as JSON) from a file (repeatable).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Source images or indexes (references, digests or descriptors).
        sources: Vec<String>,
        /// Keep what the first tag already lists and add the sources to it.
        #[arg(long)]
        append: bool,
        /// Add an annotation (`index:K=V`, `manifest-descriptor[PLATFORM]:K=V`).
        #[arg(long = "annotation", value_name = "[TYPE:]KEY=VALUE")]
        annotations: Vec<String>,
        /// Keep only these platforms of the sources (repeatable, comma-separated).
        #[arg(short = 'p', long = "platform", value_name = "PLATFORM")]
        platforms: Vec<String>,
        /// Print the index instead of pushing it.
        #[arg(long)]
        dry_run: bool,
        /// Write the result's descriptor and names to FILE as JSON.
        #[arg(long = "metadata-file", value_name = "FILE")]
        metadata_file: Option<PathBuf>,
    },
}

/// `xbuild attestations ...`.
#[derive(Debug, Subcommand)]
pub enum AttestationsCommand {
    /// List each platform's attestations (buildx layout and OCI referrers).
    Ls {
        /// Image reference.
        reference: String,
    },
    /// Print attestation statements as JSON.
    Get {
        /// Image reference.
        reference: String,
        /// Only this platform's (`linux/arm64`).
        #[arg(long, value_name = "PLATFORM")]
        platform: Option<String>,
        /// Only `provenance` or `sbom` (or a full predicate type).
        #[arg(long = "type", value_name = "TYPE")]
        r#type: Option<String>,
    },
}

/// `xbuild cache ...`.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Disk usage of the build cache.
    Du,
    /// Remove build cache.
    Prune {
        /// Remove all cache, not just unused records.
        #[arg(long)]
        all: bool,
        /// Keep this much storage (e.g. 10GB); least recently used records go first.
        #[arg(long)]
        keep_storage: Option<String>,
        /// Filter: `until=DURATION` (e.g. `24h`) removes only records no build
        /// has used (hit or written) for that long.
        #[arg(long)]
        filter: Vec<String>,
    },
    /// Verify the content store and build cache: every blob against its
    /// digest (corrupt ones are quarantined), snapshots (incomplete ones are
    /// removed) and cache records (damaged ones are removed).
    Check {
        /// Download quarantined blobs again from the registries they came from.
        #[arg(long)]
        repair: bool,
    },
}

/// The names `xbuild` treats as subcommands; anything else means `build`.
pub const SUBCOMMANDS: &[&str] = &[
    "build",
    "node",
    "agent",
    "binfmt",
    "images",
    "history",
    "rmi",
    "image",
    "save",
    "load",
    "imagetools",
    "attestations",
    "cache",
    "login",
    "logout",
    "version",
    "completion",
    "help",
];

/// Insert the implicit `build` subcommand: `xbuild -t x .` → `xbuild build -t x .`.
pub fn with_default_command(args: Vec<String>) -> Vec<String> {
    let Some(first) = args.get(1) else {
        return args;
    };
    let top_level_flag = matches!(first.as_str(), "-h" | "--help" | "-V" | "--version");
    if SUBCOMMANDS.contains(&first.as_str()) || top_level_flag {
        return args;
    }
    let mut out = Vec::with_capacity(args.len() + 1);
    out.push(args[0].clone());
    out.push("build".into());
    out.extend(args[1..].iter().cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn default_command_is_build() {
        let a = |v: &[&str]| with_default_command(v.iter().map(|s| s.to_string()).collect());
        assert_eq!(a(&["xbuild", "-t", "x", "."])[1], "build");
        assert_eq!(a(&["xbuild", "."])[1], "build");
        assert_eq!(a(&["xbuild", "node", "ls"])[1], "node");
        assert_eq!(a(&["xbuild", "--help"])[1], "--help");
        assert_eq!(a(&["xbuild", "version"])[1], "version");
        assert!(matches!(
            Cli::try_parse_from(a(&["xbuild", "version"]))
                .unwrap()
                .command,
            Commands::Version
        ));
        let cli = Cli::try_parse_from(a(&[
            "xbuild",
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            "r/app:1",
            "--push",
            ".",
        ]))
        .unwrap();
        match cli.command {
            Commands::Build(b) => {
                assert_eq!(b.platform, ["linux/amd64", "linux/arm64"]);
                assert!(b.push);
                assert_eq!(b.context, ".");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
