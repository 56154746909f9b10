//! Liveness of agents: how often an agent says it is alive, and how long
//! the coordinator waits in silence before it gives up on a node.
//!
//! An SSH keepalive only proves that sshd answers; an agent that is stopped
//! (SIGSTOP, a wedged kernel call, swap death) behind a healthy sshd would
//! keep a coordinator waiting forever. So the agent sends a heartbeat frame
//! every [`HEARTBEAT`] from a task independent of the build, and the
//! coordinator treats silence longer than the node timeout (default
//! [`DEFAULT_TIMEOUT`], `XBUILD_NODE_TIMEOUT` to change it) as a lost
//! worker. The same limit bounds the handshake.

use std::time::Duration;

/// How often an agent sends a heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// How long the coordinator accepts silence from an agent by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The shortest accepted node timeout: a few heartbeats.
pub const MIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Env var: the node timeout (`90s`, `2m`, `500ms`, or plain seconds).
pub const TIMEOUT_ENV: &str = "XBUILD_NODE_TIMEOUT";

/// A node timeout that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{TIMEOUT_ENV}={value:?}: {reason}")]
pub struct TimeoutError {
    /// The value given.
    pub value: String,
    /// Why it is refused.
    pub reason: String,
}

/// Parses `90s`, `2m`, `1500ms` or `60` (seconds).
pub fn parse_timeout(value: &str) -> Result<Duration, TimeoutError> {
    let err = |reason: &str| TimeoutError {
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let v = value.trim();
    let (num, unit) = match v.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| err("expected a duration such as 60s, 2m or 500ms"))?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(err("expected a duration such as 60s, 2m or 500ms")),
    };
    if d < MIN_TIMEOUT {
        return Err(err(&format!(
            "the node timeout must be at least {MIN_TIMEOUT:?} (agents send a heartbeat every {HEARTBEAT:?})"
        )));
    }
    Ok(d)
}

/// The node timeout: `XBUILD_NODE_TIMEOUT` when set, else [`DEFAULT_TIMEOUT`].
pub fn node_timeout() -> Result<Duration, TimeoutError> {
    match std::env::var(TIMEOUT_ENV) {
        Ok(v) if !v.trim().is_empty() => parse_timeout(&v),
        _ => Ok(DEFAULT_TIMEOUT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_and_short_or_bad_ones_are_refused() {
        assert_eq!(parse_timeout("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_timeout("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_timeout("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(
            parse_timeout("4500ms").unwrap(),
            Duration::from_millis(4500)
        );
        let e = parse_timeout("1s").unwrap_err().to_string();
        assert!(
            e.starts_with("XBUILD_NODE_TIMEOUT=\"1s\": the node timeout must be at least"),
            "{e}"
        );
        assert!(parse_timeout("soon").is_err());
        assert!(parse_timeout("5h").is_err());
        assert!(parse_timeout("").is_err());
    }
}
