//! The crypto core driven directly, two or three devices talking through a stand-in for the
//! server's prekey directory (the real directory is exercised by the end-to-end tests).

use natter_crypto::{CryptoError, KeysUpload, Machine};
use natter_signaling::{DeviceBundle, DeviceId, GroupId, UserId};

/// What the server's directory holds for one device.
struct Published {
    upload: KeysUpload,
    taken: usize,
}

impl Published {
    fn publish(m: &mut Machine) -> Published {
        let upload = m.keys_to_upload(0, true).expect("first upload");
        m.keys_published(&upload);
        Published { upload, taken: 0 }
    }

    /// A claim: one one-time key each time while they last, then the last-resort key.
    fn claim(&mut self, device: DeviceId) -> DeviceBundle {
        let one_time = self.upload.one_time.get(self.taken).cloned();
        self.taken += 1;
        DeviceBundle {
            device,
            identity_key: Some(self.upload.identity_key.clone()),
            signed_prekey: Some(self.upload.signed_prekey.clone()),
            last_resort: if one_time.is_none() {
                self.upload.last_resort.clone()
            } else {
                None
            },
            one_time,
        }
    }
}

fn device(u: u64, d: u64) -> Machine {
    Machine::new(UserId(u), DeviceId(d))
}

#[test]
fn one_to_one_both_ways_with_identity_learned_on_first_contact() {
    let mut alice = device(1, 10);
    let mut bob = device(2, 20);
    let mut bob_dir = Published::publish(&mut bob);

    let change = alice
        .start_session(UserId(2), &bob_dir.claim(DeviceId(20)))
        .unwrap();
    let change = change.expect("first contact reports bob's identity");
    assert_eq!(change.old, None);
    assert_eq!(change.new, bob.keys().ed25519);

    // Several messages before any reply: all are pre-key messages of one session.
    for text in ["hi", "are you there", "?"] {
        let body = alice.encrypt(DeviceId(20), text.as_bytes()).unwrap();
        let p = bob.decrypt(UserId(1), DeviceId(10), &body).unwrap();
        assert_eq!(p.content, text.as_bytes());
    }
    assert_eq!(bob.peer(DeviceId(10)).unwrap().keys, alice.keys());

    let reply = bob.encrypt(DeviceId(10), b"yes").unwrap();
    let p = alice.decrypt(UserId(2), DeviceId(20), &reply).unwrap();
    assert_eq!(p.content, b"yes");
    assert_eq!(p.identity_change, None, "already known from the bundle");
    let again = alice.encrypt(DeviceId(20), b"good").unwrap();
    assert_eq!(
        bob.decrypt(UserId(1), DeviceId(10), &again)
            .unwrap()
            .content,
        b"good"
    );
}

#[test]
fn bad_input_is_an_error_and_leaves_the_session_working() {
    let mut alice = device(1, 10);
    let mut bob = device(2, 20);
    let mut dir = Published::publish(&mut bob);
    alice
        .start_session(UserId(2), &dir.claim(DeviceId(20)))
        .unwrap();
    let body = alice.encrypt(DeviceId(20), b"first").unwrap();
    bob.decrypt(UserId(1), DeviceId(10), &body).unwrap();

    let good = alice.encrypt(DeviceId(20), b"second").unwrap();
    let mut tampered = good.clone();
    let n = tampered.len();
    tampered[n - 5] ^= 0x40;
    assert!(bob.decrypt(UserId(1), DeviceId(10), &tampered).is_err());
    assert!(matches!(
        bob.decrypt(UserId(1), DeviceId(10), b"\x93garbage"),
        Err(CryptoError::Malformed(_))
    ));
    assert!(matches!(
        bob.decrypt(UserId(1), DeviceId(10), &[]),
        Err(CryptoError::Malformed(_))
    ));
    // The server claiming another sender is caught.
    assert!(bob.decrypt(UserId(3), DeviceId(30), &good).is_err());
    // None of that disturbed the real session.
    assert_eq!(
        bob.decrypt(UserId(1), DeviceId(10), &good).unwrap().content,
        b"second"
    );
    // Replaying a message already decrypted fails (its key is used up).
    assert!(bob.decrypt(UserId(1), DeviceId(10), &good).is_err());
}

#[test]
fn only_the_addressed_device_reads_a_message() {
    let mut alice = device(1, 10);
    let mut bob = device(2, 20);
    let mut dir = Published::publish(&mut bob);
    alice
        .start_session(UserId(2), &dir.claim(DeviceId(20)))
        .unwrap();
    let body = alice.encrypt(DeviceId(20), b"for bob's phone").unwrap();
    // The same device restored from its stored state reads it; another device of the same
    // user (a server redirecting envelopes between devices) does not.
    let key = [7u8; 32];
    let pickled = bob.pickle(&key);
    let mut clone = Machine::unpickle(&pickled, &key).unwrap();
    assert!(clone.decrypt(UserId(1), DeviceId(10), &body).is_ok());
    let mut other = device(2, 21);
    assert!(other.decrypt(UserId(1), DeviceId(10), &body).is_err());
}

#[test]
fn forged_bundles_are_refused() {
    let mut alice = device(1, 10);
    let mut bob = device(2, 20);
    let mut mallory = device(9, 90);
    let mut dir = Published::publish(&mut bob);
    let mut mdir = Published::publish(&mut mallory);
    // Bob's identity with Mallory's prekey (signed by Mallory, not Bob).
    let mut b = dir.claim(DeviceId(20));
    b.one_time = mdir.claim(DeviceId(90)).one_time;
    assert!(matches!(
        alice.start_session(UserId(2), &b),
        Err(CryptoError::BadBundle { .. })
    ));
    let mut b = dir.claim(DeviceId(20));
    b.identity_key = None;
    assert!(alice.start_session(UserId(2), &b).is_err());
    let mut b = dir.claim(DeviceId(20));
    b.signed_prekey.as_mut().unwrap().signature.0[0] ^= 1;
    assert!(alice.start_session(UserId(2), &b).is_err());
    assert!(!alice.has_session(DeviceId(20)));
}

#[test]
fn last_resort_key_serves_when_one_time_keys_run_out_and_is_then_replaced() {
    let mut bob = device(2, 20);
    let mut dir = Published::publish(&mut bob);
    let n = dir.upload.one_time.len();
    assert!(n >= 20, "a useful number of one-time keys: {n}");
    dir.taken = n;
    let mut alice = device(1, 10);
    let bundle = dir.claim(DeviceId(20));
    assert!(bundle.one_time.is_none() && bundle.last_resort.is_some());
    alice.start_session(UserId(2), &bundle).unwrap();
    let body = alice.encrypt(DeviceId(20), b"via last resort").unwrap();
    assert_eq!(
        bob.decrypt(UserId(1), DeviceId(10), &body).unwrap().content,
        b"via last resort"
    );
    assert!(bob.last_resort_used());
    // A second sender may use the same last-resort key.
    let mut carol = device(3, 30);
    carol
        .start_session(UserId(2), &dir.claim(DeviceId(20)))
        .unwrap();
    let body = carol.encrypt(DeviceId(20), b"me too").unwrap();
    assert!(bob.decrypt(UserId(3), DeviceId(30), &body).is_ok());
    // Top-up: the server says it has none left; a new last-resort key comes with new keys.
    let up = bob.keys_to_upload(0, false).unwrap();
    let old = dir.upload.last_resort.clone().unwrap();
    let new = up.last_resort.clone().expect("rotated");
    assert_ne!(old.key, new.key);
    bob.keys_published(&up);
    assert!(!bob.last_resort_used());
    // Nothing to do when the server is full and the last-resort key unused.
    assert!(bob.keys_to_upload(50, false).is_none());
}

#[test]
fn group_messages_reach_members_and_a_removed_member_reads_nothing_new() {
    let (mut a, mut b, mut c) = (device(1, 10), device(2, 20), device(3, 30));
    let (mut db, mut dc) = (Published::publish(&mut b), Published::publish(&mut c));
    a.start_session(UserId(2), &db.claim(DeviceId(20))).unwrap();
    a.start_session(UserId(3), &dc.claim(DeviceId(30))).unwrap();
    let g = GroupId(5);

    let deliver_key = |a: &mut Machine, to: &mut Machine, share: &natter_crypto::GroupKeyShare| {
        // The SDK carries the key in an Olm message; here just the crypto part.
        let body = a.encrypt(to.device(), &share.session_key).unwrap();
        let key = to.decrypt(a.user(), a.device(), &body).unwrap().content;
        to.receive_group_key(a.device(), share.group, &key).unwrap();
    };
    let share = a
        .prepare_group(g, &[DeviceId(20), DeviceId(30)], 0)
        .expect("new session");
    assert_eq!(share.to, vec![DeviceId(20), DeviceId(30)]);
    deliver_key(&mut a, &mut b, &share);
    deliver_key(&mut a, &mut c, &share);
    assert!(
        a.prepare_group(g, &[DeviceId(20), DeviceId(30)], 1)
            .is_none(),
        "already shared"
    );

    let m1 = a.encrypt_group(g, b"hello group").unwrap();
    assert_eq!(
        b.decrypt_group(UserId(1), DeviceId(10), g, &m1)
            .unwrap()
            .content,
        b"hello group"
    );
    assert_eq!(
        c.decrypt_group(UserId(1), DeviceId(10), g, &m1)
            .unwrap()
            .content,
        b"hello group"
    );
    // Claimed as another group or sender: refused.
    assert!(
        b.decrypt_group(UserId(1), DeviceId(10), GroupId(6), &m1)
            .is_err()
    );
    assert!(b.decrypt_group(UserId(3), DeviceId(30), g, &m1).is_err());

    // C is removed: A rotates and shares only with B.
    a.rotate_group(g);
    let share2 = a.prepare_group(g, &[DeviceId(20)], 2).expect("rotated");
    assert_ne!(share2.session_id, share.session_id);
    assert_eq!(share2.to, vec![DeviceId(20)]);
    deliver_key(&mut a, &mut b, &share2);
    let m2 = a.encrypt_group(g, b"after removal").unwrap();
    assert_eq!(
        b.decrypt_group(UserId(1), DeviceId(10), g, &m2)
            .unwrap()
            .content,
        b"after removal"
    );
    assert!(matches!(
        c.decrypt_group(UserId(1), DeviceId(10), g, &m2),
        Err(CryptoError::UnknownGroupSession { .. })
    ));
    let mut tampered = m2.clone();
    let n = tampered.len();
    tampered[n - 3] ^= 1;
    assert!(
        b.decrypt_group(UserId(1), DeviceId(10), g, &tampered)
            .is_err()
    );
}

#[test]
fn group_sessions_rotate_after_a_hundred_messages_or_a_week() {
    let mut a = device(1, 10);
    let g = GroupId(1);
    let first = a.prepare_group(g, &[DeviceId(20)], 0).unwrap().session_id;
    for _ in 0..100 {
        a.encrypt_group(g, b"x").unwrap();
    }
    let second = a.prepare_group(g, &[DeviceId(20)], 1).unwrap().session_id;
    assert_ne!(first, second);
    let week = 7 * 24 * 3_600_000;
    assert!(a.prepare_group(g, &[DeviceId(20)], week).is_none());
    let third = a
        .prepare_group(g, &[DeviceId(20)], week + 1)
        .unwrap()
        .session_id;
    assert_ne!(second, third);
}

#[test]
fn the_state_survives_a_pickle_round_trip() {
    let mut alice = device(1, 10);
    let mut bob = device(2, 20);
    let mut dir = Published::publish(&mut bob);
    alice
        .start_session(UserId(2), &dir.claim(DeviceId(20)))
        .unwrap();
    let body = alice.encrypt(DeviceId(20), b"one").unwrap();
    bob.decrypt(UserId(1), DeviceId(10), &body).unwrap();
    let g = GroupId(3);
    let share = alice.prepare_group(g, &[DeviceId(20)], 0).unwrap();
    let kb = alice.encrypt(DeviceId(20), &share.session_key).unwrap();
    let key = bob.decrypt(UserId(1), DeviceId(10), &kb).unwrap().content;
    bob.receive_group_key(DeviceId(10), g, &key).unwrap();

    let (ka, kbk) = ([1u8; 32], [2u8; 32]);
    let mut alice = Machine::unpickle(&alice.pickle(&ka), &ka).unwrap();
    let mut bob = Machine::unpickle(&bob.pickle(&kbk), &kbk).unwrap();
    assert!(matches!(
        Machine::unpickle(&bob.pickle(&kbk), &ka),
        Err(CryptoError::Pickle(_))
    ));
    let body = alice.encrypt(DeviceId(20), b"two").unwrap();
    assert_eq!(
        bob.decrypt(UserId(1), DeviceId(10), &body).unwrap().content,
        b"two"
    );
    let gm = alice.encrypt_group(g, b"group after restart").unwrap();
    assert_eq!(
        bob.decrypt_group(UserId(1), DeviceId(10), g, &gm)
            .unwrap()
            .content,
        b"group after restart"
    );
}

#[test]
fn a_changed_identity_is_reported() {
    let mut alice = device(1, 10);
    let mut bob = device(2, 20);
    let mut dir = Published::publish(&mut bob);
    alice
        .start_session(UserId(2), &dir.claim(DeviceId(20)))
        .unwrap();
    let old = bob.keys().ed25519;
    // Device 20 now presents a different identity (a reinstall, or a server lying).
    let mut bob2 = device(2, 20);
    let mut dir2 = Published::publish(&mut bob2);
    let change = alice
        .start_session(UserId(2), &dir2.claim(DeviceId(20)))
        .unwrap()
        .expect("change reported");
    assert_eq!(change.old, Some(old));
    assert_eq!(change.new, bob2.keys().ed25519);
    // And the same when the new identity shows up in an incoming first message.
    let mut carol = device(3, 30);
    let mut cdir = Published::publish(&mut carol);
    bob2.start_session(UserId(3), &cdir.claim(DeviceId(30)))
        .unwrap();
    carol
        .decrypt(
            UserId(2),
            DeviceId(20),
            &bob2.encrypt(DeviceId(30), b"x").unwrap(),
        )
        .unwrap();
    let mut bob3 = device(2, 20);
    bob3.start_session(UserId(3), &cdir.claim(DeviceId(30)))
        .unwrap();
    let p = carol
        .decrypt(
            UserId(2),
            DeviceId(20),
            &bob3.encrypt(DeviceId(30), b"y").unwrap(),
        )
        .unwrap();
    let change = p.identity_change.expect("reported on receipt");
    assert_eq!(change.old, Some(bob2.keys().ed25519));
}
