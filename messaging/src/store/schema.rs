//! The SQLite schema. `user_version` records which migrations have run.

use rusqlite::Connection;

/// Each entry migrates from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE users (
    id             INTEGER PRIMARY KEY,
    phone          TEXT NOT NULL UNIQUE,
    created_ms     INTEGER NOT NULL,
    presence       INTEGER NOT NULL DEFAULT 0,   -- 0 everyone, 1 nobody
    read_receipts  INTEGER NOT NULL DEFAULT 1,
    last_seen_ms   INTEGER
);
CREATE TABLE devices (
    id                INTEGER PRIMARY KEY,
    user              INTEGER NOT NULL REFERENCES users(id),
    name              TEXT NOT NULL,
    is_primary        INTEGER NOT NULL,
    token_hash        BLOB NOT NULL,
    created_ms        INTEGER NOT NULL,
    revoked_ms        INTEGER,
    qseq_reserved     INTEGER NOT NULL DEFAULT 1,   -- every queue sequence handed out is below this
    identity_key      BLOB,
    signed_prekey_id  INTEGER,
    signed_prekey     BLOB,
    signed_prekey_sig BLOB,
    last_resort_id    INTEGER,
    last_resort_key   BLOB
);
CREATE INDEX devices_by_user ON devices(user);
CREATE TABLE one_time_prekeys (
    device  INTEGER NOT NULL,
    key_id  INTEGER NOT NULL,
    key     BLOB NOT NULL,
    PRIMARY KEY (device, key_id)
) WITHOUT ROWID;
CREATE TABLE codes (
    phone       TEXT PRIMARY KEY,
    code_hash   BLOB NOT NULL,
    expires_ms  INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE link_codes (
    code_hash   BLOB PRIMARY KEY,
    user        INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL
);
CREATE TABLE direct_convs (
    a         INTEGER NOT NULL,
    b         INTEGER NOT NULL,
    next_seq  INTEGER NOT NULL,
    PRIMARY KEY (a, b)
) WITHOUT ROWID;
CREATE TABLE groups (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    created_by  INTEGER NOT NULL,
    created_ms  INTEGER NOT NULL,
    next_seq    INTEGER NOT NULL
);
CREATE TABLE group_members (
    grp        INTEGER NOT NULL,
    user       INTEGER NOT NULL,
    admin      INTEGER NOT NULL,
    joined_ms  INTEGER NOT NULL,
    PRIMARY KEY (grp, user)
) WITHOUT ROWID;
-- Message bodies shared by many queue entries (group messages), stored once.
CREATE TABLE payloads (
    id          INTEGER PRIMARY KEY,
    body        BLOB NOT NULL,
    refs        INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL
);
-- One row per item waiting for one device. `item` is the MessagePack QueueItem; for group
-- messages its body is empty and `payload` points at the shared body.
-- Rows are laid out in arrival order (the rowid): items are mostly acknowledged moments after
-- they arrive, so a batch of inserts and deletes dirties a few pages at the end of the table
-- rather than one page per device. Reads by device go through the small index.
CREATE TABLE queue (
    id          INTEGER PRIMARY KEY,
    device      INTEGER NOT NULL,
    qseq        INTEGER NOT NULL,
    created_ms  INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL,
    kind        INTEGER NOT NULL,   -- 1 message, 2 receipt, 3 group notice, 4 missed call
    from_user   INTEGER,            -- messages: the author, who gets the delivered receipt
    grp         INTEGER,            -- group messages: the group
    conv_seq    INTEGER,            -- messages: the conversation sequence
    payload     INTEGER,
    item        BLOB NOT NULL
);
CREATE UNIQUE INDEX queue_by_device ON queue(device, qseq);
-- No index on expires_ms: reads skip expired rows, and the sweeper walks the table in rowid
-- order a chunk at a time.
-- Duplicate detection on (sender device, client id): two generations, the older dropped whole.
CREATE TABLE dedup_0 (
    device     INTEGER NOT NULL,
    client_id  TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    ts_ms      INTEGER NOT NULL,
    PRIMARY KEY (device, client_id)
) WITHOUT ROWID;
CREATE TABLE dedup_1 (
    device     INTEGER NOT NULL,
    client_id  TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    ts_ms      INTEGER NOT NULL,
    PRIMARY KEY (device, client_id)
) WITHOUT ROWID;
CREATE TABLE uploads (
    id          TEXT PRIMARY KEY,
    device      INTEGER NOT NULL,
    length      INTEGER NOT NULL,
    created_ms  INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL
);
CREATE TABLE blobs (
    hash        TEXT PRIMARY KEY,
    size        INTEGER NOT NULL,
    created_ms  INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL
);
CREATE TABLE meta (
    key    TEXT PRIMARY KEY,
    value  INTEGER NOT NULL
);
"#,
    r#"
-- Wrong registration-code guesses per phone number over a day, across codes: one row per
-- (phone, network) and one with network '*' for all networks together.
CREATE TABLE code_guesses (
    phone         TEXT NOT NULL,
    network       TEXT NOT NULL,
    since_ms      INTEGER NOT NULL,
    wrong         INTEGER NOT NULL,
    PRIMARY KEY (phone, network)
) WITHOUT ROWID;
-- The bytes each user is charged for the blobs they uploaded (a blob uploaded by two users
-- is charged to both: each could have stored it alone).
CREATE TABLE blob_charges (
    user        INTEGER NOT NULL,
    hash        TEXT NOT NULL,
    size        INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL,
    PRIMARY KEY (user, hash)
) WITHOUT ROWID;
CREATE INDEX groups_by_creator ON groups(created_by, created_ms);
CREATE INDEX uploads_by_device ON uploads(device);
CREATE INDEX link_codes_by_user ON link_codes(user);
"#,
];

/// Brings the database to the current schema version.
pub fn migrate(db: &mut Connection) -> rusqlite::Result<()> {
    let version: usize = db.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = db.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}
