//! `USER` resolution from the image's own `/etc/passwd` and `/etc/group`,
//! with Docker's rules.
//!
//! The files are read through host paths before the sandbox pivots into the
//! root filesystem, so symlinks in the image are resolved inside the root
//! filesystem and never lead to the host's files.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::paths::resolve_in_root;

/// The passwd file, inside the root filesystem.
pub const PASSWD: &str = "/etc/passwd";
/// The group file, inside the root filesystem.
pub const GROUP: &str = "/etc/group";

/// Largest uid or gid Docker accepts.
const MAX_ID: u64 = i32::MAX as u64;

/// The identity a process runs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedUser {
    /// User name from `/etc/passwd`, when there is an entry.
    pub name: Option<String>,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids: the primary group, then the groups of
    /// `/etc/group` that list the user by name (only the primary group
    /// when the group was given explicitly, as in Docker).
    pub additional_gids: Vec<u32>,
    /// Home directory from `/etc/passwd`, or `/`.
    pub home: String,
}

/// Why a `USER` could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum UserError {
    /// The `USER` value is malformed.
    #[error("invalid user {spec:?}: {reason}")]
    Invalid {
        /// The `USER` value.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A passwd or group file exists but could not be read.
    #[error("read {path} in the root filesystem: {message}")]
    Read {
        /// The file, inside the root filesystem.
        path: String,
        /// The error.
        message: String,
    },
    /// A user name is not in the passwd file.
    #[error("unable to find user {user}: no matching entries in {path}")]
    UserNotFound {
        /// The user name.
        user: String,
        /// The file searched, inside the root filesystem.
        path: String,
    },
    /// A group name is not in the group file.
    #[error("unable to find group {group}: no matching entries in {path}")]
    GroupNotFound {
        /// The group name.
        group: String,
        /// The file searched, inside the root filesystem.
        path: String,
    },
}

/// One line of `/etc/passwd`.
#[derive(Debug, Clone)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

/// One line of `/etc/group`.
#[derive(Debug, Clone)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Resolves a Docker `USER` value (`""`, `name`, `uid`, `name:group`,
/// `uid:gid`, `uid:groupname`, `name:gid`) against the passwd and group
/// files of `rootfs`.
///
/// A numeric uid without a passwd entry is allowed (gid 0 unless given, home
/// `/`); a name that is not found is an error naming the file searched.
pub fn resolve(rootfs: &Path, user: &str) -> Result<ResolvedUser, UserError> {
    let user = user.trim();
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    if user_part.is_empty() && group_part.is_some() {
        return Err(invalid(user, "empty user name"));
    }
    if group_part == Some("") {
        return Err(invalid(user, "empty group name"));
    }
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let numeric_uid = parse_id(user, user_part)?;

    let passwd = read_passwd(rootfs)?;
    let entry = passwd
        .iter()
        .find(|e| match numeric_uid {
            Some(uid) => e.uid == uid,
            None => e.name == user_part,
        })
        .cloned();
    let (uid, mut gid, name, home) = match (&entry, numeric_uid) {
        (Some(e), _) => (e.uid, e.gid, Some(e.name.clone()), e.home.clone()),
        (None, Some(uid)) => (uid, 0, None, "/".to_string()),
        (None, None) => {
            return Err(UserError::UserNotFound {
                user: user_part.to_string(),
                path: PASSWD.to_string(),
            })
        }
    };

    let mut additional_gids = Vec::new();
    match group_part {
        Some(group) => {
            let numeric_gid = parse_id(user, group)?;
            let groups = read_group(rootfs)?;
            gid = match numeric_gid {
                Some(g) => g,
                None => {
                    groups
                        .iter()
                        .find(|g| g.name == group)
                        .ok_or_else(|| UserError::GroupNotFound {
                            group: group.to_string(),
                            path: GROUP.to_string(),
                        })?
                        .gid
                }
            };
        }
        None => {
            if let Some(name) = &name {
                let groups = read_group(rootfs)?;
                for g in groups
                    .iter()
                    .filter(|g| g.members.iter().any(|m| m == name))
                {
                    if !additional_gids.contains(&g.gid) {
                        additional_gids.push(g.gid);
                    }
                }
            }
        }
    }
    // The primary group is a supplementary group too, first
    // (CVE-2023-25173; BuildKit's testUserAdditionalGids).
    additional_gids.retain(|g| *g != gid);
    additional_gids.insert(0, gid);
    let home = if home.is_empty() {
        "/".to_string()
    } else {
        home
    };
    Ok(ResolvedUser {
        name,
        uid,
        gid,
        additional_gids,
        home,
    })
}

fn invalid(spec: &str, reason: &str) -> UserError {
    UserError::Invalid {
        spec: spec.to_string(),
        reason: reason.to_string(),
    }
}

/// `Some(id)` for a decimal id, `None` for a name.
fn parse_id(spec: &str, part: &str) -> Result<Option<u32>, UserError> {
    if !part.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    match part.parse::<u64>() {
        Ok(id) if id <= MAX_ID => Ok(Some(id as u32)),
        _ => Err(invalid(spec, "uids and gids must be in range 0-2147483647")),
    }
}

/// Reads a file of the root filesystem; a missing file reads as empty.
fn read_in_root(rootfs: &Path, path: &str) -> Result<String, UserError> {
    let read_err = |e: io::Error| UserError::Read {
        path: path.to_string(),
        message: e.to_string(),
    };
    let host = resolve_in_root(rootfs, Path::new(path)).map_err(read_err)?;
    match std::fs::read(&host) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(read_err(e)),
    }
}

fn fields(line: &str) -> Option<Vec<&str>> {
    let line = line.trim_end_matches('\r');
    if line.trim().is_empty() || line.trim_start().starts_with('#') {
        return None;
    }
    Some(line.split(':').collect())
}

fn read_passwd(rootfs: &Path) -> Result<Vec<PasswdEntry>, UserError> {
    Ok(parse_passwd(&read_in_root(rootfs, PASSWD)?))
}

fn read_group(rootfs: &Path) -> Result<Vec<GroupEntry>, UserError> {
    Ok(parse_group(&read_in_root(rootfs, GROUP)?))
}

/// `name:password:uid:gid:gecos:home:shell`; malformed lines are skipped.
fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(fields)
        .filter_map(|f| {
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.trim().parse().ok()?,
                gid: f.get(3)?.trim().parse().ok()?,
                home: f.get(5).map(|h| h.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

/// `name:password:gid:member,member`; malformed lines are skipped.
fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(fields)
        .filter_map(|f| {
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.trim().parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|m| !m.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn rootfs(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("xbuild-sandbox-user-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(
            dir.join("etc/passwd"),
            "# comment\nroot:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n\
             broken line\nnohome:x:1001:1001::\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("etc/group"),
            "root:x:0:root\nwheel:x:10:root,app\napp:x:1000:\nstaff:x:50:app\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn docker_user_forms() {
        let root = rootfs("forms");
        let r = resolve(&root, "").unwrap();
        assert_eq!((r.uid, r.gid, r.home.as_str()), (0, 0, "/root"));
        assert_eq!(r.additional_gids, vec![0, 10]);

        let app = resolve(&root, "app").unwrap();
        assert_eq!((app.uid, app.gid), (1000, 1000));
        assert_eq!(app.additional_gids, vec![1000, 10, 50]);
        assert_eq!(app.home, "/home/app");
        assert_eq!(app.name.as_deref(), Some("app"));
        assert_eq!(resolve(&root, "1000").unwrap(), app);

        let g = resolve(&root, "app:staff").unwrap();
        assert_eq!((g.uid, g.gid), (1000, 50));
        assert_eq!(g.additional_gids, vec![50]);
        // No passwd entry: gid 0, which is also the one group.
        assert_eq!(resolve(&root, "1234").unwrap().additional_gids, vec![0]);
        assert_eq!(resolve(&root, "1000:7").unwrap().gid, 7);
        assert_eq!(resolve(&root, "1000:wheel").unwrap().gid, 10);

        let unknown = resolve(&root, "4242").unwrap();
        assert_eq!((unknown.uid, unknown.gid), (4242, 0));
        assert_eq!((unknown.home.as_str(), unknown.name), ("/", None));
        assert_eq!(resolve(&root, "4242:12").unwrap().gid, 12);
        assert_eq!(resolve(&root, "nohome").unwrap().home, "/");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn errors_name_the_file() {
        let root = rootfs("errors");
        let e = resolve(&root, "nobody").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unable to find user nobody: no matching entries in /etc/passwd"
        );
        let e = resolve(&root, "app:nogroup").unwrap_err();
        assert!(e.to_string().contains("/etc/group"), "{e}");
        assert!(matches!(
            resolve(&root, ":x"),
            Err(UserError::Invalid { .. })
        ));
        assert!(matches!(
            resolve(&root, "99999999999"),
            Err(UserError::Invalid { .. })
        ));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn passwd_symlink_does_not_escape() {
        let root = rootfs("escape");
        // A hostile image pointing /etc/passwd at the host's file: resolved
        // inside the root it names /etc/host-passwd there, which is missing.
        std::fs::remove_file(root.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/../../../../etc/host-passwd", root.join("etc/passwd"))
            .unwrap();
        std::fs::write(root.join("etc/host-passwd"), "evil:x:7:7::/evil:/bin/sh\n").unwrap();
        assert_eq!(resolve(&root, "evil").unwrap().uid, 7);
        std::fs::remove_file(root.join("etc/host-passwd")).unwrap();
        assert!(resolve(&root, "root").is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
