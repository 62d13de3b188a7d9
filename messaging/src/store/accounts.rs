//! Accounts and devices: registration codes, bearer tokens, linking, revocation, settings.
//!
//! A bearer token is `<device id>.<secret>`; only SHA-256 of the secret is stored, so a copy
//! of the database does not let anyone connect as a device.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use natter_signaling::{
    DeviceId, DeviceInfo, ErrorCode, PresenceVisibility, ProtocolError, UserId, UserMatch,
    check_name,
};
use rusqlite::{OptionalExtension, params};

use super::{Core, ct_eq, random_bytes, sha256, sql_err};

/// Most linked (non-primary) devices per user.
pub const MAX_LINKED_DEVICES: usize = 4;
/// Wrong guesses allowed for one registration code.
const MAX_CODE_ATTEMPTS: i64 = 5;
/// Wrong guesses are counted over this long, across codes (see `max_wrong_codes_*`).
pub const GUESS_WINDOW_MS: u64 = 24 * 3_600_000;
/// The `code_guesses` row counting every network together.
const ALL_NETWORKS: &str = "*";

/// A new device's credentials.
#[derive(Debug, Clone)]
pub struct Registered {
    pub user: UserId,
    pub device: DeviceId,
    pub primary: bool,
    pub token: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserSettings {
    pub presence: PresenceVisibility,
    pub read_receipts: bool,
}

/// Who is on the other end of an authenticated socket.
#[derive(Debug, Clone, Copy)]
pub struct AuthInfo {
    pub user: UserId,
    pub device: DeviceId,
    pub primary: bool,
    pub settings: UserSettings,
    /// The highest queue sequence assigned to this device so far.
    pub last_qseq: u64,
}

/// Normalizes a phone number to E.164 (`+` and 8 to 15 digits); spaces, dashes, dots and
/// parentheses are dropped.
pub fn normalize_phone(raw: &str) -> Result<String, ProtocolError> {
    let cleaned: String = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    let digits = cleaned.strip_prefix('+').unwrap_or("");
    let ok = (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if !ok {
        return Err(ProtocolError::invalid(format!(
            "{raw:?} is not a phone number in international format (e.g. +15551234567)"
        )));
    }
    Ok(cleaned)
}

fn code_hash(phone: &str, code: &str) -> [u8; 32] {
    sha256(format!("{phone}:{code}").as_bytes())
}

fn presence_from_db(v: i64) -> PresenceVisibility {
    if v == 1 {
        PresenceVisibility::Nobody
    } else {
        PresenceVisibility::Everyone
    }
}

fn presence_to_db(v: PresenceVisibility) -> i64 {
    match v {
        PresenceVisibility::Everyone => 0,
        PresenceVisibility::Nobody => 1,
    }
}

fn unauthorized(msg: &str) -> ProtocolError {
    ProtocolError::new(ErrorCode::Unauthorized, msg)
}

impl Core {
    /// Creates a fresh registration code for `phone` (replacing any earlier one).
    pub fn request_code(&mut self, phone: &str, now: u64) -> Result<String, ProtocolError> {
        let n = u32::from_le_bytes(random_bytes::<4>()) % 1_000_000;
        let code = format!("{n:06}");
        let expires = now + u64::from(self.cfg.code_ttl_s) * 1000;
        self.db()
            .execute(
                "INSERT INTO codes(phone, code_hash, expires_ms, attempts) VALUES (?1, ?2, ?3, 0)
                 ON CONFLICT(phone) DO UPDATE SET code_hash = ?2, expires_ms = ?3, attempts = 0",
                params![phone, &code_hash(phone, &code)[..], expires as i64],
            )
            .map_err(sql_err)?;
        Ok(code)
    }

    /// Checks a registration code. On success the phone's account gets a new primary device;
    /// if the account existed, all its earlier devices are revoked (the number moved phones).
    ///
    /// A refusal is the inner `Err`: it is committed, so a wrong guess is counted.
    pub fn verify_code(
        &mut self,
        phone: &str,
        code: &str,
        device_name: &str,
        network: &str,
        now: u64,
    ) -> Result<Result<Registered, ProtocolError>, ProtocolError> {
        if let Err(e) = check_name(device_name) {
            return Ok(Err(e));
        }
        if let Some(refusal) = self.guess_budget_spent(phone, network, now)? {
            return Ok(Err(refusal));
        }
        let row: Option<(Vec<u8>, i64, i64)> = self
            .db()
            .query_row(
                "SELECT code_hash, expires_ms, attempts FROM codes WHERE phone = ?1",
                [phone],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(sql_err)?;
        let Some((hash, expires, attempts)) = row else {
            return Ok(Err(unauthorized(
                "no registration code was requested for this number",
            )));
        };
        if (expires as u64) < now || attempts >= MAX_CODE_ATTEMPTS {
            return Ok(Err(unauthorized(
                "the registration code expired or had too many wrong guesses; request a new one",
            )));
        }
        if !ct_eq(&hash, &code_hash(phone, code.trim())) {
            self.db()
                .execute(
                    "UPDATE codes SET attempts = attempts + 1 WHERE phone = ?1",
                    [phone],
                )
                .map_err(sql_err)?;
            self.count_wrong_guess(phone, network, now)?;
            return Ok(Err(unauthorized("wrong registration code")));
        }
        self.db()
            .execute("DELETE FROM codes WHERE phone = ?1", [phone])
            .map_err(sql_err)?;
        let existing: Option<i64> = self
            .db()
            .query_row("SELECT id FROM users WHERE phone = ?1", [phone], |r| {
                r.get(0)
            })
            .optional()
            .map_err(sql_err)?;
        let user = match existing {
            Some(id) => {
                let user = UserId(id as u64);
                for device in self.devices_of(user)?.iter() {
                    self.revoke(user, *device, now)?;
                }
                // Whoever held the old phone must not link a device to the recovered account.
                self.db()
                    .execute("DELETE FROM link_codes WHERE user = ?1", [id])
                    .map_err(sql_err)?;
                user
            }
            None => {
                self.db()
                    .execute(
                        "INSERT INTO users(phone, created_ms) VALUES (?1, ?2)",
                        params![phone, now as i64],
                    )
                    .map_err(sql_err)?;
                UserId(self.db().last_insert_rowid() as u64)
            }
        };
        self.add_device(user, device_name, true, now).map(Ok)
    }

    /// A refusal if `phone` has had its day's wrong guesses, from `network` or from all
    /// networks together.
    fn guess_budget_spent(
        &mut self,
        phone: &str,
        network: &str,
        now: u64,
    ) -> Result<Option<ProtocolError>, ProtocolError> {
        let caps = [
            (network, self.cfg.max_wrong_codes_per_network_day),
            (ALL_NETWORKS, self.cfg.max_wrong_codes_per_phone_day),
        ];
        for (net, cap) in caps {
            let row: Option<(i64, i64)> = self
                .db()
                .query_row(
                    "SELECT since_ms, wrong FROM code_guesses WHERE phone = ?1 AND network = ?2",
                    params![phone, net],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(sql_err)?;
            if let Some((since, wrong)) = row {
                let until = since as u64 + GUESS_WINDOW_MS;
                if until > now && wrong as u64 >= u64::from(cap) {
                    let wait = until - now;
                    let whose = if net == ALL_NETWORKS {
                        "this number"
                    } else {
                        "this number from your network"
                    };
                    return Ok(Some(ProtocolError {
                        message: format!(
                            "too many wrong codes for {whose} today; retry in {} min",
                            wait.div_ceil(60_000)
                        ),
                        ..ProtocolError::rate_limited(wait)
                    }));
                }
            }
        }
        Ok(None)
    }

    /// Counts a wrong guess for `phone` from `network` and from all networks.
    fn count_wrong_guess(
        &mut self,
        phone: &str,
        network: &str,
        now: u64,
    ) -> Result<(), ProtocolError> {
        for net in [network, ALL_NETWORKS] {
            // A window that is over starts again with this guess.
            self.db()
                .execute(
                    "INSERT INTO code_guesses(phone, network, since_ms, wrong) VALUES (?1, ?2, ?3, 1)
                     ON CONFLICT(phone, network) DO UPDATE SET
                       wrong = CASE WHEN since_ms + ?4 <= ?3 THEN 1 ELSE wrong + 1 END,
                       since_ms = CASE WHEN since_ms + ?4 <= ?3 THEN ?3 ELSE since_ms END",
                    params![phone, net, now as i64, GUESS_WINDOW_MS as i64],
                )
                .map_err(sql_err)?;
        }
        Ok(())
    }

    fn add_device(
        &mut self,
        user: UserId,
        name: &str,
        primary: bool,
        now: u64,
    ) -> Result<Registered, ProtocolError> {
        let secret = URL_SAFE_NO_PAD.encode(random_bytes::<32>());
        self.db()
            .execute(
                "INSERT INTO devices(user, name, is_primary, token_hash, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![user.0 as i64, name, primary, &sha256(secret.as_bytes())[..], now as i64],
            )
            .map_err(sql_err)?;
        let device = DeviceId(self.db().last_insert_rowid() as u64);
        self.forget_devices(user);
        Ok(Registered {
            user,
            device,
            primary,
            token: format!("{}.{secret}", device.0),
        })
    }

    /// Resolves a bearer token to its device.
    pub fn authenticate(&mut self, token: &str) -> Result<AuthInfo, ProtocolError> {
        let bad = || unauthorized("invalid token");
        let (id, secret) = token.split_once('.').ok_or_else(bad)?;
        let device: i64 = id.parse().map_err(|_| bad())?;
        struct Row {
            user: i64,
            primary: bool,
            token_hash: Vec<u8>,
            revoked: bool,
            presence: i64,
            read_receipts: bool,
        }
        let row: Option<Row> = self
            .db()
            .prepare_cached(
                "SELECT d.user, d.is_primary, d.token_hash, d.revoked_ms IS NOT NULL, u.presence, u.read_receipts
                 FROM devices d JOIN users u ON u.id = d.user WHERE d.id = ?1",
            )
            .and_then(|mut s| {
                s.query_row([device], |r| {
                    Ok(Row {
                        user: r.get(0)?,
                        primary: r.get(1)?,
                        token_hash: r.get(2)?,
                        revoked: r.get(3)?,
                        presence: r.get(4)?,
                        read_receipts: r.get(5)?,
                    })
                })
                .optional()
            })
            .map_err(sql_err)?;
        let Some(Row {
            user,
            primary,
            token_hash: hash,
            revoked,
            presence,
            read_receipts,
        }) = row
        else {
            return Err(bad());
        };
        if !ct_eq(&hash, &sha256(secret.as_bytes())) {
            return Err(bad());
        }
        if revoked {
            return Err(ProtocolError::new(
                ErrorCode::DeviceRevoked,
                "this device was revoked",
            ));
        }
        let device = DeviceId(device as u64);
        Ok(AuthInfo {
            user: UserId(user as u64),
            device,
            primary,
            settings: UserSettings {
                presence: presence_from_db(presence),
                read_receipts,
            },
            last_qseq: self.last_qseq(device)?,
        })
    }

    /// A one-time code with which a new device joins `user`'s account (primary devices only).
    pub fn create_link_code(
        &mut self,
        auth: &AuthInfo,
        now: u64,
    ) -> Result<(String, u64), ProtocolError> {
        if !auth.primary {
            return Err(ProtocolError::forbidden(
                "only the primary device can link new devices",
            ));
        }
        self.check_linked_room(auth.user)?;
        // 12 characters of an unambiguous alphabet: about 60 bits.
        const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
        let code: String = random_bytes::<12>()
            .iter()
            .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
            .collect();
        let expires = now + u64::from(self.cfg.code_ttl_s) * 1000;
        self.db()
            .execute(
                "INSERT INTO link_codes(code_hash, user, expires_ms) VALUES (?1, ?2, ?3)",
                params![
                    &sha256(code.as_bytes())[..],
                    auth.user.0 as i64,
                    expires as i64
                ],
            )
            .map_err(sql_err)?;
        Ok((code, expires))
    }

    fn check_linked_room(&mut self, user: UserId) -> Result<(), ProtocolError> {
        let linked: i64 = self
            .db()
            .query_row(
                "SELECT COUNT(*) FROM devices WHERE user = ?1 AND revoked_ms IS NULL AND is_primary = 0",
                [user.0 as i64],
                |r| r.get(0),
            )
            .map_err(sql_err)?;
        if linked as usize >= MAX_LINKED_DEVICES {
            return Err(ProtocolError::new(
                ErrorCode::LimitExceeded,
                format!("at most {MAX_LINKED_DEVICES} linked devices; revoke one first"),
            ));
        }
        Ok(())
    }

    /// Redeems a link code for a new linked device.
    pub fn complete_link(
        &mut self,
        code: &str,
        name: &str,
        now: u64,
    ) -> Result<Registered, ProtocolError> {
        check_name(name)?;
        let hash = sha256(code.trim().to_ascii_uppercase().as_bytes());
        let row: Option<(i64, i64)> = self
            .db()
            .query_row(
                "SELECT user, expires_ms FROM link_codes WHERE code_hash = ?1",
                [&hash[..]],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql_err)?;
        let Some((user, expires)) = row else {
            return Err(unauthorized("unknown link code"));
        };
        if (expires as u64) < now {
            return Err(unauthorized("the link code expired"));
        }
        let user = UserId(user as u64);
        self.check_linked_room(user)?;
        self.db()
            .execute("DELETE FROM link_codes WHERE code_hash = ?1", [&hash[..]])
            .map_err(sql_err)?;
        self.add_device(user, name, false, now)
    }

    pub fn list_devices(&mut self, user: UserId) -> Result<Vec<DeviceInfo>, ProtocolError> {
        let mut st = self
            .db()
            .prepare_cached(
                "SELECT id, name, is_primary, created_ms FROM devices
                 WHERE user = ?1 AND revoked_ms IS NULL ORDER BY id",
            )
            .map_err(sql_err)?;
        let rows = st
            .query_map([user.0 as i64], |r| {
                Ok(DeviceInfo {
                    device: DeviceId(r.get::<_, i64>(0)? as u64),
                    name: r.get(1)?,
                    primary: r.get(2)?,
                    created_ms: r.get::<_, i64>(3)? as u64,
                })
            })
            .and_then(|rows| rows.collect())
            .map_err(sql_err)?;
        Ok(rows)
    }

    /// Revokes `target` on behalf of `auth`: the primary may revoke its linked devices, a
    /// linked device may revoke itself. The primary is replaced only by registering again.
    pub fn revoke_device(
        &mut self,
        auth: &AuthInfo,
        target: DeviceId,
        now: u64,
    ) -> Result<(), ProtocolError> {
        let devices = self.devices_of(auth.user)?;
        if !devices.contains(&target) {
            return Err(ProtocolError::not_found(format!(
                "you have no active device {target}"
            )));
        }
        if target == auth.device && auth.primary {
            return Err(ProtocolError::forbidden(
                "the primary device cannot revoke itself; register the number again instead",
            ));
        }
        if target != auth.device && !auth.primary {
            return Err(ProtocolError::forbidden(
                "only the primary device can revoke other devices",
            ));
        }
        self.revoke(auth.user, target, now)
    }

    /// Marks a device revoked, drops its queue and keys, and disconnects it after commit.
    fn revoke(&mut self, user: UserId, device: DeviceId, now: u64) -> Result<(), ProtocolError> {
        self.db()
            .execute(
                "UPDATE devices SET revoked_ms = ?2, identity_key = NULL, signed_prekey = NULL,
                 signed_prekey_sig = NULL, last_resort_key = NULL WHERE id = ?1",
                params![device.0 as i64, now as i64],
            )
            .map_err(sql_err)?;
        self.db()
            .execute(
                "DELETE FROM one_time_prekeys WHERE device = ?1",
                [device.0 as i64],
            )
            .map_err(sql_err)?;
        self.drop_queue(device)?;
        self.forget_devices(user);
        self.pending.kicks.push(device);
        Ok(())
    }

    /// Finds users by phone number; numbers without an account are left out.
    pub fn lookup(&mut self, phones: &[String]) -> Result<Vec<UserMatch>, ProtocolError> {
        let mut out = Vec::new();
        let mut st = self
            .db()
            .prepare_cached("SELECT id FROM users WHERE phone = ?1")
            .map_err(sql_err)?;
        for raw in phones {
            let Ok(phone) = normalize_phone(raw) else {
                continue;
            };
            if let Some(id) = st
                .query_row([&phone], |r| r.get::<_, i64>(0))
                .optional()
                .map_err(sql_err)?
            {
                out.push(UserMatch {
                    phone,
                    user: UserId(id as u64),
                });
            }
        }
        Ok(out)
    }

    /// Reads, and optionally changes, a user's settings.
    pub fn settings(
        &mut self,
        user: UserId,
        presence: Option<PresenceVisibility>,
        read_receipts: Option<bool>,
    ) -> Result<UserSettings, ProtocolError> {
        if let Some(p) = presence {
            self.db()
                .execute(
                    "UPDATE users SET presence = ?2 WHERE id = ?1",
                    params![user.0 as i64, presence_to_db(p)],
                )
                .map_err(sql_err)?;
        }
        if let Some(r) = read_receipts {
            self.db()
                .execute(
                    "UPDATE users SET read_receipts = ?2 WHERE id = ?1",
                    params![user.0 as i64, r],
                )
                .map_err(sql_err)?;
        }
        self.db()
            .query_row(
                "SELECT presence, read_receipts FROM users WHERE id = ?1",
                [user.0 as i64],
                |r| {
                    Ok(UserSettings {
                        presence: presence_from_db(r.get(0)?),
                        read_receipts: r.get(1)?,
                    })
                },
            )
            .map_err(sql_err)
    }

    /// A user's visibility setting and last-seen time; `None` if there is no such user.
    pub fn presence_of(
        &mut self,
        user: UserId,
    ) -> Result<Option<(PresenceVisibility, Option<u64>)>, ProtocolError> {
        self.db()
            .prepare_cached("SELECT presence, last_seen_ms FROM users WHERE id = ?1")
            .and_then(|mut s| {
                s.query_row([user.0 as i64], |r| {
                    Ok((
                        presence_from_db(r.get(0)?),
                        r.get::<_, Option<i64>>(1)?.map(|v| v as u64),
                    ))
                })
                .optional()
            })
            .map_err(sql_err)
    }

    pub fn set_last_seen(&mut self, user: UserId, ms: u64) -> Result<(), ProtocolError> {
        self.db()
            .prepare_cached("UPDATE users SET last_seen_ms = ?2 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![user.0 as i64, ms as i64]))
            .map_err(sql_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_are_normalized_to_e164() {
        assert_eq!(
            normalize_phone("+1 (555) 123-4567").unwrap(),
            "+15551234567"
        );
        assert_eq!(normalize_phone("+4915112345678").unwrap(), "+4915112345678");
        for bad in [
            "5551234567",
            "+0123456789",
            "+12",
            "+1555abc4567",
            "",
            "+1234567890123456",
        ] {
            assert!(normalize_phone(bad).is_err(), "{bad}");
        }
    }
}
