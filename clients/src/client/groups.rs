//! Groups: sending to them (text, files, call keys over the group's Megolm channel) and
//! managing them (create, info, add, remove, leave, list).

use super::*;

impl Client {
    /// Sends a text message to a group.
    pub async fn send_group_text(&self, group: GroupId, text: &str) -> Result<Sent, ClientError> {
        let content = Content::Text {
            text: text.to_owned(),
        };
        self.send_group_item(group, &content, ItemKind::Text, text, None)
            .await
    }

    /// Encrypts and uploads a file, and sends its key to a group.
    pub async fn send_group_file(
        &self,
        group: GroupId,
        path: &Path,
        progress: impl FnMut(u64, u64),
    ) -> Result<Sent, ClientError> {
        let file = self.upload_file(path, progress).await?;
        self.send_group_item(
            group,
            &file_content(&file),
            ItemKind::File,
            &file.name,
            Some(&file),
        )
        .await
    }

    /// Makes sure every member device of `group` (as `info` lists them) holds this device's
    /// current group session, sharing it over Olm with those that do not.
    async fn share_group_session(
        &self,
        group: GroupId,
        info: &GroupInfo,
    ) -> Result<(), ClientError> {
        let me = self.user();
        // Every member's devices must be known to share the session key with them.
        for m in info.members.iter().filter(|m| m.user != me) {
            self.claim_if_unknown(m.user).await?;
        }
        let share = {
            let mut st = self.inner.state.lock().unwrap();
            let mut devices = Vec::new();
            for m in &info.members {
                devices.extend(st.machine.peers_of(m.user).iter().map(|p| p.device));
            }
            let share = st.machine.prepare_group(group, &devices, now_ms());
            st.save_crypto()?;
            share
        };
        if let Some(share) = share {
            let key = Content::GroupKey {
                group,
                session_key: OpaqueBytes(share.session_key.clone()),
            };
            // One 1:1 message per member user carries the key to all their devices (and to
            // this user's other devices).
            let mut users: Vec<UserId> = info.members.iter().map(|m| m.user).collect();
            users.retain(|u| *u != me);
            if users.is_empty() {
                users.push(me);
            }
            for u in users {
                if let Err(e) = self.send_direct(u, &key, &random_id()).await {
                    // Someone may lack the key: start over with a new session next time.
                    self.inner.state.lock().unwrap().machine.rotate_group(group);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Sends a call key to `group`'s members over the group channel (Megolm), as no chat
    /// item. `departed`: users who left the call; if one of them is no longer a member, the
    /// group session is replaced first, so they cannot read this key.
    pub(crate) async fn send_call_key(
        &self,
        group: GroupId,
        call_id: &str,
        key: &CallKeyShare,
        departed: &[UserId],
    ) -> Result<(), ClientError> {
        let content = Content::CallKey {
            group,
            call_id: call_id.to_owned(),
            key: key.clone(),
        };
        // A membership change taken in meanwhile may end the session just shared (the sync
        // loop replaces it): share again, once.
        let mut attempt = 0;
        let body = loop {
            let info = self.group_info(group).await?;
            let _guard = self.inner.send_lock.lock().await;
            if departed
                .iter()
                .any(|u| !info.members.iter().any(|m| m.user == *u))
            {
                self.inner.state.lock().unwrap().machine.rotate_group(group);
            }
            self.share_group_session(group, &info).await?;
            match self.inner.state.lock().unwrap().seal_group(group, &content) {
                Ok(body) => break body,
                Err(e) if attempt > 0 => return Err(e),
                Err(_) => attempt += 1,
            }
        };
        let frame = ClientFrame::SendGroup {
            id: 0,
            client_id: random_id(),
            group,
            body: OpaqueBytes(body),
        };
        match self.request(frame).await? {
            ServerFrame::Sent { .. } => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    async fn send_group_item(
        &self,
        group: GroupId,
        content: &Content,
        kind: ItemKind,
        body: &str,
        file: Option<&FileRef>,
    ) -> Result<Sent, ClientError> {
        let info = self.group_info(group).await?;
        let _guard = self.inner.send_lock.lock().await;
        self.share_group_session(group, &info).await?;
        let me = self.user();
        let client_id = random_id();
        let (local, body_bytes) = {
            let mut st = self.inner.state.lock().unwrap();
            let bytes = st.seal_group(group, content)?;
            let local = st.store.add_item(NewItem {
                conv: Conv::Group(group),
                seq: None,
                sender: me,
                sender_device: self.device(),
                ts_ms: now_ms(),
                outgoing: true,
                kind,
                body,
                file,
                status: "sending",
                client_id: Some(&client_id),
            })?;
            (local, bytes)
        };
        let frame = ClientFrame::SendGroup {
            id: 0,
            client_id,
            group,
            body: OpaqueBytes(body_bytes),
        };
        match self.request(frame).await {
            Ok(ServerFrame::Sent { seq, ts_ms, .. }) => {
                self.inner
                    .state
                    .lock()
                    .unwrap()
                    .store
                    .mark_sent(local, seq, ts_ms)?;
                Ok(Sent {
                    id: local,
                    seq,
                    ts_ms,
                })
            }
            Ok(other) => Err(unexpected(&other)),
            Err(e) => {
                let _ = self.inner.state.lock().unwrap().store.mark_failed(local);
                Err(e)
            }
        }
    }

    async fn group_request(&self, frame: ClientFrame) -> Result<GroupInfo, ClientError> {
        match self.request(frame).await? {
            ServerFrame::Group { group, .. } => {
                let members: Vec<UserId> = group.members.iter().map(|m| m.user).collect();
                self.inner.state.lock().unwrap().store.set_group(
                    group.group,
                    &group.name,
                    &members,
                )?;
                Ok(group)
            }
            other => Err(unexpected(&other)),
        }
    }

    pub async fn create_group(
        &self,
        name: &str,
        members: &[UserId],
    ) -> Result<GroupInfo, ClientError> {
        self.group_request(ClientFrame::GroupCreate {
            id: 0,
            name: name.to_owned(),
            members: members.to_vec(),
        })
        .await
    }

    pub async fn group_info(&self, group: GroupId) -> Result<GroupInfo, ClientError> {
        self.group_request(ClientFrame::GroupInfo { id: 0, group })
            .await
    }

    pub async fn add_members(
        &self,
        group: GroupId,
        users: &[UserId],
    ) -> Result<GroupInfo, ClientError> {
        self.group_request(ClientFrame::GroupAdd {
            id: 0,
            group,
            users: users.to_vec(),
        })
        .await
    }

    /// Removes members; this device's group session is replaced so they cannot read what
    /// follows.
    pub async fn remove_members(
        &self,
        group: GroupId,
        users: &[UserId],
    ) -> Result<GroupInfo, ClientError> {
        let info = self
            .group_request(ClientFrame::GroupRemove {
                id: 0,
                group,
                users: users.to_vec(),
            })
            .await?;
        self.inner.state.lock().unwrap().machine.rotate_group(group);
        Ok(info)
    }

    pub async fn leave_group(&self, group: GroupId) -> Result<(), ClientError> {
        match self
            .request(ClientFrame::GroupLeave { id: 0, group })
            .await?
        {
            ServerFrame::Ok { .. } => {
                let mut st = self.inner.state.lock().unwrap();
                st.machine.rotate_group(group);
                st.store.remove_group(group)
            }
            other => Err(unexpected(&other)),
        }
    }

    pub fn groups(&self) -> Result<Vec<(GroupId, String, Vec<UserId>)>, ClientError> {
        self.inner.state.lock().unwrap().store.groups()
    }
}
