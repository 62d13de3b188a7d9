//! Messages, receipts and the per-device queues.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use natter_signaling::{
    Conv, DeviceId, Envelope, ErrorCode, GroupId, OpaqueBytes, ProtocolError, QueueItem,
    ReceiptStatus, UserId,
};
use rusqlite::{OptionalExtension, params};

use super::{ConvKey, Core, ItemKind, ItemMeta, encode_item, sql_err};

/// The outcome of a `send` / `send_group`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub seq: u64,
    pub ts_ms: u64,
    pub duplicate: bool,
}

/// Items read from a device's queue, in order.
pub type Fetched = Vec<(u64, Arc<QueueItem>)>;

/// A queue row removed by an ack, as far as receipts care.
struct Removed {
    kind: i64,
    from_user: Option<i64>,
    group: Option<i64>,
    conv_seq: Option<i64>,
    payload: Option<i64>,
    created_ms: i64,
}

impl Core {
    fn dedup_get(
        &mut self,
        device: DeviceId,
        client_id: &str,
    ) -> Result<Option<Sent>, ProtocolError> {
        self.db()
            .prepare_cached(
                "SELECT seq, ts_ms FROM dedup_0 WHERE device = ?1 AND client_id = ?2
                 UNION ALL
                 SELECT seq, ts_ms FROM dedup_1 WHERE device = ?1 AND client_id = ?2
                 LIMIT 1",
            )
            .and_then(|mut s| {
                s.query_row(params![device.0 as i64, client_id], |r| {
                    Ok(Sent {
                        seq: r.get::<_, i64>(0)? as u64,
                        ts_ms: r.get::<_, i64>(1)? as u64,
                        duplicate: true,
                    })
                })
                .optional()
            })
            .map_err(sql_err)
    }

    fn dedup_put(
        &mut self,
        device: DeviceId,
        client_id: &str,
        sent: Sent,
    ) -> Result<(), ProtocolError> {
        let table = if self.dedup_current == 0 {
            "dedup_0"
        } else {
            "dedup_1"
        };
        self.db()
            .prepare_cached(&format!(
                "INSERT INTO {table}(device, client_id, seq, ts_ms) VALUES (?1, ?2, ?3, ?4)"
            ))
            .and_then(|mut s| {
                s.execute(params![
                    device.0 as i64,
                    client_id,
                    sent.seq as i64,
                    sent.ts_ms as i64
                ])
            })
            .map_err(sql_err)?;
        Ok(())
    }

    /// Stores a 1:1 message: one envelope per device of `to` and per other device of the
    /// sender, exactly. A repeated client id returns the first outcome and stores nothing.
    pub fn send_direct(
        &mut self,
        from: UserId,
        from_device: DeviceId,
        client_id: &str,
        to: UserId,
        envelopes: Vec<Envelope>,
        now: u64,
    ) -> Result<Sent, ProtocolError> {
        if let Some(sent) = self.dedup_get(from_device, client_id)? {
            return Ok(sent);
        }
        let recipients = self.devices_of(to)?;
        // Every user has a device; only an empty list needs the (uncached) check.
        if recipients.is_empty() && !self.user_exists(to)? {
            return Err(ProtocolError::not_found(format!("no user {to}")));
        }
        let own = self.devices_of(from)?;
        let mut expected: Vec<DeviceId> = recipients
            .iter()
            .chain(own.iter())
            .copied()
            .filter(|d| *d != from_device)
            .collect();
        expected.sort_unstable();
        expected.dedup();
        let given: Vec<DeviceId> = envelopes.iter().map(|e| e.device).collect();
        let missing: Vec<DeviceId> = expected
            .iter()
            .copied()
            .filter(|d| !given.contains(d))
            .collect();
        let extra: Vec<DeviceId> = given
            .iter()
            .copied()
            .filter(|d| !expected.contains(d))
            .collect();
        if !missing.is_empty() || !extra.is_empty() {
            return Err(ProtocolError {
                missing,
                extra,
                ..ProtocolError::new(
                    ErrorCode::DeviceMismatch,
                    "the envelopes do not match the current device lists; fetch keys for the missing devices and drop the extra ones",
                )
            });
        }
        let seq = self.take_conv_seq(ConvKey::direct(from, to))?;
        for env in envelopes {
            // Each device sees the conversation named after the other party.
            let conv = if recipients.contains(&env.device) && to != from {
                Conv::Direct(from)
            } else {
                Conv::Direct(to)
            };
            let item = QueueItem::Message {
                conv,
                seq,
                from,
                device: from_device,
                ts_ms: now,
                body: env.body,
            };
            let stored = encode_item(&item);
            let meta = ItemMeta {
                kind: ItemKind::Message,
                from_user: Some(from),
                group: None,
                conv_seq: Some(seq),
                payload: None,
            };
            self.enqueue(env.device, Arc::new(item), &stored, meta, now)?;
        }
        let sent = Sent {
            seq,
            ts_ms: now,
            duplicate: false,
        };
        self.dedup_put(from_device, client_id, sent)?;
        Ok(sent)
    }

    /// Stores a group message once and queues a reference to it for every member device
    /// except the sender's.
    pub fn send_group(
        &mut self,
        from: UserId,
        from_device: DeviceId,
        client_id: &str,
        group: GroupId,
        body: OpaqueBytes,
        now: u64,
    ) -> Result<Sent, ProtocolError> {
        if let Some(sent) = self.dedup_get(from_device, client_id)? {
            return Ok(sent);
        }
        let members = self.require_member(group, from)?;
        let mut targets = Vec::new();
        for m in members.iter() {
            targets.extend(
                self.devices_of(m.user)?
                    .iter()
                    .copied()
                    .filter(|d| *d != from_device),
            );
        }
        let seq = self.take_conv_seq(ConvKey::Group(group))?;
        let stored = encode_item(&QueueItem::Message {
            conv: Conv::Group(group),
            seq,
            from,
            device: from_device,
            ts_ms: now,
            body: OpaqueBytes::default(),
        });
        let payload = if targets.is_empty() {
            None
        } else {
            let expires = now + self.cfg.queue_ttl().as_millis() as u64;
            self.db()
                .prepare_cached("INSERT INTO payloads(body, refs, expires_ms) VALUES (?1, ?2, ?3)")
                .and_then(|mut s| s.execute(params![&body.0, targets.len() as i64, expires as i64]))
                .map_err(sql_err)?;
            Some(self.db().last_insert_rowid())
        };
        let item = Arc::new(QueueItem::Message {
            conv: Conv::Group(group),
            seq,
            from,
            device: from_device,
            ts_ms: now,
            body,
        });
        let meta = ItemMeta {
            kind: ItemKind::Message,
            from_user: Some(from),
            group: Some(group),
            conv_seq: Some(seq),
            payload,
        };
        for device in targets {
            self.enqueue(device, item.clone(), &stored, meta, now)?;
        }
        let sent = Sent {
            seq,
            ts_ms: now,
            duplicate: false,
        };
        self.dedup_put(from_device, client_id, sent)?;
        Ok(sent)
    }

    /// Deletes acknowledged items of `device` and sends delivered receipts for the messages
    /// among them to their authors' devices.
    pub fn ack(
        &mut self,
        user: UserId,
        device: DeviceId,
        qseqs: &[u64],
        now: u64,
    ) -> Result<(), ProtocolError> {
        let mut removed = Vec::with_capacity(qseqs.len());
        {
            let mut st = self
                .db()
                .prepare_cached(
                    "DELETE FROM queue WHERE device = ?1 AND qseq = ?2
                     RETURNING kind, from_user, grp, conv_seq, payload, created_ms",
                )
                .map_err(sql_err)?;
            for &q in qseqs {
                if let Some(r) = st
                    .query_row(params![device.0 as i64, q as i64], removed_row)
                    .optional()
                    .map_err(sql_err)?
                {
                    removed.push(r);
                }
            }
        }
        self.after_removal(user, device, removed, now)
    }

    /// Treats everything up to `cursor` as acknowledged (the device says it stored it).
    pub fn ack_through(
        &mut self,
        user: UserId,
        device: DeviceId,
        cursor: u64,
        now: u64,
    ) -> Result<(), ProtocolError> {
        let removed: Vec<Removed> = self
            .db()
            .prepare_cached(
                "DELETE FROM queue WHERE device = ?1 AND qseq <= ?2
                 RETURNING kind, from_user, grp, conv_seq, payload, created_ms",
            )
            .and_then(|mut s| {
                s.query_map(params![device.0 as i64, cursor as i64], removed_row)?
                    .collect()
            })
            .map_err(sql_err)?;
        self.after_removal(user, device, removed, now)
    }

    fn after_removal(
        &mut self,
        user: UserId,
        device: DeviceId,
        removed: Vec<Removed>,
        now: u64,
    ) -> Result<(), ProtocolError> {
        self.pending.queue_delta -= removed.len() as i64;
        let mut payloads = Vec::new();
        // (author, conversation as the author sees it) -> seqs, in order.
        let mut receipts: BTreeMap<(u64, u8, u64), Vec<u64>> = BTreeMap::new();
        for r in removed {
            if let Some(p) = r.payload {
                payloads.push(p);
            }
            if r.kind != ItemKind::Message as i64 {
                continue;
            }
            self.pending
                .latencies_ms
                .push(now.saturating_sub(r.created_ms as u64));
            let (Some(author), Some(seq)) = (r.from_user, r.conv_seq) else {
                continue;
            };
            if author as u64 == user.0 {
                continue; // a copy of our own message on another of our devices
            }
            let key = match r.group {
                Some(g) => (author as u64, 1, g as u64),
                None => (author as u64, 0, user.0),
            };
            receipts.entry(key).or_default().push(seq as u64);
        }
        self.release_payloads(&payloads)?;
        for ((author, kind, id), mut seqs) in receipts {
            seqs.sort_unstable();
            seqs.dedup();
            let conv = if kind == 1 {
                Conv::Group(GroupId(id))
            } else {
                Conv::Direct(UserId(id))
            };
            let item = QueueItem::Receipt {
                conv,
                status: ReceiptStatus::Delivered,
                by: user,
                device,
                seqs,
                ts_ms: now,
            };
            self.enqueue_to_user(UserId(author), None, item, now)?;
        }
        Ok(())
    }

    /// Queues `item` for every active device of `user` except `except`.
    pub(crate) fn enqueue_to_user(
        &mut self,
        user: UserId,
        except: Option<DeviceId>,
        item: QueueItem,
        now: u64,
    ) -> Result<(), ProtocolError> {
        let kind = match item {
            QueueItem::Message { .. } => ItemKind::Message,
            QueueItem::Receipt { .. } => ItemKind::Receipt,
            QueueItem::GroupNotice { .. } => ItemKind::GroupNotice,
            QueueItem::MissedCall { .. } => ItemKind::MissedCall,
        };
        let stored = encode_item(&item);
        let item = Arc::new(item);
        let meta = ItemMeta {
            kind,
            ..ItemMeta::default()
        };
        for d in self.devices_of(user)?.iter().copied() {
            if Some(d) != except {
                self.enqueue(d, item.clone(), &stored, meta, now)?;
            }
        }
        Ok(())
    }

    /// Read receipts from `reader` for messages `seqs` of `conv` authored by `to`. They go to
    /// the author's devices and to the reader's other devices (so those mark them read too).
    /// Returns false, storing nothing, when the reader switched read receipts off.
    #[allow(clippy::too_many_arguments)]
    pub fn read(
        &mut self,
        reader: UserId,
        device: DeviceId,
        conv: Conv,
        to: UserId,
        seqs: Vec<u64>,
        now: u64,
    ) -> Result<bool, ProtocolError> {
        match conv {
            Conv::Direct(peer) => {
                if peer != to {
                    return Err(ProtocolError::invalid(
                        "in a direct conversation, `to` must be the other user",
                    ));
                }
                if !self.user_exists(to)? {
                    return Err(ProtocolError::not_found(format!("no user {to}")));
                }
            }
            Conv::Group(g) => {
                let members = self.require_member(g, reader)?;
                if !members.iter().any(|m| m.user == to) {
                    return Err(ProtocolError::not_found(format!(
                        "{to} is not a member of {g}"
                    )));
                }
            }
        }
        // Receipts only for messages that exist: otherwise a stranger could park a receipt
        // in anyone's queue for its whole lifetime.
        let key = match conv {
            Conv::Direct(_) => ConvKey::direct(reader, to),
            Conv::Group(g) => ConvKey::Group(g),
        };
        let next = self.conv_next_seq(key)?.unwrap_or(1);
        if let Some(&s) = seqs.iter().find(|&&s| s == 0 || s >= next) {
            return Err(ProtocolError::new(
                ErrorCode::Forbidden,
                format!("there is no message {s} in this conversation"),
            ));
        }
        if !self.settings(reader, None, None)?.read_receipts {
            return Ok(false);
        }
        let (author_view, reader_view) = match conv {
            Conv::Direct(_) => (Conv::Direct(reader), Conv::Direct(to)),
            g @ Conv::Group(_) => (g, g),
        };
        let receipt = |conv| QueueItem::Receipt {
            conv,
            status: ReceiptStatus::Read,
            by: reader,
            device,
            seqs: seqs.clone(),
            ts_ms: now,
        };
        if to != reader {
            self.enqueue_to_user(to, None, receipt(author_view), now)?;
        }
        self.enqueue_to_user(reader, Some(device), receipt(reader_view), now)?;
        Ok(true)
    }

    /// Up to `limit` unexpired items of `device` with a sequence above `after`, in order.
    pub fn fetch(
        &mut self,
        device: DeviceId,
        after: u64,
        limit: u32,
        now: u64,
    ) -> Result<Fetched, ProtocolError> {
        let rows: Vec<(i64, Vec<u8>, Option<Vec<u8>>)> = self
            .db()
            .prepare_cached(
                "SELECT q.qseq, q.item, p.body FROM queue q LEFT JOIN payloads p ON p.id = q.payload
                 WHERE q.device = ?1 AND q.qseq > ?2 AND q.expires_ms > ?3 ORDER BY q.qseq LIMIT ?4",
            )
            .and_then(|mut s| {
                s.query_map(
                    params![device.0 as i64, after as i64, now as i64, limit as i64],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?
                .collect()
            })
            .map_err(sql_err)?;
        let mut out = Vec::with_capacity(rows.len());
        for (qseq, blob, shared_body) in rows {
            let mut item: QueueItem = rmp_serde::from_slice(&blob).map_err(|e| {
                tracing::error!("queue item {device}/{qseq} does not decode: {e}");
                ProtocolError::internal("a stored queue item is corrupt")
            })?;
            if let (QueueItem::Message { body, .. }, Some(shared)) = (&mut item, shared_body) {
                *body = OpaqueBytes(shared);
            }
            out.push((qseq as u64, Arc::new(item)));
        }
        Ok(out)
    }

    /// Deletes a device's whole queue (revocation).
    pub(crate) fn drop_queue(&mut self, device: DeviceId) -> Result<(), ProtocolError> {
        let payloads: Vec<Option<i64>> = self
            .db()
            .prepare_cached("DELETE FROM queue WHERE device = ?1 RETURNING payload")
            .and_then(|mut s| s.query_map([device.0 as i64], |r| r.get(0))?.collect())
            .map_err(sql_err)?;
        self.pending.queue_delta -= payloads.len() as i64;
        let payloads: Vec<i64> = payloads.into_iter().flatten().collect();
        self.release_payloads(&payloads)
    }

    /// Drops one reference per entry to shared bodies, deleting those no longer referenced.
    pub(crate) fn release_payloads(&mut self, ids: &[i64]) -> Result<(), ProtocolError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut counts: HashMap<i64, i64> = HashMap::new();
        for id in ids {
            *counts.entry(*id).or_default() += 1;
        }
        for (id, n) in counts {
            self.db()
                .prepare_cached("UPDATE payloads SET refs = refs - ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id, n]))
                .map_err(sql_err)?;
            self.db()
                .prepare_cached("DELETE FROM payloads WHERE id = ?1 AND refs <= 0")
                .and_then(|mut s| s.execute([id]))
                .map_err(sql_err)?;
        }
        Ok(())
    }
}

fn removed_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Removed> {
    Ok(Removed {
        kind: r.get(0)?,
        from_user: r.get(1)?,
        group: r.get(2)?,
        conv_seq: r.get(3)?,
        payload: r.get(4)?,
        created_ms: r.get(5)?,
    })
}
