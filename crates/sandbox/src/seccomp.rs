//! Docker's default seccomp profile, compiled to a BPF filter with
//! libseccomp and loaded right before the command is executed.
//!
//! The profile is moby's `default.json`, shipped unchanged as data (see
//! `crates/sandbox/seccomp/README.md` for its origin and license). It is
//! interpreted the way Docker interprets it:
//!
//! - the filter covers the native architecture plus the sub-architectures
//!   the profile's `archMap` lists for it (x86 and x32 on amd64, arm on
//!   arm64), so 32-bit programs are filtered too instead of being killed;
//! - a rule applies only when its `includes` hold and its `excludes` do not:
//!   `arches` against the native architecture, `caps` against the bounding
//!   set the process gets, `minKernel` against the running kernel;
//! - rules are allowed actions (or `ERRNO` with their own `errnoRet`, such
//!   as `ENOSYS` for `clone3`), with their argument comparisons; several
//!   comparisons on one argument become separate (alternative) rules, as in
//!   runc; syscall names libseccomp does not know are skipped;
//! - everything else gets the default action, `ERRNO(EPERM)`.
//!
//! Under QEMU user emulation the filter applies to the emulator, whose
//! syscalls are the host's: the host architecture is the one that matters.

use serde::Deserialize;

use crate::InitError;

/// moby's default seccomp profile (Apache-2.0, see `seccomp/README.md`).
pub const DEFAULT_PROFILE: &str = include_str!("../seccomp/default.json");

/// A seccomp profile in moby's JSON format.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// Action for syscalls no rule matches.
    pub default_action: String,
    /// errno of the default action when it is `SCMP_ACT_ERRNO`.
    #[serde(default)]
    pub default_errno_ret: Option<u32>,
    /// Native architecture -> sub-architectures to filter as well.
    #[serde(default)]
    pub arch_map: Vec<ArchEntry>,
    /// The rules.
    #[serde(default)]
    pub syscalls: Vec<Rule>,
}

/// One `archMap` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchEntry {
    /// `SCMP_ARCH_X86_64`, ...
    pub architecture: String,
    /// Further architectures filtered along with it.
    #[serde(default)]
    pub sub_architectures: Option<Vec<String>>,
}

/// One rule of a profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Syscall names.
    #[serde(default)]
    pub names: Vec<String>,
    /// `SCMP_ACT_ALLOW`, `SCMP_ACT_ERRNO`, ...
    pub action: String,
    /// errno for `SCMP_ACT_ERRNO` (default: the profile's).
    #[serde(default)]
    pub errno_ret: Option<u32>,
    /// Argument comparisons, all of which must hold.
    #[serde(default)]
    pub args: Option<Vec<Arg>>,
    /// Conditions under which the rule applies.
    #[serde(default)]
    pub includes: Option<Condition>,
    /// Conditions under which the rule does not apply.
    #[serde(default)]
    pub excludes: Option<Condition>,
}

/// An argument comparison.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Arg {
    /// Argument index (0-5).
    pub index: u32,
    /// The value (the mask for `SCMP_CMP_MASKED_EQ`).
    pub value: u64,
    /// The masked value for `SCMP_CMP_MASKED_EQ`.
    #[serde(default)]
    pub value_two: u64,
    /// `SCMP_CMP_EQ`, `SCMP_CMP_MASKED_EQ`, ...
    pub op: String,
}

/// `includes` / `excludes` of a rule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Capability names (`CAP_SYS_ADMIN`).
    #[serde(default)]
    pub caps: Vec<String>,
    /// Architectures, in libseccomp's short names (`amd64`, `arm64`, `x32`).
    #[serde(default)]
    pub arches: Vec<String>,
    /// `major.minor`.
    #[serde(default)]
    pub min_kernel: Option<String>,
}

/// What a profile is evaluated against.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// Native architecture in the profile's short names (`amd64`, `arm64`).
    pub arch: &'a str,
    /// Capability names of the bounding set the process gets.
    pub caps: &'a [&'a str],
    /// The running kernel, `(major, minor)`.
    pub kernel: (u32, u32),
}

/// The architecture this binary runs on, in the profile's short names.
pub fn native_arch() -> &'static str {
    if cfg!(target_arch = "x86_64") {
        "amd64"
    } else if cfg!(target_arch = "aarch64") {
        "arm64"
    } else if cfg!(target_arch = "arm") {
        "arm"
    } else if cfg!(target_arch = "riscv64") {
        "riscv64"
    } else if cfg!(target_arch = "s390x") {
        "s390x"
    } else if cfg!(target_arch = "powerpc64") {
        "ppc64le"
    } else if cfg!(target_arch = "loongarch64") {
        "loong64"
    } else {
        "unknown"
    }
}

/// The `SCMP_ARCH_*` name of a short architecture name.
fn scmp_arch_name(arch: &str) -> Option<&'static str> {
    Some(match arch {
        "amd64" => "SCMP_ARCH_X86_64",
        "arm64" => "SCMP_ARCH_AARCH64",
        "arm" => "SCMP_ARCH_ARM",
        "riscv64" => "SCMP_ARCH_RISCV64",
        "s390x" => "SCMP_ARCH_S390X",
        "ppc64le" => "SCMP_ARCH_PPC64LE",
        "loong64" => "SCMP_ARCH_LOONGARCH64",
        _ => return None,
    })
}

/// `(major, minor)` of a kernel release string (`6.1.0-18-amd64`).
pub fn parse_kernel(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The running kernel's `(major, minor)`.
pub fn running_kernel() -> (u32, u32) {
    // SAFETY: utsname is plain old data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return (0, 0);
    }
    // SAFETY: the kernel NUL-terminates `release`.
    let release = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) };
    parse_kernel(&release.to_string_lossy()).unwrap_or((0, 0))
}

impl Condition {
    fn kernel_at_least(&self, kernel: (u32, u32)) -> Option<bool> {
        let min = parse_kernel(self.min_kernel.as_deref()?)?;
        Some(kernel >= min)
    }
}

impl Profile {
    /// Parses a profile.
    pub fn parse(json: &str) -> Result<Profile, String> {
        serde_json::from_str(json).map_err(|e| format!("seccomp profile: {e}"))
    }

    /// Docker's default profile.
    pub fn docker_default() -> Profile {
        Profile::parse(DEFAULT_PROFILE).expect("the shipped seccomp profile parses")
    }

    /// The architectures the filter covers for `arch`: the native one first,
    /// then its sub-architectures from the `archMap`.
    pub fn architectures(&self, arch: &str) -> Vec<String> {
        let Some(native) = scmp_arch_name(arch) else {
            return Vec::new();
        };
        let mut out = vec![native.to_string()];
        if let Some(entry) = self.arch_map.iter().find(|a| a.architecture == native) {
            out.extend(entry.sub_architectures.iter().flatten().cloned());
        }
        out
    }

    /// The rules that apply to `target`, in profile order (Docker's
    /// `includes`/`excludes` evaluation).
    pub fn rules_for(&self, target: &Target<'_>) -> Vec<&Rule> {
        self.syscalls
            .iter()
            .filter(|rule| {
                if let Some(ex) = &rule.excludes {
                    if ex.arches.iter().any(|a| a == target.arch)
                        || ex.caps.iter().any(|c| target.caps.contains(&c.as_str()))
                        || ex.kernel_at_least(target.kernel) == Some(true)
                    {
                        return false;
                    }
                }
                if let Some(inc) = &rule.includes {
                    if !inc.arches.is_empty() && !inc.arches.iter().any(|a| a == target.arch) {
                        return false;
                    }
                    if !inc.caps.iter().all(|c| target.caps.contains(&c.as_str())) {
                        return false;
                    }
                    if inc.kernel_at_least(target.kernel) == Some(false) {
                        return false;
                    }
                }
                true
            })
            .collect()
    }

    /// Whether `name` is allowed unconditionally (no argument filter) for
    /// `target`, by an `SCMP_ACT_ALLOW` rule.
    pub fn allows(&self, target: &Target<'_>, name: &str) -> bool {
        self.rules_for(target).iter().any(|r| {
            r.action == "SCMP_ACT_ALLOW"
                && r.args.as_ref().is_none_or(Vec::is_empty)
                && r.names.iter().any(|n| n == name)
        })
    }
}

/// A compiled filter, ready to load.
pub(crate) struct Filter(libseccomp::ScmpFilterContext);

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("seccomp::Filter")
    }
}

fn fail(what: impl std::fmt::Display) -> InitError {
    InitError::Seccomp {
        message: what.to_string(),
    }
}

fn action(
    name: &str,
    errno: Option<u32>,
    default_errno: u32,
) -> Result<libseccomp::ScmpAction, InitError> {
    use libseccomp::ScmpAction as A;
    let errno = errno.unwrap_or(default_errno) as i32;
    Ok(match name {
        "SCMP_ACT_ALLOW" => A::Allow,
        "SCMP_ACT_ERRNO" => A::Errno(errno),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => A::KillThread,
        "SCMP_ACT_KILL_PROCESS" => A::KillProcess,
        "SCMP_ACT_TRAP" => A::Trap,
        "SCMP_ACT_TRACE" => A::Trace(errno as u16),
        "SCMP_ACT_LOG" => A::Log,
        other => return Err(fail(format!("unknown seccomp action {other:?}"))),
    })
}

fn compare(arg: &Arg) -> Result<libseccomp::ScmpArgCompare, InitError> {
    use libseccomp::ScmpCompareOp as Op;
    let (op, datum) = match arg.op.as_str() {
        "SCMP_CMP_NE" => (Op::NotEqual, arg.value),
        "SCMP_CMP_LT" => (Op::Less, arg.value),
        "SCMP_CMP_LE" => (Op::LessOrEqual, arg.value),
        "SCMP_CMP_EQ" => (Op::Equal, arg.value),
        "SCMP_CMP_GE" => (Op::GreaterEqual, arg.value),
        "SCMP_CMP_GT" => (Op::Greater, arg.value),
        "SCMP_CMP_MASKED_EQ" => (Op::MaskedEqual(arg.value), arg.value_two),
        other => return Err(fail(format!("unknown seccomp comparison {other:?}"))),
    };
    Ok(libseccomp::ScmpArgCompare::new(arg.index, op, datum))
}

/// Compiles `profile` for `target` (the native architecture and its
/// sub-architectures). Loading it is [`Filter::load`].
pub(crate) fn compile(profile: &Profile, target: &Target<'_>) -> Result<Filter, InitError> {
    use libseccomp::{ScmpArch, ScmpFilterContext, ScmpSyscall};
    use std::str::FromStr;

    let default_errno = profile.default_errno_ret.unwrap_or(libc::EPERM as u32);
    let default = action(&profile.default_action, None, default_errno)?;
    let mut ctx = ScmpFilterContext::new(default).map_err(fail)?;
    for name in profile.architectures(target.arch).iter().skip(1) {
        // A sub-architecture libseccomp or the kernel does not know is
        // left out: its syscalls then hit the bad-architecture action.
        if let Ok(arch) = ScmpArch::from_str(name) {
            let _ = ctx.add_arch(arch);
        }
    }
    ctx.set_ctl_nnp(true).map_err(fail)?;
    for rule in profile.rules_for(target) {
        let act = action(&rule.action, rule.errno_ret, default_errno)?;
        if act == default {
            continue;
        }
        let args = rule.args.clone().unwrap_or_default();
        let cmps = args.iter().map(compare).collect::<Result<Vec<_>, _>>()?;
        // Comparisons on the same argument cannot share a rule: each one
        // becomes a rule of its own (they are alternatives), as runc does.
        let mut indexes: Vec<u32> = args.iter().map(|a| a.index).collect();
        indexes.sort_unstable();
        let repeated = indexes.windows(2).any(|w| w[0] == w[1]);
        for name in &rule.names {
            let Ok(sys) = ScmpSyscall::from_name(name) else {
                continue;
            };
            let added = if cmps.is_empty() {
                ctx.add_rule(act, sys)
            } else if repeated {
                cmps.iter()
                    .try_for_each(|c| ctx.add_rule_conditional(act, sys, &[*c]).map(drop))
                    .map(|()| &mut ctx)
            } else {
                ctx.add_rule_conditional(act, sys, &cmps)
            };
            added.map_err(|e| fail(format!("add rule for {name}: {e}")))?;
        }
    }
    Ok(Filter(ctx))
}

impl Filter {
    /// Installs the filter on this thread (and sets `no_new_privs`).
    pub(crate) fn load(&self) -> Result<(), InitError> {
        self.0.load().map_err(|e| fail(format!("load filter: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::DOCKER_DEFAULT_NAMES;

    fn target<'a>(arch: &'a str, caps: &'a [&'a str]) -> Target<'a> {
        Target {
            arch,
            caps,
            kernel: (6, 1),
        }
    }

    #[test]
    fn the_shipped_profile_is_docker_default() {
        let p = Profile::docker_default();
        assert_eq!(p.default_action, "SCMP_ACT_ERRNO");
        assert_eq!(p.default_errno_ret, Some(1));
        assert_eq!(
            p.architectures("amd64"),
            ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
        );
        assert_eq!(
            p.architectures("arm64"),
            ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
        );
    }

    // Expectations of Docker's default profile for a container with the
    // default capabilities, ported from moby's integration-cli tests
    // (docker_cli_run_unix_test.go): TestRunSeccompProfileDenyUnshare,
    // TestRunSeccompProfileDenyUnshareUserns, TestRunSeccompDefaultProfileNS
    // (unshare/setns refused without CAP_SYS_ADMIN) and
    // TestRunSeccompDefaultProfileAcct (acct refused without CAP_SYS_PACCT).
    #[test]
    fn default_caps_block_namespace_and_kernel_syscalls() {
        let p = Profile::docker_default();
        for arch in ["amd64", "arm64"] {
            let t = target(arch, DOCKER_DEFAULT_NAMES);
            for blocked in [
                "mount",
                "umount2",
                "unshare",
                "setns",
                "pivot_root",
                "init_module",
                "finit_module",
                "kexec_load",
                "bpf",
                "keyctl",
                "add_key",
                "request_key",
                "open_by_handle_at",
                "reboot",
                "swapon",
                "syslog",
                "acct",
                "settimeofday",
                "perf_event_open",
                "clone3",
                "fsopen",
                "fsmount",
                "move_mount",
                "open_tree",
                "userfaultfd",
            ] {
                assert!(
                    !p.allows(&t, blocked),
                    "{arch}: {blocked} must not be allowed"
                );
            }
            for allowed in [
                "read", "write", "execve", "openat", "chroot", "mknodat", "setuid", "ptrace",
            ] {
                assert!(p.allows(&t, allowed), "{arch}: {allowed} must be allowed");
            }
        }
        // clone is allowed only with an argument filter that keeps out the
        // namespace flags (the mask covers CLONE_NEWNS..CLONE_NEWNET).
        let t = target("amd64", DOCKER_DEFAULT_NAMES);
        let clone: Vec<_> = p
            .rules_for(&t)
            .into_iter()
            .filter(|r| r.names.iter().any(|n| n == "clone"))
            .collect();
        assert_eq!(clone.len(), 1);
        let arg = &clone[0].args.as_ref().unwrap()[0];
        assert_eq!(
            (arg.index, arg.op.as_str(), arg.value_two),
            (0, "SCMP_CMP_MASKED_EQ", 0)
        );
        let ns_flags = libc::CLONE_NEWNS
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUSER
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWCGROUP;
        assert_eq!(arg.value, ns_flags as u64);
        // clone3 cannot be filtered by argument: ENOSYS makes libc fall back.
        let clone3 = p
            .rules_for(&t)
            .into_iter()
            .find(|r| r.names.iter().any(|n| n == "clone3"))
            .unwrap();
        assert_eq!(
            (clone3.action.as_str(), clone3.errno_ret),
            ("SCMP_ACT_ERRNO", Some(38))
        );
    }

    #[test]
    fn capabilities_and_arches_select_rules() {
        let p = Profile::docker_default();
        let admin: Vec<&str> = DOCKER_DEFAULT_NAMES
            .iter()
            .copied()
            .chain(["CAP_SYS_ADMIN"])
            .collect();
        let t = target("amd64", &admin);
        assert!(p.allows(&t, "mount") && p.allows(&t, "unshare") && p.allows(&t, "clone"));
        // moby TestRunSeccompDefaultProfileAcct: SYS_ADMIN does not open
        // acct, SYS_PACCT does.
        assert!(!p.allows(&t, "acct"));
        let pacct: Vec<&str> = DOCKER_DEFAULT_NAMES
            .iter()
            .copied()
            .chain(["CAP_SYS_PACCT"])
            .collect();
        assert!(p.allows(&target("amd64", &pacct), "acct"));
        let t = target("amd64", DOCKER_DEFAULT_NAMES);
        assert!(p.allows(&t, "arch_prctl") && p.allows(&t, "modify_ldt"));
        let t = target("arm64", DOCKER_DEFAULT_NAMES);
        assert!(!p.allows(&t, "arch_prctl") && p.allows(&t, "arm_fadvise64_64"));
        // minKernel: ptrace is allowed from 4.8 on only.
        let old = Target {
            arch: "amd64",
            caps: DOCKER_DEFAULT_NAMES,
            kernel: (4, 4),
        };
        assert!(!p.allows(&old, "ptrace"));
        assert_eq!(parse_kernel("6.18.44-fc-v1272"), Some((6, 18)));
        assert_eq!(parse_kernel("4.8"), Some((4, 8)));
    }

    #[test]
    fn the_default_profile_compiles_for_this_machine() {
        let p = Profile::docker_default();
        let t = Target {
            arch: native_arch(),
            caps: DOCKER_DEFAULT_NAMES,
            kernel: running_kernel(),
        };
        let filter = compile(&p, &t).unwrap();
        let path = std::env::temp_dir().join(format!("xbuild-seccomp-{}.bpf", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        filter.0.export_bpf(&file).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::remove_file(&path).unwrap();
        // One BPF instruction is 8 bytes; hundreds of syscalls need hundreds.
        assert!(len > 8 * 300, "a filter of {len} bytes is too small");
    }
}
