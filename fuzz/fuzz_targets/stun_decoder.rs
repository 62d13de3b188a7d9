//! Fuzzes the STUN/ChannelData decoder and the TURN core's request path with arbitrary
//! packets: nothing may panic, hang or allocate without bound.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use natter_turn::server::{Config, FiveTuple, Server, Transport};
use natter_turn::stun::{self, ChannelData, Message, attr};

thread_local! {
    static SERVER: RefCell<Server> = RefCell::new({
        let mut cfg = Config {
            rest_secret: Some(b"fuzz".to_vec()),
            ..Config::default()
        };
        cfg.users.insert("u".into(), "p".into());
        Server::new(cfg, [1; 32])
    });
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::parse(data) {
        for t in [
            attr::XOR_PEER_ADDRESS,
            attr::XOR_MAPPED_ADDRESS,
            attr::XOR_RELAYED_ADDRESS,
        ] {
            let _ = m.xor_address(t);
            let _ = m.xor_addresses(t);
        }
        let _ = m.string(attr::USERNAME, 513);
        let _ = m.string(attr::REALM, 763);
        let _ = m.string(attr::NONCE, 763);
        let _ = m.u32(attr::LIFETIME);
        let _ = m.check_integrity(b"key");
        let _ = m.unknown_required();
    }
    let _ = ChannelData::parse(data, true);
    let _ = ChannelData::parse(data, false);
    let _ = stun::tcp_frame_len(data);
    let five = FiveTuple {
        transport: Transport::Udp,
        client: "198.51.100.1:1000".parse().unwrap(),
        server: "192.0.2.1:3478".parse().unwrap(),
    };
    SERVER.with(|s| {
        let mut s = s.borrow_mut();
        let _ = s.handle(five, data, 1_800_000_000_000);
        if s.allocation_count() > 1000 {
            *s = Server::new(Config::default(), [1; 32]);
        }
    });
});
