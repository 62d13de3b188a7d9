//! The client's local database (SQLite): its credentials, its crypto state (encrypted), the
//! queue cursor, contacts, groups and message history with local search.
//!
//! The crypto state is sealed under a 32-byte key kept in a separate file (`key`, mode 0600)
//! beside the database, so a copied database alone does not open the Olm sessions.

use std::path::{Path, PathBuf};

use natter_signaling::{Conv, DeviceId, GroupId, UserId};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::{ClientError, Credentials};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (
    key    TEXT PRIMARY KEY,
    value  BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS contacts (
    user   INTEGER PRIMARY KEY,
    phone  TEXT NOT NULL,
    name   TEXT
);
CREATE TABLE IF NOT EXISTS groups (
    id       INTEGER PRIMARY KEY,
    name     TEXT NOT NULL,
    members  TEXT NOT NULL          -- JSON array of user ids
);
CREATE TABLE IF NOT EXISTS messages (
    id             INTEGER PRIMARY KEY,
    conv_kind      TEXT NOT NULL,   -- 'direct' | 'group'
    conv_id        INTEGER NOT NULL,
    seq            INTEGER,         -- the server's conversation sequence (NULL while sending)
    sender_user    INTEGER NOT NULL,
    sender_device  INTEGER NOT NULL,
    ts_ms          INTEGER NOT NULL,
    outgoing       INTEGER NOT NULL,
    kind           TEXT NOT NULL,   -- 'text' | 'file' | 'error'
    body           TEXT NOT NULL,   -- text, file name, or the decrypt error
    file           TEXT,            -- JSON: name, size, media key
    status         TEXT NOT NULL,   -- sending | sent | delivered | read | received
    client_id      TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_seq ON messages(conv_kind, conv_id, seq);
CREATE INDEX IF NOT EXISTS messages_by_conv ON messages(conv_kind, conv_id, id);
-- Receipts that arrived before the send's own acknowledgement gave the message its seq.
CREATE TABLE IF NOT EXISTS early_receipts (
    conv_kind  TEXT NOT NULL,
    conv_id    INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    read       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS early_receipts_by_seq ON early_receipts(conv_kind, conv_id, seq);
"#;

/// Early receipts kept at most (receipts for messages this device never sent, e.g. a linked
/// device's, would otherwise accumulate).
const MAX_EARLY_RECEIPTS: i64 = 1000;

/// One line of history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryItem {
    pub id: i64,
    pub conv: Conv,
    pub seq: Option<u64>,
    pub sender: UserId,
    pub sender_device: DeviceId,
    pub ts_ms: u64,
    pub outgoing: bool,
    pub kind: ItemKind,
    /// The text, the file name, or (for `error`) why the message could not be read.
    pub body: String,
    pub file: Option<FileRef>,
    pub status: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    Text,
    File,
    /// A message that arrived but could not be decrypted; kept with the reason.
    Error,
}

impl ItemKind {
    fn as_str(self) -> &'static str {
        match self {
            ItemKind::Text => "text",
            ItemKind::File => "file",
            ItemKind::Error => "error",
        }
    }
    fn parse(s: &str) -> ItemKind {
        match s {
            "file" => ItemKind::File,
            "error" => ItemKind::Error,
            _ => ItemKind::Text,
        }
    }
}

/// A received or sent file: where to fetch it and how to open it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub name: String,
    /// Plaintext size in bytes.
    pub size: u64,
    pub media: natter_crypto::media::MediaKey,
}

fn conv_parts(conv: Conv) -> (&'static str, i64) {
    match conv {
        Conv::Direct(u) => ("direct", u.0 as i64),
        Conv::Group(g) => ("group", g.0 as i64),
    }
}

fn sql(e: rusqlite::Error) -> ClientError {
    ClientError::Protocol(format!("local store: {e}"))
}

/// A new message for the history.
pub struct NewItem<'a> {
    pub conv: Conv,
    pub seq: Option<u64>,
    pub sender: UserId,
    pub sender_device: DeviceId,
    pub ts_ms: u64,
    pub outgoing: bool,
    pub kind: ItemKind,
    pub body: &'a str,
    pub file: Option<&'a FileRef>,
    pub status: &'a str,
    pub client_id: Option<&'a str>,
}

pub struct Store {
    db: Connection,
    dir: PathBuf,
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, ClientError> {
        std::fs::create_dir_all(dir)?;
        let db = Connection::open(dir.join("client.db")).map_err(sql)?;
        db.pragma_update(None, "journal_mode", "WAL").map_err(sql)?;
        db.pragma_update(None, "synchronous", "FULL").map_err(sql)?;
        db.execute_batch(SCHEMA).map_err(sql)?;
        Ok(Store {
            db,
            dir: dir.to_owned(),
        })
    }

    /// The key that seals the crypto state, created on first use.
    pub fn pickle_key(&self) -> Result<[u8; 32], ClientError> {
        let path = self.dir.join("key");
        match std::fs::read(&path) {
            Ok(k) if k.len() == 32 => Ok(k.try_into().expect("32 bytes")),
            Ok(_) => Err(ClientError::Protocol(format!(
                "{} is damaged (not 32 bytes)",
                path.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = natter_crypto::random_bytes::<32>();
                write_private(&path, &key)?;
                Ok(key)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, ClientError> {
        self.db
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(sql)
    }

    fn meta_put(&self, key: &str, value: &[u8]) -> Result<(), ClientError> {
        self.db
            .execute(
                "INSERT INTO meta(key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = ?2",
                params![key, value],
            )
            .map_err(sql)?;
        Ok(())
    }

    pub fn credentials(&self) -> Result<Option<(String, Credentials)>, ClientError> {
        let Some(v) = self.meta_get("credentials")? else {
            return Ok(None);
        };
        let (server, creds): (String, Credentials) = serde_json::from_slice(&v)
            .map_err(|e| ClientError::Protocol(format!("stored credentials: {e}")))?;
        Ok(Some((server, creds)))
    }

    pub fn set_credentials(&self, server: &str, creds: &Credentials) -> Result<(), ClientError> {
        let v = serde_json::to_vec(&(server, creds)).expect("serializes");
        self.meta_put("credentials", &v)
    }

    pub fn crypto_state(&self) -> Result<Option<Vec<u8>>, ClientError> {
        self.meta_get("crypto")
    }

    pub fn set_crypto_state(&self, pickle: &[u8]) -> Result<(), ClientError> {
        self.meta_put("crypto", pickle)
    }

    /// The highest queue sequence stored (sent as the cursor in `hello`).
    pub fn cursor(&self) -> Result<u64, ClientError> {
        Ok(self
            .meta_get("cursor")?
            .and_then(|v| v.try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    pub fn set_cursor(&self, qseq: u64) -> Result<(), ClientError> {
        if qseq > self.cursor()? {
            self.meta_put("cursor", &qseq.to_be_bytes())?;
        }
        Ok(())
    }

    /// Runs `f` in one transaction: a delivered item, the crypto state it changed and the
    /// cursor are stored together (or not at all) before the item is acknowledged.
    pub fn transaction<R>(
        &mut self,
        f: impl FnOnce(&Store) -> Result<R, ClientError>,
    ) -> Result<R, ClientError> {
        self.db.execute_batch("BEGIN IMMEDIATE").map_err(sql)?;
        match f(self) {
            Ok(r) => {
                self.db.execute_batch("COMMIT").map_err(sql)?;
                Ok(r)
            }
            Err(e) => {
                let _ = self.db.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    pub fn add_contact(
        &self,
        user: UserId,
        phone: &str,
        name: Option<&str>,
    ) -> Result<(), ClientError> {
        self.db
            .execute(
                "INSERT INTO contacts(user, phone, name) VALUES (?1, ?2, ?3)
                 ON CONFLICT(user) DO UPDATE SET phone = ?2, name = COALESCE(?3, name)",
                params![user.0 as i64, phone, name],
            )
            .map_err(sql)?;
        Ok(())
    }

    /// (user, phone, name) of every contact.
    pub fn contacts(&self) -> Result<Vec<(UserId, String, Option<String>)>, ClientError> {
        let mut st = self
            .db
            .prepare("SELECT user, phone, name FROM contacts ORDER BY user")
            .map_err(sql)?;
        st.query_map([], |r| {
            Ok((UserId(r.get::<_, i64>(0)? as u64), r.get(1)?, r.get(2)?))
        })
        .map_err(sql)?
        .collect::<Result<_, _>>()
        .map_err(sql)
    }

    pub fn set_group(
        &self,
        group: GroupId,
        name: &str,
        members: &[UserId],
    ) -> Result<(), ClientError> {
        let m = serde_json::to_string(members).expect("serializes");
        self.db
            .execute(
                "INSERT INTO groups(id, name, members) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET name = ?2, members = ?3",
                params![group.0 as i64, name, m],
            )
            .map_err(sql)?;
        Ok(())
    }

    pub fn remove_group(&self, group: GroupId) -> Result<(), ClientError> {
        self.db
            .execute("DELETE FROM groups WHERE id = ?1", [group.0 as i64])
            .map_err(sql)?;
        Ok(())
    }

    pub fn group(&self, group: GroupId) -> Result<Option<(String, Vec<UserId>)>, ClientError> {
        self.db
            .query_row(
                "SELECT name, members FROM groups WHERE id = ?1",
                [group.0 as i64],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()
            .map_err(sql)?
            .map(|(n, m)| {
                let members = serde_json::from_str(&m)
                    .map_err(|e| ClientError::Protocol(format!("stored group: {e}")))?;
                Ok((n, members))
            })
            .transpose()
    }

    pub fn groups(&self) -> Result<Vec<(GroupId, String, Vec<UserId>)>, ClientError> {
        let mut st = self
            .db
            .prepare("SELECT id, name, members FROM groups ORDER BY id")
            .map_err(sql)?;
        let rows: Vec<(i64, String, String)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(sql)?
            .collect::<Result<_, _>>()
            .map_err(sql)?;
        rows.into_iter()
            .map(|(id, name, m)| {
                let members = serde_json::from_str(&m)
                    .map_err(|e| ClientError::Protocol(format!("stored group: {e}")))?;
                Ok((GroupId(id as u64), name, members))
            })
            .collect()
    }

    /// Adds a message; one already stored at the same (conversation, seq) is kept and its id
    /// returned (a redelivery after a crash is not a second message).
    pub fn add_item(&self, item: NewItem<'_>) -> Result<i64, ClientError> {
        let (kind, id) = conv_parts(item.conv);
        if let Some(seq) = item.seq
            && let Some(existing) = self
                .db
                .query_row(
                    "SELECT id FROM messages WHERE conv_kind = ?1 AND conv_id = ?2 AND seq = ?3",
                    params![kind, id, seq as i64],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql)?
        {
            return Ok(existing);
        }
        let file = item
            .file
            .map(|f| serde_json::to_string(f).expect("serializes"));
        self.db
            .execute(
                "INSERT INTO messages(conv_kind, conv_id, seq, sender_user, sender_device, ts_ms,
                    outgoing, kind, body, file, status, client_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    kind,
                    id,
                    item.seq.map(|s| s as i64),
                    item.sender.0 as i64,
                    item.sender_device.0 as i64,
                    item.ts_ms as i64,
                    item.outgoing,
                    item.kind.as_str(),
                    item.body,
                    file,
                    item.status,
                    item.client_id,
                ],
            )
            .map_err(sql)?;
        Ok(self.db.last_insert_rowid())
    }

    /// Marks a sent message with its server sequence, applying any receipt for it that
    /// arrived first (the recipient can answer before the server's acknowledgement is read).
    pub fn mark_sent(&self, id: i64, seq: u64, ts_ms: u64) -> Result<(), ClientError> {
        self.db
            .execute(
                "UPDATE messages SET seq = ?2, ts_ms = ?3, status = 'sent' WHERE id = ?1",
                params![id, seq as i64, ts_ms as i64],
            )
            .map_err(sql)?;
        let conv: Option<(String, i64)> = self
            .db
            .query_row(
                "SELECT conv_kind, conv_id FROM messages WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql)?;
        let Some((kind, conv_id)) = conv else {
            return Ok(());
        };
        let early: Option<i64> = self
            .db
            .query_row(
                "SELECT max(read) FROM early_receipts
                 WHERE conv_kind = ?1 AND conv_id = ?2 AND seq = ?3",
                params![kind, conv_id, seq as i64],
                |r| r.get(0),
            )
            .map_err(sql)?;
        if let Some(read) = early {
            let status = if read != 0 { "read" } else { "delivered" };
            self.db
                .execute(
                    "UPDATE messages SET status = ?2 WHERE id = ?1",
                    params![id, status],
                )
                .map_err(sql)?;
            self.db
                .execute(
                    "DELETE FROM early_receipts WHERE conv_kind = ?1 AND conv_id = ?2 AND seq = ?3",
                    params![kind, conv_id, seq as i64],
                )
                .map_err(sql)?;
        }
        Ok(())
    }

    pub fn mark_failed(&self, id: i64) -> Result<(), ClientError> {
        self.db
            .execute("UPDATE messages SET status = 'failed' WHERE id = ?1", [id])
            .map_err(sql)?;
        Ok(())
    }

    /// Applies a receipt to own messages `seqs` of `conv` (read outranks delivered).
    pub fn apply_receipt(&self, conv: Conv, seqs: &[u64], read: bool) -> Result<(), ClientError> {
        let (kind, id) = conv_parts(conv);
        let status = if read { "read" } else { "delivered" };
        let mut st = self
            .db
            .prepare_cached(
                "UPDATE messages SET status = ?4
                 WHERE conv_kind = ?1 AND conv_id = ?2 AND seq = ?3 AND outgoing = 1
                   AND status != 'read'",
            )
            .map_err(sql)?;
        let mut early = Vec::new();
        for s in seqs {
            let n = st
                .execute(params![kind, id, *s as i64, status])
                .map_err(sql)?;
            if n == 0 {
                early.push(*s);
            }
        }
        drop(st);
        // No message with that seq yet: it may be ours, still waiting for its ack.
        for s in early {
            let known: bool = self
                .db
                .query_row(
                    "SELECT EXISTS(SELECT 1 FROM messages
                     WHERE conv_kind = ?1 AND conv_id = ?2 AND seq = ?3)",
                    params![kind, id, s as i64],
                    |r| r.get(0),
                )
                .map_err(sql)?;
            if !known {
                self.db
                    .execute(
                        "INSERT INTO early_receipts (conv_kind, conv_id, seq, read)
                         VALUES (?1, ?2, ?3, ?4)",
                        params![kind, id, s as i64, read],
                    )
                    .map_err(sql)?;
            }
        }
        self.db
            .execute(
                "DELETE FROM early_receipts WHERE rowid <= (SELECT max(rowid) FROM early_receipts) - ?1",
                [MAX_EARLY_RECEIPTS],
            )
            .map_err(sql)?;
        Ok(())
    }

    fn row_to_item(r: &rusqlite::Row<'_>) -> rusqlite::Result<HistoryItem> {
        let kind: String = r.get(1)?;
        let conv_id = r.get::<_, i64>(2)? as u64;
        let file: Option<String> = r.get(10)?;
        Ok(HistoryItem {
            id: r.get(0)?,
            conv: if kind == "group" {
                Conv::Group(GroupId(conv_id))
            } else {
                Conv::Direct(UserId(conv_id))
            },
            seq: r.get::<_, Option<i64>>(3)?.map(|s| s as u64),
            sender: UserId(r.get::<_, i64>(4)? as u64),
            sender_device: DeviceId(r.get::<_, i64>(5)? as u64),
            ts_ms: r.get::<_, i64>(6)? as u64,
            outgoing: r.get(7)?,
            kind: ItemKind::parse(&r.get::<_, String>(8)?),
            body: r.get(9)?,
            file: file.and_then(|f| serde_json::from_str(&f).ok()),
            status: r.get(11)?,
        })
    }

    const COLUMNS: &'static str = "id, conv_kind, conv_id, seq, sender_user, sender_device, ts_ms, \
                                   outgoing, kind, body, file, status";

    /// The last `limit` items of a conversation, oldest first.
    pub fn history(&self, conv: Conv, limit: usize) -> Result<Vec<HistoryItem>, ClientError> {
        let (kind, id) = conv_parts(conv);
        let mut st = self
            .db
            .prepare(&format!(
                "SELECT {} FROM messages WHERE conv_kind = ?1 AND conv_id = ?2
                 ORDER BY id DESC LIMIT ?3",
                Self::COLUMNS
            ))
            .map_err(sql)?;
        let mut v: Vec<HistoryItem> = st
            .query_map(params![kind, id, limit as i64], Self::row_to_item)
            .map_err(sql)?
            .collect::<Result<_, _>>()
            .map_err(sql)?;
        v.reverse();
        Ok(v)
    }

    /// Items whose text contains `needle` (case-insensitive for ASCII), newest first.
    pub fn search(&self, needle: &str, limit: usize) -> Result<Vec<HistoryItem>, ClientError> {
        let pattern = format!(
            "%{}%",
            needle
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        let mut st = self
            .db
            .prepare(&format!(
                "SELECT {} FROM messages WHERE kind != 'error' AND body LIKE ?1 ESCAPE '\\'
                 ORDER BY id DESC LIMIT ?2",
                Self::COLUMNS
            ))
            .map_err(sql)?;
        st.query_map(params![pattern, limit as i64], Self::row_to_item)
            .map_err(sql)?
            .collect::<Result<_, _>>()
            .map_err(sql)
    }

    pub fn item(&self, id: i64) -> Result<Option<HistoryItem>, ClientError> {
        self.db
            .query_row(
                &format!("SELECT {} FROM messages WHERE id = ?1", Self::COLUMNS),
                [id],
                Self::row_to_item,
            )
            .optional()
            .map_err(sql)
    }
}

/// Writes a file readable only by its owner.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_signaling::{DeviceId, UserId};

    fn sending(store: &Store, conv: Conv) -> i64 {
        store
            .add_item(NewItem {
                conv,
                seq: None,
                sender: UserId(1),
                sender_device: DeviceId(1),
                ts_ms: 0,
                outgoing: true,
                kind: ItemKind::Text,
                body: "hi",
                file: None,
                status: "sending",
                client_id: None,
            })
            .unwrap()
    }

    #[test]
    fn a_receipt_that_beats_the_send_ack_is_kept_until_the_seq_is_known() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let conv = Conv::Direct(UserId(2));
        let a = sending(&store, conv);
        let b = sending(&store, conv);
        // Receipts for seqs 7 (delivered) and 8 (read) arrive before either ack.
        store.apply_receipt(conv, &[7], false).unwrap();
        store.apply_receipt(conv, &[8], true).unwrap();
        store.mark_sent(a, 7, 1).unwrap();
        store.mark_sent(b, 8, 2).unwrap();
        let h = store.history(conv, 10).unwrap();
        let status = |id: i64| h.iter().find(|i| i.id == id).unwrap().status.clone();
        assert_eq!(status(a), "delivered");
        assert_eq!(status(b), "read");
        // Used up: a later message that reuses nothing stays "sent".
        let c = sending(&store, conv);
        store.mark_sent(c, 9, 3).unwrap();
        let h = store.history(conv, 10).unwrap();
        assert_eq!(h.iter().find(|i| i.id == c).unwrap().status, "sent");
    }
}
