//! Process capabilities: Docker's default set for a `RUN` step, or every
//! capability for `--security=insecure`.
//!
//! Docker (and BuildKit's runc/containerd default spec) gives a container
//! process 14 capabilities. For root they are the bounding, permitted,
//! effective and inheritable sets; for any other user the bounding set only
//! (the other sets are empty, as the kernel leaves them after `setuid`).
//! The ambient set is always empty in the default mode.

/// Docker's default capabilities: `(number, name)`.
pub const DOCKER_DEFAULT: &[(u32, &str)] = &[
    (0, "CAP_CHOWN"),
    (1, "CAP_DAC_OVERRIDE"),
    (3, "CAP_FOWNER"),
    (4, "CAP_FSETID"),
    (5, "CAP_KILL"),
    (6, "CAP_SETGID"),
    (7, "CAP_SETUID"),
    (8, "CAP_SETPCAP"),
    (10, "CAP_NET_BIND_SERVICE"),
    (13, "CAP_NET_RAW"),
    (18, "CAP_SYS_CHROOT"),
    (27, "CAP_MKNOD"),
    (29, "CAP_AUDIT_WRITE"),
    (31, "CAP_SETFCAP"),
];

/// The names of [`DOCKER_DEFAULT`].
pub const DOCKER_DEFAULT_NAMES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SYS_CHROOT",
    "CAP_MKNOD",
    "CAP_AUDIT_WRITE",
    "CAP_SETFCAP",
];

/// [`DOCKER_DEFAULT`] as a bit mask (`00000000a80425fb` in
/// `/proc/self/status`).
pub const fn docker_default_mask() -> u64 {
    let mut mask = 0u64;
    let mut i = 0;
    while i < DOCKER_DEFAULT.len() {
        mask |= 1 << DOCKER_DEFAULT[i].0;
        i += 1;
    }
    mask
}

#[cfg(target_os = "linux")]
pub(crate) use linux::*;

#[cfg(target_os = "linux")]
mod linux {
    use std::io;

    use crate::InitError;

    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }

    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }

    /// The highest capability number the kernel knows.
    pub(crate) fn last_cap() -> u32 {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40)
    }

    /// Every capability of this process's bounding set (up to `last`), as
    /// a mask: "all" capabilities are the ones the host grants us.
    pub(crate) fn all_mask(last: u32) -> u64 {
        let mut mask = 0u64;
        for cap in 0..=last.min(63) {
            // SAFETY: prctl with integer arguments only.
            if unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) } == 1 {
                mask |= 1 << cap;
            }
        }
        mask
    }

    fn prctl(
        op: libc::c_int,
        a: libc::c_ulong,
        b: libc::c_ulong,
        what: &str,
    ) -> Result<(), InitError> {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(op, a, b, 0, 0) };
        if rc < 0 {
            return Err(InitError::syscall(what, &io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Removes every capability not in `keep` from the bounding set.
    pub(crate) fn limit_bounding(keep: u64, last: u32) -> Result<(), InitError> {
        for cap in 0..=last {
            if keep & (1 << cap) == 0 {
                prctl(
                    libc::PR_CAPBSET_DROP,
                    cap as libc::c_ulong,
                    0,
                    &format!("prctl(PR_CAPBSET_DROP, {cap})"),
                )?;
            }
        }
        Ok(())
    }

    /// Sets the effective, permitted and inheritable sets of this thread.
    pub(crate) fn set(effective: u64, permitted: u64, inheritable: u64) -> Result<(), InitError> {
        let mut header = Header {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let split = |m: u64| (m as u32, (m >> 32) as u32);
        let (e0, e1) = split(effective);
        let (p0, p1) = split(permitted);
        let (i0, i1) = split(inheritable);
        let data = [
            Data {
                effective: e0,
                permitted: p0,
                inheritable: i0,
            },
            Data {
                effective: e1,
                permitted: p1,
                inheritable: i1,
            },
        ];
        // SAFETY: header and data are valid for the kernel's v3 layout (one
        // header, two data words) and outlive the call.
        let rc =
            unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) };
        if rc < 0 {
            return Err(InitError::syscall("capset", &io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Empties the ambient set.
    pub(crate) fn clear_ambient() -> Result<(), InitError> {
        prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            "prctl(PR_CAP_AMBIENT_CLEAR_ALL)",
        )
    }

    /// Raises every capability of `mask` in the ambient set (they must be
    /// permitted and inheritable already).
    pub(crate) fn raise_ambient(mask: u64, last: u32) -> Result<(), InitError> {
        for cap in 0..=last {
            if mask & (1 << cap) != 0 {
                prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    cap as libc::c_ulong,
                    &format!("prctl(PR_CAP_AMBIENT_RAISE, {cap})"),
                )?;
            }
        }
        Ok(())
    }

    /// Keeps the permitted set across the next `setuid` away from root.
    pub(crate) fn keep_caps(on: bool) -> Result<(), InitError> {
        prctl(
            libc::PR_SET_KEEPCAPS,
            on as libc::c_ulong,
            0,
            "prctl(PR_SET_KEEPCAPS)",
        )
    }

    /// Sets `no_new_privs`: setuid bits and file capabilities no longer
    /// raise privileges on `execve`.
    pub(crate) fn no_new_privs() -> Result<(), InitError> {
        prctl(
            libc::PR_SET_NO_NEW_PRIVS,
            1,
            0,
            "prctl(PR_SET_NO_NEW_PRIVS)",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_default_set_is_a80425fb() {
        assert_eq!(docker_default_mask(), 0xa804_25fb);
        assert_eq!(DOCKER_DEFAULT.len(), DOCKER_DEFAULT_NAMES.len());
        for ((_, a), b) in DOCKER_DEFAULT.iter().zip(DOCKER_DEFAULT_NAMES) {
            assert_eq!(a, b);
        }
    }
}
