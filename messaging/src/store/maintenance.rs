//! Expiry (queue TTL, codes, uploads, blobs), duplicate-table rotation, and the records
//! behind blob uploads.

use rusqlite::{OptionalExtension, params};

use natter_signaling::{DeviceId, ErrorCode, ProtocolError, UserId};

use super::{Core, sql_err};

/// Queue rows one sweep looks at. The sweep walks the queue in rowid order from where the
/// last one stopped, so each sweep is short and every row is visited in turn.
const SWEEP_CHUNK: i64 = 20_000;

/// What one sweep removed; the caller deletes the files named here.
#[derive(Debug, Default, Clone)]
pub struct SweepReport {
    pub expired_items: usize,
    pub expired_payloads: usize,
    pub expired_uploads: Vec<String>,
    pub expired_blobs: Vec<String>,
    pub dedup_rotated: bool,
}

/// An upload in progress can be resumed for this long; after it, it is dropped (and stops
/// counting against its user's quota and open uploads).
pub const UPLOAD_TTL_MS: u64 = 24 * 3_600_000;

/// A user's blob storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageUsage {
    pub open_uploads: u64,
    pub bytes: u64,
}

/// An upload in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadRecord {
    pub device: DeviceId,
    pub length: u64,
}

impl Core {
    /// Removes everything whose time is up.
    pub fn sweep(&mut self, now: u64) -> Result<SweepReport, ProtocolError> {
        let mut report = SweepReport::default();
        let from = self.sweep_cursor;
        let rows: Vec<(i64, i64, Option<i64>)> = self
            .db()
            .prepare_cached(
                "SELECT id, expires_ms, payload FROM queue WHERE id > ?1 ORDER BY id LIMIT ?2",
            )
            .and_then(|mut s| {
                s.query_map(params![from, SWEEP_CHUNK], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect()
            })
            .map_err(sql_err)?;
        self.sweep_cursor = match rows.last() {
            Some(&(id, _, _)) if rows.len() as i64 == SWEEP_CHUNK => id,
            _ => 0,
        };
        let mut payloads = Vec::new();
        {
            let mut delete = self
                .db()
                .prepare_cached("DELETE FROM queue WHERE id = ?1")
                .map_err(sql_err)?;
            for (id, expires, payload) in rows {
                if expires as u64 <= now {
                    delete.execute([id]).map_err(sql_err)?;
                    report.expired_items += 1;
                    payloads.push(payload);
                }
            }
        }
        self.pending.queue_delta -= report.expired_items as i64;
        let payloads: Vec<i64> = payloads.into_iter().flatten().collect();
        self.release_payloads(&payloads)?;
        report.expired_payloads = self
            .db()
            .execute("DELETE FROM payloads WHERE expires_ms <= ?1", [now as i64])
            .map_err(sql_err)?;
        for table in ["codes", "link_codes"] {
            self.db()
                .execute(
                    &format!("DELETE FROM {table} WHERE expires_ms <= ?1"),
                    [now as i64],
                )
                .map_err(sql_err)?;
        }
        report.expired_uploads = self
            .db()
            .prepare_cached("DELETE FROM uploads WHERE expires_ms <= ?1 RETURNING id")
            .and_then(|mut s| s.query_map([now as i64], |r| r.get(0))?.collect())
            .map_err(sql_err)?;
        self.db()
            .execute(
                "DELETE FROM blob_charges WHERE expires_ms <= ?1",
                [now as i64],
            )
            .map_err(sql_err)?;
        self.db()
            .execute(
                "DELETE FROM code_guesses WHERE since_ms <= ?1",
                [now.saturating_sub(super::accounts::GUESS_WINDOW_MS) as i64],
            )
            .map_err(sql_err)?;
        report.expired_blobs = self
            .db()
            .prepare_cached("DELETE FROM blobs WHERE expires_ms <= ?1 RETURNING hash")
            .and_then(|mut s| s.query_map([now as i64], |r| r.get(0))?.collect())
            .map_err(sql_err)?;
        report.dedup_rotated = self.rotate_dedup(now)?;
        Ok(report)
    }

    /// Client ids are written to the current table; once it is `dedup_hours` old, the other
    /// table is emptied and becomes current. So an id is remembered for at least that long.
    fn rotate_dedup(&mut self, now: u64) -> Result<bool, ProtocolError> {
        let period = u64::from(self.cfg.dedup_hours) * 3_600_000;
        if now < self.dedup_since_ms + period {
            return Ok(false);
        }
        let next = 1 - self.dedup_current;
        self.db()
            .execute_batch(&format!(
                "DELETE FROM dedup_{next};
                 UPDATE meta SET value = {next} WHERE key = 'dedup_current';
                 UPDATE meta SET value = {now} WHERE key = 'dedup_since_ms';"
            ))
            .map_err(sql_err)?;
        // In-memory state follows only once this job cannot fail any more.
        self.dedup_current = next;
        self.dedup_since_ms = now;
        Ok(true)
    }

    pub fn create_upload(
        &mut self,
        id: &str,
        device: DeviceId,
        length: u64,
        now: u64,
    ) -> Result<(), ProtocolError> {
        let user: i64 = self
            .db()
            .query_row(
                "SELECT user FROM devices WHERE id = ?1",
                [device.0 as i64],
                |r| r.get(0),
            )
            .map_err(sql_err)?;
        let usage = self.storage_usage(UserId(user as u64), now)?;
        let cfg = &self.cfg;
        if usage.open_uploads >= u64::from(cfg.max_open_uploads) {
            return Err(ProtocolError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "{} uploads are in progress, the most allowed; finish one first",
                    usage.open_uploads
                ),
            ));
        }
        if usage.bytes + length > cfg.max_stored_bytes_per_user {
            return Err(ProtocolError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "storage quota: {} of {} bytes in use, {length} more do not fit; stored \
                     files count until they expire",
                    usage.bytes, cfg.max_stored_bytes_per_user
                ),
            ));
        }
        let expires = now + UPLOAD_TTL_MS.min(self.cfg.queue_ttl().as_millis() as u64);
        self.db()
            .execute(
                "INSERT INTO uploads(id, device, length, created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, device.0 as i64, length as i64, now as i64, expires as i64],
            )
            .map_err(sql_err)?;
        Ok(())
    }

    pub fn upload(&mut self, id: &str) -> Result<Option<UploadRecord>, ProtocolError> {
        self.db()
            .query_row(
                "SELECT device, length FROM uploads WHERE id = ?1",
                [id],
                |r| {
                    Ok(UploadRecord {
                        device: DeviceId(r.get::<_, i64>(0)? as u64),
                        length: r.get::<_, i64>(1)? as u64,
                    })
                },
            )
            .optional()
            .map_err(sql_err)
    }

    /// What `user` has stored: unexpired blobs they uploaded plus the declared length of
    /// their uploads in progress.
    pub fn storage_usage(&mut self, user: UserId, now: u64) -> Result<StorageUsage, ProtocolError> {
        let (open_uploads, open_bytes): (i64, i64) = self
            .db()
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(u.length), 0) FROM uploads u
                 JOIN devices d ON d.id = u.device
                 WHERE d.user = ?1 AND u.expires_ms > ?2",
                params![user.0 as i64, now as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(sql_err)?;
        let stored: i64 = self
            .db()
            .query_row(
                "SELECT COALESCE(SUM(size), 0) FROM blob_charges WHERE user = ?1 AND expires_ms > ?2",
                params![user.0 as i64, now as i64],
                |r| r.get(0),
            )
            .map_err(sql_err)?;
        Ok(StorageUsage {
            open_uploads: open_uploads as u64,
            bytes: (open_bytes + stored) as u64,
        })
    }

    /// Records a finished upload as blob `hash`; an existing blob of that hash gets a fresh
    /// TTL. The uploader is charged its size until it expires.
    pub fn finish_upload(
        &mut self,
        id: &str,
        hash: &str,
        size: u64,
        now: u64,
    ) -> Result<(), ProtocolError> {
        let expires = now + self.cfg.queue_ttl().as_millis() as u64;
        self.db()
            .execute(
                "INSERT INTO blob_charges(user, hash, size, expires_ms)
                 SELECT d.user, ?2, ?3, ?4 FROM uploads u JOIN devices d ON d.id = u.device
                 WHERE u.id = ?1
                 ON CONFLICT(user, hash) DO UPDATE SET expires_ms = ?4",
                params![id, hash, size as i64, expires as i64],
            )
            .map_err(sql_err)?;
        self.db()
            .execute("DELETE FROM uploads WHERE id = ?1", [id])
            .map_err(sql_err)?;
        self.db()
            .execute(
                "INSERT INTO blobs(hash, size, created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(hash) DO UPDATE SET expires_ms = ?4",
                params![hash, size as i64, now as i64, expires as i64],
            )
            .map_err(sql_err)?;
        Ok(())
    }

    /// The size of an unexpired blob.
    pub fn blob_size(&mut self, hash: &str, now: u64) -> Result<Option<u64>, ProtocolError> {
        self.db()
            .query_row(
                "SELECT size FROM blobs WHERE hash = ?1 AND expires_ms > ?2",
                params![hash, now as i64],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|o| o.map(|v| v as u64))
            .map_err(sql_err)
    }
}
