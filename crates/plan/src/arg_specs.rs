//! Parsers of instruction arguments the planner validates as BuildKit
//! does: EXPOSE port specs and `--chmod` modes.

/// One EXPOSE word, parsed as BuildKit does.
pub(crate) struct PortSpec {
    /// `N/proto` for each container port.
    pub(crate) ports: Vec<String>,
    /// An IP address or a host port was given.
    pub(crate) host_mapping: bool,
    /// The protocol was not lowercase.
    pub(crate) proto_casing: bool,
}

/// `[ip:][hostPort:]port[-end][/proto]` (BuildKit's EXPOSE port specs).
pub(crate) fn parse_port_spec(raw: &str) -> Result<PortSpec, String> {
    let parts: Vec<&str> = raw.split(':').collect();
    let n = parts.len();
    let (ip, host_port, container) = match n {
        1 => (String::new(), "", parts[0]),
        2 => (String::new(), parts[0], parts[1]),
        _ => (parts[..n - 2].join(":"), parts[n - 2], parts[n - 1]),
    };
    let (port, proto) = container.split_once('/').unwrap_or((container, ""));
    if port.is_empty() {
        return Err(format!("invalid port: {raw:?}: no port specified"));
    }
    let proto_l = proto.to_ascii_lowercase();
    let proto_l = match proto_l.as_str() {
        "" => "tcp".to_string(),
        "tcp" | "udp" | "sctp" => proto_l,
        _ => return Err(format!("invalid port: {raw:?}: invalid proto: {proto}")),
    };
    if !ip.is_empty() {
        let bare = ip.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("invalid IP address: {ip}"));
        }
    }
    let range = |s: &str| -> Option<(u32, u32)> {
        let num = |x: &str| x.parse::<u32>().ok().filter(|v| *v <= 65535);
        match s.split_once('-') {
            None => num(s).map(|a| (a, a)),
            Some((a, b)) if a == b => num(a).map(|a| (a, a)),
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                (b >= a).then_some((a, b))
            }
        }
    };
    let (start, end) = range(port).ok_or_else(|| format!("invalid containerPort: {port}"))?;
    if !host_port.is_empty() {
        let (hs, he) = range(host_port).ok_or_else(|| format!("invalid hostPort: {host_port}"))?;
        if end - start != he - hs && end != start {
            return Err(format!(
                "invalid ranges specified for container and host Ports: {port} and {host_port}"
            ));
        }
    }
    Ok(PortSpec {
        ports: (start..=end).map(|p| format!("{p}/{proto_l}")).collect(),
        host_mapping: !ip.is_empty() || !host_port.is_empty(),
        proto_casing: proto != proto.to_ascii_lowercase(),
    })
}

/// Checks a `--chmod` value as BuildKit does: octal up to 07777, or a
/// symbolic mode.
pub(crate) fn validate_chmod(m: &str) -> Result<(), String> {
    // BuildKit's wording for both a bad octal value and an unparsable mode.
    let invalid = || {
        format!("invalid chmod parameter: '{m}'. it should be octal string and between 0 and 07777")
    };
    if !m.is_empty() && m.chars().all(|c| ('0'..='7').contains(&c)) {
        return match u32::from_str_radix(m, 8) {
            Ok(v) if v <= 0o7777 => Ok(()),
            _ => Err(invalid()),
        };
    }
    // Symbolic modes (u+x,go-w) are accepted by BuildKit with --link; check the shape.
    let symbolic = m.split(',').all(|clause| {
        let who_end = clause
            .find(|c: char| !"ugoa".contains(c))
            .unwrap_or(clause.len());
        let rest = &clause[who_end..];
        !rest.is_empty()
            && "+-=".contains(&rest[..1])
            && rest[1..].chars().all(|c| "rwxXst".contains(c))
    });
    if symbolic {
        Ok(())
    } else {
        Err(invalid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        let ports = |p: &str| parse_port_spec(p).map(|s| s.ports);
        assert_eq!(ports("80").unwrap(), ["80/tcp"]);
        assert_eq!(ports("53/UDP").unwrap(), ["53/udp"]);
        assert!(parse_port_spec("53/UDP").unwrap().proto_casing);
        assert_eq!(
            ports("8000-8002").unwrap(),
            ["8000/tcp", "8001/tcp", "8002/tcp"]
        );
        assert_eq!(ports("080/tcp").unwrap(), ["80/tcp"]);
        assert!(ports("http").is_err());
        assert!(ports("80/xyz").is_err());
        assert!(ports("99999").is_err());
        // Host IP and host port forms: the container port, with a warning
        // (convert_expose.go, ExposeInvalidFormat).
        let s = parse_port_spec("127.0.0.1:8080:80/udp").unwrap();
        assert_eq!(
            (s.ports, s.host_mapping),
            (vec!["80/udp".to_string()], true)
        );
        let s = parse_port_spec("8080:80").unwrap();
        assert_eq!(
            (s.ports, s.host_mapping),
            (vec!["80/tcp".to_string()], true)
        );
        assert_eq!(ports("[::1]:8080:80").unwrap(), ["80/tcp"]);
        assert!(ports("300.0.0.1:8080:80").is_err());
        assert!(ports("8000-8001:80-82").is_err());
    }

    #[test]
    fn chmods() {
        assert!(validate_chmod("755").is_ok());
        assert!(validate_chmod("0644").is_ok());
        assert!(validate_chmod("u+x,go-w").is_ok());
        assert!(validate_chmod("888").is_err());
        assert!(validate_chmod("rwx").is_err());
        // BuildKit's bounds and wording (testCopyInvalidChmod).
        assert!(validate_chmod("07777").is_ok());
        assert_eq!(
            validate_chmod("10000").unwrap_err(),
            "invalid chmod parameter: '10000'. it should be octal string and between 0 and 07777"
        );
        assert_eq!(
            validate_chmod("64a").unwrap_err(),
            "invalid chmod parameter: '64a'. it should be octal string and between 0 and 07777"
        );
    }
}
