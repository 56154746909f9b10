//! `xbuild version`: what this binary is, for bug reports.

use xbuild_oci::Platform;

/// The lines `xbuild version` prints.
pub fn text() -> String {
    format!(
        "xbuild {}\n commit:   {}\n rustc:    {}\n platform: {}\n",
        env!("CARGO_PKG_VERSION"),
        env!("XBUILD_GIT_COMMIT"),
        env!("XBUILD_RUSTC_VERSION"),
        Platform::host(),
    )
}

/// Prints [`text`].
pub fn run() -> anyhow::Result<()> {
    print!("{}", text());
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_version_commit_compiler_and_platform() {
        let t = super::text();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], format!("xbuild {}", env!("CARGO_PKG_VERSION")));
        assert!(
            lines[1].starts_with(" commit:   ") && lines[1].len() > 11,
            "{t}"
        );
        assert!(lines[2].starts_with(" rustc:    rustc "), "{t}");
        assert!(lines[3].starts_with(" platform: linux/"), "{t}");
    }
}
