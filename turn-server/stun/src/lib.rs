//! STUN messages (RFC 8489) and TURN ChannelData (RFC 8656 §12), decoded in place.
//!
//! [`Message::parse`] checks the header and walks the attributes once, keeping only their
//! offsets (no copies, at most [`MAX_ATTRIBUTES`]); accessors decode an attribute when asked.
//! [`MessageBuilder`] writes a message with MESSAGE-INTEGRITY and FINGERPRINT computed over
//! exactly the bytes the RFC says. Every length is checked before it is used: a truncated,
//! padded-wrong or oversized packet is an [`Error`], never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use sha1::Sha1;

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
pub const HEADER_LEN: usize = 20;
/// Attributes walked per message; more is refused.
pub const MAX_ATTRIBUTES: usize = 48;
const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// Message classes (RFC 8489 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

/// Methods natter's server handles.
pub mod method {
    pub const BINDING: u16 = 0x001;
    pub const ALLOCATE: u16 = 0x003;
    pub const REFRESH: u16 = 0x004;
    pub const SEND: u16 = 0x006;
    pub const DATA: u16 = 0x007;
    pub const CREATE_PERMISSION: u16 = 0x008;
    pub const CHANNEL_BIND: u16 = 0x009;
}

/// Attribute types.
pub mod attr {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub const EVEN_PORT: u16 = 0x0018;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const DONT_FRAGMENT: u16 = 0x001A;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    pub const SOFTWARE: u16 = 0x8022;
    pub const FINGERPRINT: u16 = 0x8028;
    pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
    pub const ICMP: u16 = 0x8004;

    /// Comprehension-required attributes (0x0000–0x7FFF) this server understands; others in
    /// that range make a request fail with 420 (RFC 8489 §7.3.1).
    pub fn understood(t: u16) -> bool {
        matches!(
            t,
            MAPPED_ADDRESS
                | USERNAME
                | MESSAGE_INTEGRITY
                | ERROR_CODE
                | UNKNOWN_ATTRIBUTES
                | CHANNEL_NUMBER
                | LIFETIME
                | XOR_PEER_ADDRESS
                | DATA
                | REALM
                | NONCE
                | XOR_RELAYED_ADDRESS
                | REQUESTED_ADDRESS_FAMILY
                | EVEN_PORT
                | REQUESTED_TRANSPORT
                | DONT_FRAGMENT
                | MESSAGE_INTEGRITY_SHA256
                | XOR_MAPPED_ADDRESS
                | RESERVATION_TOKEN
        ) || t >= 0x8000
    }
}

/// Why a packet is not a well-formed STUN message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("shorter than a STUN header")]
    Short,
    #[error("the first two bits are not zero (not STUN)")]
    NotStun,
    #[error("wrong magic cookie")]
    Cookie,
    #[error("length field disagrees with the packet")]
    Length,
    #[error("an attribute runs past the end")]
    Truncated,
    #[error("more than {MAX_ATTRIBUTES} attributes")]
    TooManyAttributes,
    #[error("FINGERPRINT is not the last attribute, or does not match")]
    Fingerprint,
    #[error("attributes after MESSAGE-INTEGRITY other than FINGERPRINT")]
    AfterIntegrity,
    #[error("a malformed attribute value")]
    BadAttribute,
}

/// Whether a packet starts like STUN (first two bits 00) or ChannelData (01).
pub fn is_channel_data(b: &[u8]) -> bool {
    b.first().is_some_and(|x| x & 0xC0 == 0x40)
}

/// A parsed STUN message borrowing its packet.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    raw: &'a [u8],
    pub method: u16,
    pub class: Class,
    pub transaction_id: [u8; 12],
    /// (type, offset of the value, length).
    attrs: arrayvec::ArrayVec<(u16, u16, u16), MAX_ATTRIBUTES>,
    /// Offset of the MESSAGE-INTEGRITY attribute's header, if present.
    integrity_at: Option<usize>,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

impl<'a> Message<'a> {
    /// Parses one STUN message that fills `raw` exactly (UDP datagram, or one framed
    /// message over TCP).
    pub fn parse(raw: &'a [u8]) -> Result<Message<'a>, Error> {
        if raw.len() < HEADER_LEN {
            return Err(Error::Short);
        }
        if raw[0] & 0xC0 != 0 {
            return Err(Error::NotStun);
        }
        if be32(raw, 4) != MAGIC_COOKIE {
            return Err(Error::Cookie);
        }
        let len = usize::from(be16(raw, 2));
        if len % 4 != 0 || HEADER_LEN + len != raw.len() {
            return Err(Error::Length);
        }
        let t = be16(raw, 0);
        let method = (t & 0x000F) | ((t & 0x00E0) >> 1) | ((t & 0x3E00) >> 2);
        let class = match ((t >> 7) & 0x2) | ((t >> 4) & 0x1) {
            0 => Class::Request,
            1 => Class::Indication,
            2 => Class::Success,
            _ => Class::Error,
        };
        let mut transaction_id = [0u8; 12];
        transaction_id.copy_from_slice(&raw[8..20]);
        let mut attrs = arrayvec::ArrayVec::new();
        let mut integrity_at = None;
        let mut at = HEADER_LEN;
        while at < raw.len() {
            if at + 4 > raw.len() {
                return Err(Error::Truncated);
            }
            let typ = be16(raw, at);
            let vlen = usize::from(be16(raw, at + 2));
            let padded = (vlen + 3) & !3;
            if at + 4 + padded > raw.len() {
                return Err(Error::Truncated);
            }
            if typ == attr::FINGERPRINT {
                if vlen != 4 || at + 8 != raw.len() {
                    return Err(Error::Fingerprint);
                }
                let mut h = crc32fast::Hasher::new();
                h.update(&raw[..at]);
                if be32(raw, at + 4) != h.finalize() ^ FINGERPRINT_XOR {
                    return Err(Error::Fingerprint);
                }
            } else if integrity_at.is_some() {
                return Err(Error::AfterIntegrity);
            }
            if typ == attr::MESSAGE_INTEGRITY {
                if vlen != 20 {
                    return Err(Error::BadAttribute);
                }
                integrity_at = Some(at);
            }
            attrs
                .try_push((typ, (at + 4) as u16, vlen as u16))
                .map_err(|_| Error::TooManyAttributes)?;
            at += 4 + padded;
        }
        Ok(Message {
            raw,
            method,
            class,
            transaction_id,
            attrs,
            integrity_at,
        })
    }

    /// The first attribute of type `t`.
    pub fn get(&self, t: u16) -> Option<&'a [u8]> {
        self.attrs
            .iter()
            .find(|(typ, _, _)| *typ == t)
            .map(|&(_, off, len)| &self.raw[usize::from(off)..usize::from(off) + usize::from(len)])
    }

    /// Attribute types present, in order.
    pub fn types(&self) -> impl Iterator<Item = u16> + '_ {
        self.attrs.iter().map(|(t, _, _)| *t)
    }

    /// Comprehension-required attributes this server does not understand.
    pub fn unknown_required(&self) -> Vec<u16> {
        self.types()
            .filter(|t| *t < 0x8000 && !attr::understood(*t))
            .collect()
    }

    pub fn string(&self, t: u16, max: usize) -> Result<Option<&'a str>, Error> {
        match self.get(t) {
            None => Ok(None),
            Some(v) if v.len() <= max => std::str::from_utf8(v)
                .map(Some)
                .map_err(|_| Error::BadAttribute),
            Some(_) => Err(Error::BadAttribute),
        }
    }

    pub fn u32(&self, t: u16) -> Result<Option<u32>, Error> {
        match self.get(t) {
            None => Ok(None),
            Some(v) if v.len() == 4 => Ok(Some(be32(v, 0))),
            Some(_) => Err(Error::BadAttribute),
        }
    }

    /// An XOR-…-ADDRESS attribute.
    pub fn xor_address(&self, t: u16) -> Result<Option<SocketAddr>, Error> {
        self.get(t)
            .map(|v| decode_xor_address(v, &self.transaction_id))
            .transpose()
    }

    /// Every XOR-PEER-ADDRESS (CreatePermission may carry several).
    pub fn xor_addresses(&self, t: u16) -> Result<Vec<SocketAddr>, Error> {
        self.attrs
            .iter()
            .filter(|(typ, _, _)| *typ == t)
            .map(|&(_, off, len)| {
                decode_xor_address(
                    &self.raw[usize::from(off)..usize::from(off) + usize::from(len)],
                    &self.transaction_id,
                )
            })
            .collect()
    }

    /// ERROR-CODE as (code, reason phrase); the phrase is cut at 128 characters (RFC 8489
    /// §14.8 bounds it so) and must be UTF-8.
    pub fn error_code(&self) -> Result<Option<(u16, &'a str)>, Error> {
        let Some(v) = self.get(attr::ERROR_CODE) else {
            return Ok(None);
        };
        if v.len() < 4 || v.len() > 4 + 763 {
            return Err(Error::BadAttribute);
        }
        let code = u16::from(v[2] & 0x07) * 100 + u16::from(v[3]);
        if !(300..700).contains(&code) || v[3] > 99 {
            return Err(Error::BadAttribute);
        }
        let reason = std::str::from_utf8(&v[4..]).map_err(|_| Error::BadAttribute)?;
        let cut = reason
            .char_indices()
            .nth(128)
            .map_or(reason.len(), |(i, _)| i);
        Ok(Some((code, &reason[..cut])))
    }

    pub fn has_integrity(&self) -> bool {
        self.integrity_at.is_some()
    }

    /// Checks MESSAGE-INTEGRITY (HMAC-SHA1) with `key`.
    pub fn check_integrity(&self, key: &[u8]) -> bool {
        let Some(at) = self.integrity_at else {
            return false;
        };
        // The length field counts up to and including MESSAGE-INTEGRITY.
        let len = (at + 24 - HEADER_LEN) as u16;
        let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("any key length");
        mac.update(&self.raw[..2]);
        mac.update(&len.to_be_bytes());
        mac.update(&self.raw[4..at]);
        mac.verify_slice(&self.raw[at + 4..at + 24]).is_ok()
    }

    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }
}

fn decode_xor_address(v: &[u8], tid: &[u8; 12]) -> Result<SocketAddr, Error> {
    if v.len() < 4 {
        return Err(Error::BadAttribute);
    }
    let port = be16(v, 2) ^ (MAGIC_COOKIE >> 16) as u16;
    match v[1] {
        0x01 if v.len() == 8 => {
            let ip = be32(v, 4) ^ MAGIC_COOKIE;
            Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        0x02 if v.len() == 20 => {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            key[4..].copy_from_slice(tid);
            let mut ip = [0u8; 16];
            for i in 0..16 {
                ip[i] = v[4 + i] ^ key[i];
            }
            Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        _ => Err(Error::BadAttribute),
    }
}

/// Builds a STUN message.
pub struct MessageBuilder {
    buf: Vec<u8>,
    transaction_id: [u8; 12],
}

impl MessageBuilder {
    pub fn new(method: u16, class: Class, transaction_id: [u8; 12]) -> MessageBuilder {
        let c = match class {
            Class::Request => 0u16,
            Class::Indication => 1,
            Class::Success => 2,
            Class::Error => 3,
        };
        let t = (method & 0x000F)
            | ((method & 0x0070) << 1)
            | ((method & 0x0F80) << 2)
            | ((c & 0x1) << 4)
            | ((c & 0x2) << 7);
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&t.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&transaction_id);
        MessageBuilder {
            buf,
            transaction_id,
        }
    }

    /// An answer to `req` (same method and transaction).
    pub fn answer(req: &Message<'_>, class: Class) -> MessageBuilder {
        Self::new(req.method, class, req.transaction_id)
    }

    fn set_len(&mut self, len: usize) {
        let l = (len as u16).to_be_bytes();
        self.buf[2] = l[0];
        self.buf[3] = l[1];
    }

    pub fn add(&mut self, t: u16, value: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(&t.to_be_bytes());
        self.buf
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        let pad = (4 - value.len() % 4) % 4;
        self.buf.extend(std::iter::repeat_n(0u8, pad));
        let n = self.buf.len() - HEADER_LEN;
        self.set_len(n);
        self
    }

    pub fn add_u32(&mut self, t: u16, v: u32) -> &mut Self {
        self.add(t, &v.to_be_bytes())
    }

    pub fn add_xor_address(&mut self, t: u16, addr: SocketAddr) -> &mut Self {
        let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
        let mut v = Vec::with_capacity(20);
        v.push(0);
        match addr.ip() {
            IpAddr::V4(ip) => {
                v.push(0x01);
                v.extend_from_slice(&port.to_be_bytes());
                v.extend_from_slice(&(u32::from(ip) ^ MAGIC_COOKIE).to_be_bytes());
            }
            IpAddr::V6(ip) => {
                v.push(0x02);
                v.extend_from_slice(&port.to_be_bytes());
                let mut key = [0u8; 16];
                key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
                key[4..].copy_from_slice(&self.transaction_id);
                for (b, k) in ip.octets().iter().zip(key) {
                    v.push(b ^ k);
                }
            }
        }
        self.add(t, &v)
    }

    /// ERROR-CODE with a reason phrase.
    pub fn add_error(&mut self, code: u16, reason: &str) -> &mut Self {
        let mut v = vec![0, 0, (code / 100) as u8, (code % 100) as u8];
        v.extend_from_slice(reason.as_bytes());
        self.add(attr::ERROR_CODE, &v)
    }

    /// Appends MESSAGE-INTEGRITY (HMAC-SHA1 under `key`).
    pub fn integrity(&mut self, key: &[u8]) -> &mut Self {
        let len = self.buf.len() - HEADER_LEN + 24;
        self.set_len(len);
        let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("any key length");
        mac.update(&self.buf);
        let tag = mac.finalize().into_bytes();
        self.add(attr::MESSAGE_INTEGRITY, &tag)
    }

    /// Appends FINGERPRINT; call last.
    pub fn fingerprint(&mut self) -> &mut Self {
        let len = self.buf.len() - HEADER_LEN + 8;
        self.set_len(len);
        let crc = crc32(&self.buf) ^ FINGERPRINT_XOR;
        self.add_u32(attr::FINGERPRINT, crc)
    }

    pub fn finish(&self) -> Vec<u8> {
        self.buf.clone()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// The long-term credential key: MD5(username ":" realm ":" password) (RFC 8489 §9.2.2).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    use md5::Digest;
    let mut h = md5::Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

/// A ChannelData message (RFC 8656 §12.4): channel number and application data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData<'a> {
    pub channel: u16,
    pub data: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// Parses a ChannelData message at the start of `b`; returns it and the bytes it took
    /// (with padding when `padded`, as over TCP).
    pub fn parse(b: &'a [u8], padded: bool) -> Result<(ChannelData<'a>, usize), Error> {
        if b.len() < 4 {
            return Err(Error::Short);
        }
        let channel = be16(b, 0);
        if !(0x4000..=0x7FFF).contains(&channel) {
            return Err(Error::BadAttribute);
        }
        let len = usize::from(be16(b, 2));
        if 4 + len > b.len() {
            return Err(Error::Truncated);
        }
        let took = if padded {
            4 + ((len + 3) & !3)
        } else {
            4 + len
        };
        Ok((
            ChannelData {
                channel,
                data: &b[4..4 + len],
            },
            took.min(b.len()),
        ))
    }

    /// Writes a ChannelData message into `out` (cleared first).
    pub fn write(channel: u16, data: &[u8], padded: bool, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&channel.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
        if padded {
            let pad = (4 - data.len() % 4) % 4;
            out.extend(std::iter::repeat_n(0u8, pad));
        }
    }
}

/// How many bytes the next framed message (STUN or ChannelData) at the start of a TCP
/// stream takes, if its header is complete.
pub fn tcp_frame_len(b: &[u8]) -> Option<usize> {
    if b.len() < 4 {
        return None;
    }
    let len = usize::from(be16(b, 2));
    Some(if is_channel_data(b) {
        4 + ((len + 3) & !3)
    } else {
        HEADER_LEN + len
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5769 §2.1: a sample request with MESSAGE-INTEGRITY and FINGERPRINT.
    const RFC5769_REQUEST: [u8; 108] = [
        0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74,
        0x65, 0x73, 0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e,
        0x00, 0x01, 0xff, 0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36,
        0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20,
        0x20, 0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e,
        0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5,
        0x7a, 0x3b, 0xcf,
    ];

    #[test]
    fn parses_the_rfc5769_sample_and_checks_its_integrity_and_fingerprint() {
        let m = Message::parse(&RFC5769_REQUEST).unwrap();
        assert_eq!(m.method, method::BINDING);
        assert_eq!(m.class, Class::Request);
        assert_eq!(m.string(attr::USERNAME, 513).unwrap(), Some("evtj:h6vY"));
        assert_eq!(
            m.string(attr::SOFTWARE, 763).unwrap(),
            Some("STUN test client")
        );
        // Short-term credential: the key is the password itself.
        assert!(m.check_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"));
        assert!(!m.check_integrity(b"wrong"));
        let mut broken = RFC5769_REQUEST;
        broken[30] ^= 1;
        assert_eq!(Message::parse(&broken).unwrap_err(), Error::Fingerprint);
    }

    #[test]
    fn error_codes_decode_with_their_reason_and_bad_ones_are_refused() {
        let tid = [3u8; 12];
        let mut b = MessageBuilder::new(method::ALLOCATE, Class::Error, tid);
        b.add_error(438, "Stale Nonce");
        let raw = b.into_bytes();
        let m = Message::parse(&raw).unwrap();
        assert_eq!(m.error_code().unwrap(), Some((438, "Stale Nonce")));
        let mut b = MessageBuilder::new(method::ALLOCATE, Class::Error, tid);
        b.add(attr::ERROR_CODE, &[0, 0, 4, 120]);
        let raw = b.into_bytes();
        assert_eq!(
            Message::parse(&raw).unwrap().error_code(),
            Err(Error::BadAttribute)
        );
        let raw = MessageBuilder::new(method::ALLOCATE, Class::Success, tid).into_bytes();
        assert_eq!(Message::parse(&raw).unwrap().error_code(), Ok(None));
    }

    #[test]
    fn built_messages_round_trip_with_integrity_and_fingerprint() {
        let tid = [7u8; 12];
        let key = long_term_key("user", "realm", "pass");
        let v6: SocketAddr = "[2001:db8::1]:3478".parse().unwrap();
        let v4: SocketAddr = "192.0.2.1:32853".parse().unwrap();
        let bytes = MessageBuilder::new(method::ALLOCATE, Class::Success, tid)
            .add_xor_address(attr::XOR_RELAYED_ADDRESS, v6)
            .add_xor_address(attr::XOR_MAPPED_ADDRESS, v4)
            .add_u32(attr::LIFETIME, 600)
            .add(attr::SOFTWARE, b"natter")
            .integrity(&key)
            .fingerprint()
            .finish();
        let m = Message::parse(&bytes).unwrap();
        assert_eq!((m.method, m.class), (method::ALLOCATE, Class::Success));
        assert_eq!(m.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap(), Some(v6));
        assert_eq!(m.xor_address(attr::XOR_MAPPED_ADDRESS).unwrap(), Some(v4));
        assert_eq!(m.u32(attr::LIFETIME).unwrap(), Some(600));
        assert!(m.check_integrity(&key));
        // Every method and class survives the type encoding.
        for method in [0x001, 0x003, 0x004, 0x006, 0x007, 0x008, 0x009, 0xFFF] {
            for class in [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ] {
                let b = MessageBuilder::new(method, class, tid).finish();
                let m = Message::parse(&b).unwrap();
                assert_eq!((m.method, m.class), (method, class));
            }
        }
    }

    #[test]
    fn malformed_packets_are_errors() {
        let good = MessageBuilder::new(method::BINDING, Class::Request, [1; 12])
            .add(attr::SOFTWARE, b"abc")
            .fingerprint()
            .finish();
        assert!(Message::parse(&good).is_ok());
        for cut in 0..good.len() {
            assert!(Message::parse(&good[..cut]).is_err(), "truncated at {cut}");
        }
        let mut bad = good.clone();
        bad[4] = 0;
        assert_eq!(Message::parse(&bad).unwrap_err(), Error::Cookie);
        let mut bad = good.clone();
        bad[0] = 0x80;
        assert_eq!(Message::parse(&bad).unwrap_err(), Error::NotStun);
        let mut bad = good.clone();
        bad[3] += 4;
        assert_eq!(Message::parse(&bad).unwrap_err(), Error::Length);
        // An attribute claiming more than is there.
        let mut bad = MessageBuilder::new(method::BINDING, Class::Request, [1; 12])
            .add(attr::SOFTWARE, b"abcd")
            .finish();
        bad[22] = 0x00;
        bad[23] = 0x40;
        assert_eq!(Message::parse(&bad).unwrap_err(), Error::Truncated);
        // Too many attributes.
        let mut b = MessageBuilder::new(method::BINDING, Class::Request, [1; 12]);
        for _ in 0..=MAX_ATTRIBUTES {
            b.add(attr::SOFTWARE, b"x");
        }
        assert_eq!(
            Message::parse(&b.finish()).unwrap_err(),
            Error::TooManyAttributes
        );
        // Attributes after MESSAGE-INTEGRITY other than FINGERPRINT.
        let bytes = MessageBuilder::new(method::BINDING, Class::Request, [1; 12])
            .integrity(b"k")
            .add(attr::SOFTWARE, b"late")
            .finish();
        assert_eq!(Message::parse(&bytes).unwrap_err(), Error::AfterIntegrity);
    }

    #[test]
    fn channel_data_frames() {
        let mut out = Vec::new();
        ChannelData::write(0x4001, b"hello", true, &mut out);
        assert_eq!(out.len(), 12);
        assert!(is_channel_data(&out));
        assert_eq!(tcp_frame_len(&out), Some(12));
        let (cd, took) = ChannelData::parse(&out, true).unwrap();
        assert_eq!((cd.channel, cd.data, took), (0x4001, &b"hello"[..], 12));
        ChannelData::write(0x4001, b"hello", false, &mut out);
        assert_eq!(ChannelData::parse(&out, false).unwrap().1, 9);
        assert!(ChannelData::parse(&out[..7], false).is_err());
        assert!(ChannelData::parse(&[0x3f, 0xff, 0, 0], false).is_err());
    }
}
