//! The ICE servers a call may use, from the URLs the gateway hands out (RFC 7064 `stun:`,
//! RFC 7065 `turn:`/`turns:`), resolved to socket addresses.

use std::net::{SocketAddr, ToSocketAddrs};

use natter_signaling::IceServer;

use crate::turn_client::TurnTransport;

/// A STUN server (for the server-reflexive candidate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StunServer {
    pub addr: SocketAddr,
}

/// A TURN server with its credentials (for the relay candidate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnServer {
    pub addr: SocketAddr,
    pub transport: TurnTransport,
    pub username: String,
    pub password: String,
}

/// What a list of [`IceServer`]s comes to; URLs that cannot be used are listed with why.
#[derive(Debug, Clone, Default)]
pub struct Servers {
    pub stun: Vec<StunServer>,
    pub turn: Vec<TurnServer>,
    pub skipped: Vec<(String, String)>,
}

/// Parses and resolves every URL (DNS names are looked up, first address kept). `turns:`
/// (TLS) is skipped for now: the gateway hands out `turn:` over UDP and TCP.
pub fn resolve(servers: &[IceServer]) -> Servers {
    let mut out = Servers::default();
    for s in servers {
        for url in &s.urls {
            match parse(url) {
                Ok(Parsed::Stun(host)) => match lookup(&host, 3478) {
                    Ok(addr) => out.stun.push(StunServer { addr }),
                    Err(e) => out.skipped.push((url.clone(), e)),
                },
                Ok(Parsed::Turn(host, transport)) => {
                    let (Some(u), Some(p)) = (&s.username, &s.credential) else {
                        out.skipped
                            .push((url.clone(), "a TURN URL without credentials".into()));
                        continue;
                    };
                    match lookup(&host, 3478) {
                        Ok(addr) => out.turn.push(TurnServer {
                            addr,
                            transport,
                            username: u.clone(),
                            password: p.clone(),
                        }),
                        Err(e) => out.skipped.push((url.clone(), e)),
                    }
                }
                Err(e) => out.skipped.push((url.clone(), e)),
            }
        }
    }
    out
}

enum Parsed {
    Stun(String),
    Turn(String, TurnTransport),
}

fn parse(url: &str) -> Result<Parsed, String> {
    let (scheme, rest) = url
        .split_once(':')
        .ok_or_else(|| "not a stun:/turn: URL".to_string())?;
    let (hostport, query) = match rest.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (rest, None),
    };
    if hostport.is_empty() || hostport.starts_with("//") {
        return Err("no host".into());
    }
    match scheme {
        "stun" => Ok(Parsed::Stun(hostport.to_string())),
        "turn" => {
            let transport = match query {
                None | Some("transport=udp") => TurnTransport::Udp,
                Some("transport=tcp") => TurnTransport::Tcp,
                Some(q) => return Err(format!("unknown TURN URL parameter {q:?}")),
            };
            Ok(Parsed::Turn(hostport.to_string(), transport))
        }
        "turns" | "stuns" => Err("TLS to the ICE server is not supported yet".into()),
        other => Err(format!("unknown scheme {other:?}")),
    }
}

fn lookup(hostport: &str, default_port: u16) -> Result<SocketAddr, String> {
    if let Ok(a) = hostport.parse::<SocketAddr>() {
        return Ok(a);
    }
    let with_port = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !hostport.ends_with(']')
    {
        hostport.to_string()
    } else {
        format!("{hostport}:{default_port}")
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("{hostport} has no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(urls: &[&str], creds: bool) -> IceServer {
        IceServer {
            urls: urls.iter().map(|s| s.to_string()).collect(),
            username: creds.then(|| "1700000000:u".into()),
            credential: creds.then(|| "secret".into()),
        }
    }

    #[test]
    fn stun_and_turn_urls_resolve_with_their_transports() {
        let s = resolve(&[
            server(&["stun:127.0.0.1:3478", "stun:[::1]"], false),
            server(
                &[
                    "turn:127.0.0.1:3478?transport=udp",
                    "turn:localhost:3479?transport=tcp",
                    "turns:127.0.0.1:5349",
                ],
                true,
            ),
        ]);
        assert_eq!(
            s.stun,
            vec![
                StunServer {
                    addr: "127.0.0.1:3478".parse().unwrap()
                },
                StunServer {
                    addr: "[::1]:3478".parse().unwrap()
                }
            ]
        );
        assert_eq!(s.turn.len(), 2);
        assert_eq!(s.turn[0].transport, TurnTransport::Udp);
        assert_eq!(s.turn[1].transport, TurnTransport::Tcp);
        assert_eq!(s.turn[1].addr.port(), 3479);
        assert_eq!(s.skipped.len(), 1, "turns: is listed as skipped");
    }

    #[test]
    fn unusable_urls_are_skipped_with_a_reason() {
        let s = resolve(&[
            server(&["turn:127.0.0.1"], false),
            server(
                &["http://x", "turn:127.0.0.1?transport=sctp", "stun:"],
                true,
            ),
        ]);
        assert!(s.stun.is_empty() && s.turn.is_empty());
        assert_eq!(s.skipped.len(), 4, "{:?}", s.skipped);
    }
}
