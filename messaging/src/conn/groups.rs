//! Groups: creation, membership, names.

use natter_signaling::{ClientFrame, ProtocolError, ServerFrame};

use super::Conn;
use crate::store::now_ms;

/// `group_add` costs one more token of `group_change` per this many users added: each
/// added user means a notice to every member device and a membership row.
const ADDED_USERS_PER_TOKEN: usize = 64;

impl Conn {
    pub(super) fn groups(&mut self, frame: ClientFrame) -> Result<(), ProtocolError> {
        let user = self.auth.user;
        let st = self.st.clone();
        let change = &st.limits.group_change;
        match frame {
            // Limit: `group_create`, and `max_groups_per_hour` checked in storage. Cost: a
            // storage job with one notice per member device.
            ClientFrame::GroupCreate { id, name, members } => {
                self.limit(&st.limits.group_create, 1.0)?;
                self.submit(
                    id,
                    move |core| core.create_group(user, &name, &members, now_ms()),
                    move |group| Some(ServerFrame::Group { id, group }),
                )
            }
            // Limit: `group_change`, 1 + 1 per 64 users. Cost: notices to every member device.
            ClientFrame::GroupAdd { id, group, users } => {
                self.limit(change, 1.0 + (users.len() / ADDED_USERS_PER_TOKEN) as f64)?;
                self.submit(
                    id,
                    move |core| core.add_members(user, group, &users, now_ms()),
                    move |group| Some(ServerFrame::Group { id, group }),
                )
            }
            // Limit: `group_change`. Cost: notices to every member device.
            // Removed users' devices also leave the group's call.
            ClientFrame::GroupRemove { id, group, users } => {
                self.limit(change, 1.0)?;
                let gone = users.clone();
                let st = st.clone();
                self.submit(
                    id,
                    move |core| core.remove_members(user, group, &users, now_ms()),
                    move |info| {
                        st.rooms.members_removed(&st, group, &gone);
                        Some(ServerFrame::Group { id, group: info })
                    },
                )
            }
            ClientFrame::GroupPromote {
                id,
                group,
                user: target,
            } => {
                self.limit(change, 1.0)?;
                self.submit(
                    id,
                    move |core| core.promote(user, group, target, now_ms()),
                    move |group| Some(ServerFrame::Group { id, group }),
                )
            }
            ClientFrame::GroupLeave { id, group } => {
                self.limit(change, 1.0)?;
                let st = st.clone();
                self.submit(
                    id,
                    move |core| core.leave(user, group, now_ms()),
                    move |()| {
                        st.rooms.members_removed(&st, group, &[user]);
                        Some(ServerFrame::Ok { id })
                    },
                )
            }
            ClientFrame::GroupRename { id, group, name } => {
                self.limit(change, 1.0)?;
                self.submit(
                    id,
                    move |core| core.rename(user, group, &name, now_ms()),
                    move |group| Some(ServerFrame::Group { id, group }),
                )
            }
            // Limit: `group_info`. Cost: a storage read.
            ClientFrame::GroupInfo { id, group } => {
                self.limit(&st.limits.group_info, 1.0)?;
                self.submit(
                    id,
                    move |core| core.info(user, group),
                    move |group| Some(ServerFrame::Group { id, group }),
                )
            }
            other => Err(ProtocolError::internal(format!(
                "{} is not a group frame",
                other.type_name()
            ))),
        }
    }
}
