//! The prekey directory. Keys are opaque bytes: the server stores and hands them out, and
//! clients verify signatures themselves.

use natter_signaling::{
    DeviceBundle, DeviceId, ErrorCode, OpaqueBytes, Prekey, ProtocolError, SignedPrekey, UserId,
    limits::MAX_ONE_TIME_PREKEYS,
};
use rusqlite::{OptionalExtension, params};

use super::{Core, sql_err};

/// What a device holds in the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyCount {
    pub one_time: u32,
    pub last_resort: bool,
    pub signed_prekey: bool,
    pub identity_key: bool,
}

impl Core {
    /// Stores keys for `device`. One-time keys are added to those already held; their ids
    /// must be new and the total stays within [`MAX_ONE_TIME_PREKEYS`].
    pub fn upload_keys(
        &mut self,
        device: DeviceId,
        identity_key: Option<&OpaqueBytes>,
        signed_prekey: Option<&SignedPrekey>,
        one_time: &[Prekey],
        last_resort: Option<&Prekey>,
    ) -> Result<KeyCount, ProtocolError> {
        let d = device.0 as i64;
        let held = self.key_count(device)?;
        if held.one_time as usize + one_time.len() > MAX_ONE_TIME_PREKEYS {
            return Err(ProtocolError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "this device holds {} one-time prekeys; {} more would pass the limit of {MAX_ONE_TIME_PREKEYS}",
                    held.one_time,
                    one_time.len()
                ),
            ));
        }
        {
            let mut exists = self
                .db()
                .prepare_cached("SELECT 1 FROM one_time_prekeys WHERE device = ?1 AND key_id = ?2")
                .map_err(sql_err)?;
            for k in one_time {
                if exists
                    .exists(params![d, k.key_id as i64])
                    .map_err(sql_err)?
                {
                    return Err(ProtocolError::invalid(format!(
                        "one-time prekey id {} is already stored",
                        k.key_id
                    )));
                }
            }
        }
        if let Some(k) = identity_key {
            self.db()
                .execute(
                    "UPDATE devices SET identity_key = ?2 WHERE id = ?1",
                    params![d, &k.0],
                )
                .map_err(sql_err)?;
        }
        if let Some(s) = signed_prekey {
            self.db()
                .execute(
                    "UPDATE devices SET signed_prekey_id = ?2, signed_prekey = ?3, signed_prekey_sig = ?4 WHERE id = ?1",
                    params![d, s.key_id as i64, &s.key.0, &s.signature.0],
                )
                .map_err(sql_err)?;
        }
        if let Some(k) = last_resort {
            self.db()
                .execute(
                    "UPDATE devices SET last_resort_id = ?2, last_resort_key = ?3 WHERE id = ?1",
                    params![d, k.key_id as i64, &k.key.0],
                )
                .map_err(sql_err)?;
        }
        {
            let mut insert = self
                .db()
                .prepare_cached(
                    "INSERT INTO one_time_prekeys(device, key_id, key) VALUES (?1, ?2, ?3)",
                )
                .map_err(sql_err)?;
            for k in one_time {
                insert
                    .execute(params![d, k.key_id as i64, &k.key.0])
                    .map_err(sql_err)?;
            }
        }
        self.key_count(device)
    }

    pub fn key_count(&mut self, device: DeviceId) -> Result<KeyCount, ProtocolError> {
        let one_time: i64 = self
            .db()
            .prepare_cached("SELECT COUNT(*) FROM one_time_prekeys WHERE device = ?1")
            .and_then(|mut s| s.query_row([device.0 as i64], |r| r.get(0)))
            .map_err(sql_err)?;
        let (identity_key, signed_prekey, last_resort) = self
            .db()
            .prepare_cached(
                "SELECT identity_key IS NOT NULL, signed_prekey IS NOT NULL, last_resort_key IS NOT NULL
                 FROM devices WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.query_row([device.0 as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            })
            .map_err(sql_err)?;
        Ok(KeyCount {
            one_time: one_time as u32,
            last_resort,
            signed_prekey,
            identity_key,
        })
    }

    /// One bundle per active device of `user`. Each claim consumes one one-time prekey of each
    /// device (the lowest id); when none is left, the last-resort key is handed out instead.
    /// Runs on the single storage thread, so no key is ever given to two claimants.
    pub fn claim_keys(&mut self, user: UserId) -> Result<Vec<DeviceBundle>, ProtocolError> {
        if !self.user_exists(user)? {
            return Err(ProtocolError::not_found(format!("no user {user}")));
        }
        let devices = self.devices_of(user)?;
        let mut bundles = Vec::with_capacity(devices.len());
        for &device in devices.iter() {
            let d = device.0 as i64;
            #[allow(clippy::type_complexity)]
            let (identity, sp_id, sp, sp_sig, lr_id, lr): (
                Option<Vec<u8>>,
                Option<i64>,
                Option<Vec<u8>>,
                Option<Vec<u8>>,
                Option<i64>,
                Option<Vec<u8>>,
            ) = self
                .db()
                .prepare_cached(
                    "SELECT identity_key, signed_prekey_id, signed_prekey, signed_prekey_sig, last_resort_id, last_resort_key
                     FROM devices WHERE id = ?1",
                )
                .and_then(|mut s| {
                    s.query_row([d], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
                    })
                })
                .map_err(sql_err)?;
            let one_time: Option<(i64, Vec<u8>)> = self
                .db()
                .prepare_cached(
                    "DELETE FROM one_time_prekeys WHERE device = ?1 AND key_id =
                       (SELECT key_id FROM one_time_prekeys WHERE device = ?1 ORDER BY key_id LIMIT 1)
                     RETURNING key_id, key",
                )
                .and_then(|mut s| s.query_row([d], |r| Ok((r.get(0)?, r.get(1)?))).optional())
                .map_err(sql_err)?;
            let signed_prekey = match (sp_id, sp, sp_sig) {
                (Some(id), Some(key), Some(sig)) => Some(SignedPrekey {
                    key_id: id as u32,
                    key: OpaqueBytes(key),
                    signature: OpaqueBytes(sig),
                }),
                _ => None,
            };
            let one_time = one_time.map(|(id, key)| Prekey {
                key_id: id as u32,
                key: OpaqueBytes(key),
            });
            let last_resort = match (&one_time, lr_id, lr) {
                (None, Some(id), Some(key)) => Some(Prekey {
                    key_id: id as u32,
                    key: OpaqueBytes(key),
                }),
                _ => None,
            };
            bundles.push(DeviceBundle {
                device,
                identity_key: identity.map(OpaqueBytes),
                signed_prekey,
                one_time,
                last_resort,
            });
        }
        Ok(bundles)
    }
}
