//! The sync loop: one connection at a time, reconnecting with backoff; what arrives is
//! decrypted, stored with the crypto state and cursor in one transaction, and only then
//! acknowledged; call and room events are routed to their tasks.

use super::*;

/// The connection loop: connect, serve, reconnect with backoff, until stopped or revoked.
pub(super) async fn run(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    let mut attempt: u32 = 0;
    loop {
        if *stop.borrow() {
            break;
        }
        let cursor = inner.state.lock().unwrap().store.cursor().unwrap_or(0);
        let opts = ConnectOptions {
            cursor: Some(cursor),
            ..Default::default()
        };
        let url = inner.http.ws_url();
        let connected = tokio::select! {
            r = Connection::connect(&url, &inner.creds.token, opts) => r,
            _ = stop.changed() => break,
        };
        match connected {
            Ok(mut conn) => {
                attempt = 0;
                let events = conn.take_events();
                let conn = Arc::new(conn);
                inner.conn.send_replace(Some(conn.clone()));
                let _ = inner.events.send(ClientEvent::Connected);
                let topup = tokio::spawn(top_up_keys(inner.clone(), conn.clone()));
                let reason = tokio::select! {
                    r = serve(&inner, &conn, events) => r,
                    _ = stop.changed() => Ended::Stopped,
                };
                topup.abort();
                inner.conn.send_replace(None);
                match reason {
                    Ended::Stopped => {
                        if let Ok(c) = Arc::try_unwrap(conn) {
                            c.close();
                        }
                        break;
                    }
                    Ended::Revoked(reason) => {
                        let _ = inner.events.send(ClientEvent::Revoked { reason });
                        break;
                    }
                    Ended::Dropped(reason) => {
                        let _ = inner.events.send(ClientEvent::Disconnected { reason });
                    }
                }
            }
            Err(ClientError::Server(e))
                if matches!(e.code, ErrorCode::Unauthorized | ErrorCode::DeviceRevoked) =>
            {
                let _ = inner
                    .events
                    .send(ClientEvent::Revoked { reason: e.message });
                break;
            }
            Err(e) => {
                let _ = inner.events.send(ClientEvent::Disconnected {
                    reason: e.to_string(),
                });
            }
        }
        let wait = backoff(attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => break,
        }
    }
    inner.conn.send_replace(None);
}

enum Ended {
    Stopped,
    Revoked(String),
    Dropped(String),
}

/// Handles what the server sends until the socket closes.
async fn serve(inner: &Arc<Inner>, conn: &Arc<Connection>, mut events: crate::Events) -> Ended {
    while let Some(first) = events.next().await {
        let mut batch = vec![first];
        while batch.len() < 256 {
            match events.try_next() {
                Some(e) => batch.push(e),
                None => break,
            }
        }
        let mut deliveries = Vec::new();
        let mut out = Vec::new();
        let mut closed = None;
        for ev in batch {
            match ev {
                Event::Frame(ServerFrame::Deliver { qseq, item }) => deliveries.push((qseq, item)),
                Event::Frame(ServerFrame::QueueEmpty {}) => {
                    // Whatever came before it in this batch is handled first.
                    flush(inner, conn, &mut deliveries, &mut out);
                    out.push(ClientEvent::BacklogDone);
                }
                Event::Frame(ServerFrame::Presence(p)) => out.push(ClientEvent::Presence(p)),
                Event::Frame(ServerFrame::Call {
                    call_id,
                    event,
                    ice_servers,
                }) => {
                    route_call_event(inner, &call_id, &event);
                    out.push(ClientEvent::Call {
                        call_id,
                        event,
                        ice_servers,
                    });
                }
                Event::Frame(ServerFrame::Room { group, event }) => {
                    if let Some(route) = inner.rooms.lock().unwrap().get(&group) {
                        let _ = route.signals.send(event.clone());
                    }
                    out.push(ClientEvent::Room { group, event });
                }
                Event::Frame(ServerFrame::Typing {
                    conv, from, active, ..
                }) => out.push(ClientEvent::Typing { conv, from, active }),
                Event::Frame(ServerFrame::Error(e)) => {
                    if e.code == ErrorCode::DeviceRevoked {
                        closed = Some(Ended::Revoked(e.message));
                    }
                }
                Event::Frame(_) => {}
                Event::Closed(c) => {
                    closed = Some(match c {
                        Some((4003, r)) | Some((4001, r)) => {
                            closed.take().unwrap_or(Ended::Revoked(r))
                        }
                        Some((code, r)) => closed
                            .take()
                            .unwrap_or(Ended::Dropped(format!("closed {code}: {r}"))),
                        None => closed
                            .take()
                            .unwrap_or(Ended::Dropped("connection lost".into())),
                    });
                }
            }
        }
        flush(inner, conn, &mut deliveries, &mut out);
        for e in out {
            let _ = inner.events.send(e);
        }
        if let Some(c) = closed {
            return c;
        }
        let refill = inner
            .state
            .lock()
            .unwrap()
            .machine
            .take_new_inbound_sessions();
        if refill > 0 {
            tokio::spawn(top_up_keys(inner.clone(), conn.clone()));
        }
    }
    Ended::Dropped("connection lost".into())
}

/// Hands a call event to its call's task, or keeps an unanswered call's candidates.
fn route_call_event(inner: &Inner, call_id: &str, event: &natter_signaling::call::CallEvent) {
    use natter_signaling::call::CallEvent;
    if let Some(route) = inner.calls.lock().unwrap().get(call_id) {
        let _ = route.signals.send(event.clone());
        return;
    }
    let mut pending = inner.pending_ice.lock().unwrap();
    match event {
        // Bounded: a device rings for few calls at once.
        CallEvent::Incoming { .. } if pending.len() < 16 => {
            pending.entry(call_id.to_owned()).or_default();
        }
        CallEvent::Ice { candidate, .. } => {
            if let Some(v) = pending.get_mut(call_id)
                && v.len() < 64
            {
                v.push(candidate.clone());
            }
        }
        CallEvent::Ended { .. } | CallEvent::AnsweredElsewhere => {
            pending.remove(call_id);
        }
        _ => {}
    }
}

/// Processes deliveries in order, stores them with the crypto state and cursor in one
/// transaction, and only then acknowledges them.
fn flush(
    inner: &Arc<Inner>,
    conn: &Connection,
    deliveries: &mut Vec<(u64, Arc<QueueItem>)>,
    out: &mut Vec<ClientEvent>,
) {
    if deliveries.is_empty() {
        return;
    }
    let items = std::mem::take(deliveries);
    let mut guard = inner.state.lock().unwrap();
    let st = &mut *guard;
    let me = inner.creds.user;
    let result = st.store.transaction(|store| {
        let mut events = Vec::new();
        let mut call_keys = Vec::new();
        let mut last = 0;
        for (qseq, item) in &items {
            handle_item(
                store,
                &mut st.machine,
                me,
                item,
                &mut events,
                &mut call_keys,
            )?;
            last = *qseq;
        }
        store.set_crypto_state(&st.machine.pickle(&st.key))?;
        store.set_cursor(last)?;
        Ok((events, call_keys))
    });
    drop(guard);
    match result {
        Ok((events, call_keys)) => {
            crate::rooms::call_keys_arrived(inner, call_keys);
            out.extend(events);
            let qseqs = items.iter().map(|(q, _)| *q).collect();
            let _ = conn.notify(ClientFrame::Ack { id: 0, qseqs });
        }
        Err(e) => {
            // Not stored, so not acknowledged: the server will deliver them again.
            tracing_free_warn(&format!("could not store deliveries: {e}"));
            // The in-memory ratchets may have moved past what is stored: reload them.
            let mut st = inner.state.lock().unwrap();
            if let Ok(Some(p)) = st.store.crypto_state()
                && let Ok(m) = Machine::unpickle(&p, &st.key)
            {
                st.machine = m;
            }
        }
    }
}

fn tracing_free_warn(msg: &str) {
    eprintln!("natter-client: {msg}");
}

/// Decrypts and stores one queue item.
fn handle_item(
    store: &Store,
    machine: &mut Machine,
    me: UserId,
    item: &QueueItem,
    events: &mut Vec<ClientEvent>,
    call_keys: &mut Vec<crate::rooms::CallKeyArrived>,
) -> Result<(), ClientError> {
    match item {
        QueueItem::Message {
            conv,
            seq,
            from,
            device,
            ts_ms,
            body,
        } => {
            let decrypted = match conv {
                Conv::Direct(_) => machine.decrypt(*from, *device, &body.0),
                Conv::Group(g) => machine.decrypt_group(*from, *device, *g, &body.0),
            };
            let outgoing = *from == me;
            let status = if outgoing { "sent" } else { "received" };
            let content = decrypted.map_err(|e| e.to_string()).and_then(|p| {
                if let Some(c) = p.identity_change.filter(|c| !c.first_for_user) {
                    events.push(ClientEvent::IdentityChanged {
                        user: c.user,
                        device: c.device,
                        old: c.old,
                        new: c.new,
                    });
                }
                Content::decode(&p.content)
            });
            let (kind, text, file) = match content {
                Ok(Content::CallKey {
                    group,
                    call_id,
                    key,
                }) => {
                    // A call's media key, for the room this device is in (if it is).
                    if *conv == Conv::Group(group) && *device != machine.device() {
                        call_keys.push(crate::rooms::CallKeyArrived {
                            group,
                            call_id,
                            from: *device,
                            key,
                        });
                    }
                    return Ok(());
                }
                Ok(Content::GroupKey { group, session_key }) => {
                    // A key, not a message: nothing to show.
                    if let Err(e) = machine.receive_group_key(*device, group, &session_key.0) {
                        tracing_free_warn(&format!("group key from {device}: {e}"));
                    }
                    return Ok(());
                }
                Ok(Content::Text { text }) => (ItemKind::Text, text, None),
                Ok(Content::File { name, size, media }) => (
                    ItemKind::File,
                    name.clone(),
                    Some(FileRef { name, size, media }),
                ),
                Err(reason) => (ItemKind::Error, reason, None),
            };
            let id = store.add_item(NewItem {
                conv: *conv,
                seq: Some(*seq),
                sender: *from,
                sender_device: *device,
                ts_ms: *ts_ms,
                outgoing,
                kind,
                body: &text,
                file: file.as_ref(),
                status,
                client_id: None,
            })?;
            if let Some(h) = store.item(id)? {
                events.push(ClientEvent::Message(h));
            }
        }
        QueueItem::Receipt {
            conv,
            status,
            by,
            seqs,
            ..
        } => {
            store.apply_receipt(*conv, seqs, *status == ReceiptStatus::Read)?;
            events.push(ClientEvent::Receipt {
                conv: *conv,
                seqs: seqs.clone(),
                status: *status,
                by: *by,
            });
        }
        QueueItem::MissedCall {
            call_id,
            from,
            media,
            ts_ms,
        } => events.push(ClientEvent::MissedCall {
            call_id: call_id.clone(),
            from: *from,
            media: *media,
            ts_ms: *ts_ms,
        }),
        QueueItem::GroupNotice {
            group, by, change, ..
        } => {
            let (name, mut members) = store
                .group(*group)?
                .unwrap_or_else(|| (String::new(), Vec::new()));
            let mut name = name;
            let mut removed_me = false;
            match change {
                GroupChange::Created {
                    name: n,
                    members: m,
                } => {
                    name = n.clone();
                    members = m.clone();
                }
                GroupChange::Added { users } => {
                    for u in users {
                        if !members.contains(u) {
                            members.push(*u);
                        }
                    }
                }
                GroupChange::Removed { users } => {
                    members.retain(|m| !users.contains(m));
                    removed_me = users.contains(&me);
                    machine.rotate_group(*group);
                }
                GroupChange::Left { user } => {
                    members.retain(|m| m != user);
                    removed_me = *user == me;
                    machine.rotate_group(*group);
                }
                GroupChange::Renamed { name: n } => name = n.clone(),
                GroupChange::Promoted { .. } => {}
            }
            if removed_me {
                store.remove_group(*group)?;
            } else {
                store.set_group(*group, &name, &members)?;
            }
            events.push(ClientEvent::GroupChanged {
                group: *group,
                by: *by,
                change: change.clone(),
            });
        }
    }
    Ok(())
}

/// Keeps enough one-time prekeys on the server, and a fresh last-resort key.
pub(super) async fn top_up_keys(inner: Arc<Inner>, conn: Arc<Connection>) {
    let count = match conn.request(ClientFrame::KeysCount { id: 0 }).await {
        Ok(ServerFrame::KeyCount {
            one_time,
            identity_key,
            ..
        }) => (one_time, identity_key),
        _ => return,
    };
    let upload = {
        let mut st = inner.state.lock().unwrap();
        let force = !count.1 || st.machine.last_resort_used();
        if count.0 >= PREKEY_LOW_WATER && !force {
            return;
        }
        st.machine.keys_to_upload(count.0 as usize, force)
    };
    let Some(upload) = upload else { return };
    let frame = ClientFrame::KeysUpload {
        id: 0,
        identity_key: Some(upload.identity_key.clone()),
        signed_prekey: Some(upload.signed_prekey.clone()),
        one_time: upload.one_time.clone(),
        last_resort: upload.last_resort.clone(),
    };
    // Not published on failure: the same keys go out with the next attempt.
    if let Ok(ServerFrame::KeyCount { .. }) = conn.request(frame).await {
        let mut st = inner.state.lock().unwrap();
        st.machine.keys_published(&upload);
        if let Err(e) = st.save_crypto() {
            tracing_free_warn(&format!("saving keys: {e}"));
        }
    }
}
