//! Test users for `throughput`: registration, groups and (with `--e2ee`) keys and sessions.

use anyhow::{Context, Result, bail};
use natter_client::content::Content;
use natter_client::crypto::Machine;
use natter_client::protocol::codec::Encoding;
use natter_client::protocol::{
    ClientFrame, DeviceId, Envelope, GroupId, OpaqueBytes, ServerFrame, UserId,
};
use natter_client::{ConnectOptions, Connection, Credentials, HttpClient};

use crate::register_many;
use crate::throughput::{Recipient, ThroughputOpts};

/// What one sender sends to.
pub struct SenderSetup {
    pub creds: Credentials,
    pub to: Credentials,
    /// Its group (sender, its recipient and the next recipients), with the other members'
    /// device count.
    pub group: Option<(GroupId, u64)>,
    pub machine: Option<Machine>,
}

pub async fn setup_connection(
    http: &HttpClient,
    c: &Credentials,
    enc: Encoding,
) -> Result<Connection> {
    let opts = ConnectOptions {
        encoding: enc,
        ..Default::default()
    };
    Connection::connect(&http.ws_url(), &c.token, opts)
        .await
        .context("connect")
}

/// Publishes a machine's keys through `conn`.
async fn publish(conn: &Connection, m: &mut Machine) -> Result<()> {
    let up = m.keys_to_upload(0, true).context("keys to upload")?;
    let frame = ClientFrame::KeysUpload {
        id: 0,
        identity_key: Some(up.identity_key.clone()),
        signed_prekey: Some(up.signed_prekey.clone()),
        one_time: up.one_time.clone(),
        last_resort: up.last_resort.clone(),
    };
    conn.request(frame).await.context("keys_upload")?;
    m.keys_published(&up);
    Ok(())
}

/// Starts an Olm session from `m` to `user`'s (single) device.
async fn claim(conn: &Connection, m: &mut Machine, user: UserId) -> Result<()> {
    match conn.request(ClientFrame::KeysClaim { id: 0, user }).await? {
        ServerFrame::Bundle { devices, .. } => {
            for b in &devices {
                m.start_session(user, b)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            Ok(())
        }
        other => bail!("unexpected answer to keys_claim: {other:?}"),
    }
}

/// Registers users, makes groups, and (with E2EE) publishes keys, starts sessions and shares
/// each sender's group key.
pub async fn setup(
    http: &HttpClient,
    o: &ThroughputOpts,
) -> Result<(Vec<SenderSetup>, Vec<(Credentials, Recipient)>)> {
    let users = register_many(http, o.pairs * 2, 64, "load").await?;
    let (senders, recipients) = users.split_at(o.pairs);
    let members = o.group_size.clamp(2, o.pairs + 1);
    let mut rec_out = Vec::new();
    for r in recipients {
        let mut machine = o.e2ee.then(|| Machine::new(r.user, r.device));
        if let Some(m) = machine.as_mut() {
            let conn = setup_connection(http, r, o.encoding).await?;
            publish(&conn, m).await?;
            conn.close();
        }
        rec_out.push((r.clone(), Recipient { machine }));
    }
    eprintln!("recipients ready");
    let mut out = Vec::new();
    for (i, s) in senders.iter().enumerate() {
        let to = recipients[i].clone();
        let mut machine = o.e2ee.then(|| Machine::new(s.user, s.device));
        let conn = setup_connection(http, s, o.encoding).await?;
        if let Some(m) = machine.as_mut() {
            publish(&conn, m).await?;
            claim(&conn, m, to.user).await?;
        }
        let mut group = None;
        if o.group_pct > 0 {
            let others: Vec<&Credentials> = (0..members - 1)
                .map(|k| &recipients[(i + k) % recipients.len()])
                .collect();
            let info = match conn
                .request(ClientFrame::GroupCreate {
                    id: 0,
                    name: format!("load {i}"),
                    members: others.iter().map(|c| c.user).collect(),
                })
                .await?
            {
                ServerFrame::Group { group, .. } => group,
                other => bail!("unexpected answer to group_create: {other:?}"),
            };
            if let Some(m) = machine.as_mut() {
                for c in others.iter().skip(1) {
                    claim(&conn, m, c.user).await?;
                }
                let devices: Vec<DeviceId> = others.iter().map(|c| c.device).collect();
                let share = m
                    .prepare_group(info.group, &devices, 0)
                    .context("a new group session")?;
                let key = Content::GroupKey {
                    group: info.group,
                    session_key: OpaqueBytes(share.session_key.clone()),
                }
                .encode();
                for c in &others {
                    let body = m
                        .encrypt(c.device, &key)
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    conn.request(ClientFrame::Send {
                        id: 0,
                        client_id: format!("key-{}", c.user),
                        to: c.user,
                        envelopes: vec![Envelope {
                            device: c.device,
                            body: OpaqueBytes(body),
                        }],
                    })
                    .await
                    .context("sharing a group key")?;
                }
            }
            group = Some((info.group, others.len() as u64));
        }
        conn.close();
        out.push(SenderSetup {
            creds: s.clone(),
            to,
            group,
            machine,
        });
        if (i + 1) % 100 == 0 {
            eprintln!("set up {} / {} senders", i + 1, o.pairs);
        }
    }
    Ok((out, rec_out))
}
