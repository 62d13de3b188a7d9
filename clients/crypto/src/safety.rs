//! Safety numbers: 60 digits two users read to each other (or compare as a QR code) to know
//! that no one sits between them.
//!
//! Each user's half is 30 digits derived from their user id and the Ed25519 identity keys of
//! all their devices, by iterated SHA-512 (so that finding a colliding set of keys costs
//! thousands of hashes per try). The halves are ordered by user id, so both users see the
//! same number. Any added, removed or changed device changes it.

use natter_signaling::UserId;
use sha2_011::{Digest, Sha512};

const VERSION: u16 = 1;
const ITERATIONS: usize = 5200;

fn half(user: UserId, keys: &[[u8; 32]]) -> String {
    let mut keys = keys.to_vec();
    keys.sort_unstable();
    keys.dedup();
    let concat: Vec<u8> = keys.concat();
    let mut h = Sha512::new();
    h.update(VERSION.to_be_bytes());
    h.update(user.0.to_be_bytes());
    h.update((keys.len() as u32).to_be_bytes());
    h.update(&concat);
    let mut digest = h.finalize();
    for _ in 0..ITERATIONS {
        let mut h = Sha512::new();
        h.update(digest);
        h.update(&concat);
        digest = h.finalize();
    }
    digest[..30]
        .chunks(5)
        .map(|c| {
            let n = c.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            format!("{:05}", n % 100_000)
        })
        .collect()
}

/// The safety number of users `a` and `b`, given each one's device identity keys: 60 digits
/// in 12 groups of five.
pub fn safety_number(a: (UserId, &[[u8; 32]]), b: (UserId, &[[u8; 32]])) -> String {
    let (first, second) = if a.0 <= b.0 { (a, b) } else { (b, a) };
    let digits = half(first.0, first.1) + &half(second.0, second.1);
    digits
        .as_bytes()
        .chunks(5)
        .map(|c| std::str::from_utf8(c).expect("digits"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_for_both_sides_and_sensitive_to_every_key() {
        let (a, b) = (UserId(1), UserId(2));
        let ka = [[1u8; 32], [2u8; 32]];
        let kb = [[3u8; 32]];
        let n = safety_number((a, &ka), (b, &kb));
        assert_eq!(n, safety_number((b, &kb), (a, &ka)));
        assert_eq!(n.len(), 60 + 11);
        assert!(
            n.split(' ')
                .all(|g| g.len() == 5 && g.bytes().all(|c| c.is_ascii_digit()))
        );
        // Device order does not matter; a changed or added key does.
        assert_eq!(n, safety_number((a, &[[2u8; 32], [1u8; 32]]), (b, &kb)));
        assert_ne!(n, safety_number((a, &ka), (b, &[[4u8; 32]])));
        assert_ne!(n, safety_number((a, &ka), (b, &[[3u8; 32], [5u8; 32]])));
        assert_ne!(n, safety_number((UserId(9), &ka), (b, &kb)));
    }
}
