//! The `[sfu]` section of natter's configuration file, read by the all-in-one server (which
//! runs the SFU in-process) and by the standalone `natter-sfu` alike.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::{DEFAULT_MAX_PARTICIPANTS, SfuConfig};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SfuSettings {
    /// Runs the SFU (group calls); without it `room_join` is answered `unavailable`.
    pub enabled: bool,
    /// The UDP socket every participant's media goes through.
    pub listen: SocketAddr,
    /// The address clients are told to send to, when it is not `listen`'s (behind a NAT or
    /// a load balancer that forwards the port).
    pub public_addr: Option<SocketAddr>,
    /// Most participants in one room.
    pub max_participants: usize,
    /// Signs room tokens; gateways and the SFU must share it. Generated at start when the
    /// SFU runs in-process and none is set.
    pub token_secret: Option<String>,
    /// For a gateway: a standalone natter-sfu's control link
    /// (`ws://HOST:7883/v1/control`). When set, no SFU runs in-process. (natter-sfu itself
    /// ignores it.)
    pub url: Option<String>,
    /// Writes the payload of every packet the SFU forwards, as it can read them, to this
    /// file (see `natter_sfu::capture`): to check what the SFU sees. Costs a write per
    /// packet; at most 200,000 packets.
    pub capture: Option<std::path::PathBuf>,
}

impl Default for SfuSettings {
    fn default() -> Self {
        SfuSettings {
            enabled: true,
            listen: "127.0.0.1:7882".parse().expect("a socket address"),
            public_addr: None,
            max_participants: DEFAULT_MAX_PARTICIPANTS,
            token_secret: None,
            url: None,
            capture: None,
        }
    }
}

impl SfuSettings {
    /// The core's configuration, with the address it binds.
    pub fn build(&self) -> Result<(SfuConfig, SocketAddr), String> {
        let secret = self
            .token_secret
            .as_ref()
            .ok_or("sfu.token_secret is not set")?;
        if secret.len() < 16 {
            return Err("sfu.token_secret must be at least 16 characters".into());
        }
        if self.max_participants < 2 {
            return Err("sfu.max_participants must be at least 2".into());
        }
        let public = self.public_addr.unwrap_or(self.listen);
        if public.ip().is_unspecified() {
            return Err(format!(
                "the SFU listens on {} but clients need an address to send to: set sfu.public_addr",
                self.listen
            ));
        }
        let mut cfg = SfuConfig::new(public, secret.as_bytes().to_vec());
        cfg.max_participants = self.max_participants;
        cfg.capture = self.capture.clone();
        Ok((cfg, self.listen))
    }
}
