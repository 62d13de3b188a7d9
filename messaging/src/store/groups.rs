//! Groups: membership, admins, names. Every change reaches every member device (and removed
//! or departing members) as a `group_notice` queue item ordered among the group's messages.

use std::sync::Arc;

use natter_signaling::{
    ErrorCode, GroupChange, GroupId, GroupInfo, GroupMember, ProtocolError, QueueItem, UserId,
    check_name,
};
use rusqlite::params;

use super::{ConvKey, Core, sql_err};

impl Core {
    /// Members of `group`, oldest first; `None` if the group does not exist.
    pub(crate) fn members(
        &mut self,
        group: GroupId,
    ) -> Result<Option<Arc<[GroupMember]>>, ProtocolError> {
        if let Some(m) = self.group_members.get(&group) {
            return Ok(Some(m.clone()));
        }
        let exists = self
            .db()
            .prepare_cached("SELECT 1 FROM groups WHERE id = ?1")
            .and_then(|mut s| s.exists([group.0 as i64]))
            .map_err(sql_err)?;
        if !exists {
            return Ok(None);
        }
        let list: Vec<GroupMember> = self
            .db()
            .prepare_cached(
                "SELECT user, admin FROM group_members WHERE grp = ?1 ORDER BY joined_ms, user",
            )
            .and_then(|mut s| {
                s.query_map([group.0 as i64], |r| {
                    Ok(GroupMember {
                        user: UserId(r.get::<_, i64>(0)? as u64),
                        admin: r.get(1)?,
                    })
                })?
                .collect()
            })
            .map_err(sql_err)?;
        let list: Arc<[GroupMember]> = list.into();
        self.group_members.insert(group, list.clone());
        Ok(Some(list))
    }

    /// The members of `group`, provided `user` is one of them.
    pub(crate) fn require_member(
        &mut self,
        group: GroupId,
        user: UserId,
    ) -> Result<Arc<[GroupMember]>, ProtocolError> {
        let members = self
            .members(group)?
            .ok_or_else(|| ProtocolError::not_found(format!("no group {group}")))?;
        if !members.iter().any(|m| m.user == user) {
            return Err(ProtocolError::forbidden(format!(
                "you are not a member of {group}"
            )));
        }
        Ok(members)
    }

    fn require_admin(
        &mut self,
        group: GroupId,
        user: UserId,
    ) -> Result<Arc<[GroupMember]>, ProtocolError> {
        let members = self.require_member(group, user)?;
        if !members.iter().any(|m| m.user == user && m.admin) {
            return Err(ProtocolError::forbidden(format!(
                "only admins of {group} can do that"
            )));
        }
        Ok(members)
    }

    fn check_users_exist(&mut self, users: &[UserId]) -> Result<(), ProtocolError> {
        for u in users {
            if !self.user_exists(*u)? {
                return Err(ProtocolError::not_found(format!("no user {u}")));
            }
        }
        Ok(())
    }

    fn check_size(&self, n: usize) -> Result<(), ProtocolError> {
        let max = self.cfg.max_group_members as usize;
        if n > max {
            return Err(ProtocolError::new(
                ErrorCode::LimitExceeded,
                format!("a group has at most {max} members; this would make {n}"),
            ));
        }
        Ok(())
    }

    fn group_info(&mut self, group: GroupId) -> Result<GroupInfo, ProtocolError> {
        let name: String = self
            .db()
            .query_row(
                "SELECT name FROM groups WHERE id = ?1",
                [group.0 as i64],
                |r| r.get(0),
            )
            .map_err(sql_err)?;
        let members = self
            .members(group)?
            .ok_or_else(|| ProtocolError::not_found(format!("no group {group}")))?;
        Ok(GroupInfo {
            group,
            name,
            members: members.to_vec(),
        })
    }

    /// Queues a notice of `change` for every device of `recipients`.
    fn notify(
        &mut self,
        group: GroupId,
        by: UserId,
        change: GroupChange,
        recipients: &[UserId],
        now: u64,
    ) -> Result<(), ProtocolError> {
        let seq = self.take_conv_seq(ConvKey::Group(group))?;
        let item = QueueItem::GroupNotice {
            group,
            seq,
            by,
            change,
            ts_ms: now,
        };
        for u in recipients {
            self.enqueue_to_user(*u, None, item.clone(), now)?;
        }
        Ok(())
    }

    fn insert_member(
        &mut self,
        group: GroupId,
        user: UserId,
        admin: bool,
        now: u64,
    ) -> Result<(), ProtocolError> {
        self.db()
            .prepare_cached(
                "INSERT INTO group_members(grp, user, admin, joined_ms) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| s.execute(params![group.0 as i64, user.0 as i64, admin, now as i64]))
            .map_err(sql_err)?;
        Ok(())
    }

    /// At most `max_groups_per_hour` groups by one creator in any hour: each one drops a
    /// notice into every member's queue, members who never agreed to be there.
    fn check_groups_per_hour(&mut self, creator: UserId, now: u64) -> Result<(), ProtocolError> {
        const HOUR_MS: u64 = 3_600_000;
        let since = now.saturating_sub(HOUR_MS);
        let (count, oldest): (i64, Option<i64>) = self
            .db()
            .query_row(
                "SELECT COUNT(*), MIN(created_ms) FROM groups WHERE created_by = ?1 AND created_ms > ?2",
                params![creator.0 as i64, since as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(sql_err)?;
        if count as u64 >= u64::from(self.cfg.max_groups_per_hour) {
            let wait = (oldest.unwrap_or(now as i64) as u64 + HOUR_MS).saturating_sub(now);
            return Err(ProtocolError {
                message: format!(
                    "at most {} new groups per hour; retry in {} s",
                    self.cfg.max_groups_per_hour,
                    wait.div_ceil(1000)
                ),
                ..ProtocolError::rate_limited(wait)
            });
        }
        Ok(())
    }

    /// Creates a group with `creator` as its admin.
    pub fn create_group(
        &mut self,
        creator: UserId,
        name: &str,
        members: &[UserId],
        now: u64,
    ) -> Result<GroupInfo, ProtocolError> {
        check_name(name)?;
        let mut all: Vec<UserId> = vec![creator];
        for m in members {
            if !all.contains(m) {
                all.push(*m);
            }
        }
        self.check_size(all.len())?;
        self.check_users_exist(&all)?;
        self.check_groups_per_hour(creator, now)?;
        self.db()
            .execute(
                "INSERT INTO groups(name, created_by, created_ms, next_seq) VALUES (?1, ?2, ?3, 1)",
                params![name, creator.0 as i64, now as i64],
            )
            .map_err(sql_err)?;
        let group = GroupId(self.db().last_insert_rowid() as u64);
        for u in &all {
            self.insert_member(group, *u, *u == creator, now)?;
        }
        self.group_members.remove(&group);
        let change = GroupChange::Created {
            name: name.to_owned(),
            members: all.clone(),
        };
        self.notify(group, creator, change, &all, now)?;
        self.group_info(group)
    }

    pub fn add_members(
        &mut self,
        actor: UserId,
        group: GroupId,
        users: &[UserId],
        now: u64,
    ) -> Result<GroupInfo, ProtocolError> {
        let members = self.require_admin(group, actor)?;
        let mut new: Vec<UserId> = Vec::new();
        for u in users {
            if members.iter().any(|m| m.user == *u) {
                return Err(ProtocolError::invalid(format!(
                    "{u} is already a member of {group}"
                )));
            }
            if !new.contains(u) {
                new.push(*u);
            }
        }
        self.check_size(members.len() + new.len())?;
        self.check_users_exist(&new)?;
        for u in &new {
            self.insert_member(group, *u, false, now)?;
        }
        self.group_members.remove(&group);
        let recipients: Vec<UserId> = members
            .iter()
            .map(|m| m.user)
            .chain(new.iter().copied())
            .collect();
        self.notify(
            group,
            actor,
            GroupChange::Added { users: new },
            &recipients,
            now,
        )?;
        self.group_info(group)
    }

    pub fn remove_members(
        &mut self,
        actor: UserId,
        group: GroupId,
        users: &[UserId],
        now: u64,
    ) -> Result<GroupInfo, ProtocolError> {
        let members = self.require_admin(group, actor)?;
        let mut gone: Vec<UserId> = Vec::new();
        for u in users {
            if *u == actor {
                return Err(ProtocolError::invalid("use group_leave to leave a group"));
            }
            if !members.iter().any(|m| m.user == *u) {
                return Err(ProtocolError::not_found(format!(
                    "{u} is not a member of {group}"
                )));
            }
            if !gone.contains(u) {
                gone.push(*u);
            }
        }
        for u in &gone {
            self.db()
                .execute(
                    "DELETE FROM group_members WHERE grp = ?1 AND user = ?2",
                    params![group.0 as i64, u.0 as i64],
                )
                .map_err(sql_err)?;
        }
        self.group_members.remove(&group);
        // The removed members hear of it too, so their clients stop showing the group as theirs.
        let recipients: Vec<UserId> = members.iter().map(|m| m.user).collect();
        self.notify(
            group,
            actor,
            GroupChange::Removed { users: gone },
            &recipients,
            now,
        )?;
        self.group_info(group)
    }

    pub fn promote(
        &mut self,
        actor: UserId,
        group: GroupId,
        user: UserId,
        now: u64,
    ) -> Result<GroupInfo, ProtocolError> {
        let members = self.require_admin(group, actor)?;
        match members.iter().find(|m| m.user == user) {
            None => {
                return Err(ProtocolError::not_found(format!(
                    "{user} is not a member of {group}"
                )));
            }
            Some(m) if m.admin => {
                return Err(ProtocolError::invalid(format!(
                    "{user} is already an admin"
                )));
            }
            Some(_) => {}
        }
        self.set_admin(group, user)?;
        let recipients: Vec<UserId> = members.iter().map(|m| m.user).collect();
        self.notify(
            group,
            actor,
            GroupChange::Promoted { users: vec![user] },
            &recipients,
            now,
        )?;
        self.group_info(group)
    }

    fn set_admin(&mut self, group: GroupId, user: UserId) -> Result<(), ProtocolError> {
        self.db()
            .execute(
                "UPDATE group_members SET admin = 1 WHERE grp = ?1 AND user = ?2",
                params![group.0 as i64, user.0 as i64],
            )
            .map_err(sql_err)?;
        self.group_members.remove(&group);
        Ok(())
    }

    /// `user` leaves. If no admin would remain, the longest-standing member becomes one.
    pub fn leave(&mut self, user: UserId, group: GroupId, now: u64) -> Result<(), ProtocolError> {
        let members = self.require_member(group, user)?;
        self.db()
            .execute(
                "DELETE FROM group_members WHERE grp = ?1 AND user = ?2",
                params![group.0 as i64, user.0 as i64],
            )
            .map_err(sql_err)?;
        self.group_members.remove(&group);
        let recipients: Vec<UserId> = members.iter().map(|m| m.user).collect();
        self.notify(group, user, GroupChange::Left { user }, &recipients, now)?;
        let rest: Vec<&GroupMember> = members.iter().filter(|m| m.user != user).collect();
        if !rest.is_empty() && !rest.iter().any(|m| m.admin) {
            let heir = rest[0].user;
            self.set_admin(group, heir)?;
            let remaining: Vec<UserId> = rest.iter().map(|m| m.user).collect();
            self.notify(
                group,
                user,
                GroupChange::Promoted { users: vec![heir] },
                &remaining,
                now,
            )?;
        }
        Ok(())
    }

    pub fn rename(
        &mut self,
        actor: UserId,
        group: GroupId,
        name: &str,
        now: u64,
    ) -> Result<GroupInfo, ProtocolError> {
        check_name(name)?;
        let members = self.require_admin(group, actor)?;
        self.db()
            .execute(
                "UPDATE groups SET name = ?2 WHERE id = ?1",
                params![group.0 as i64, name],
            )
            .map_err(sql_err)?;
        let recipients: Vec<UserId> = members.iter().map(|m| m.user).collect();
        self.notify(
            group,
            actor,
            GroupChange::Renamed {
                name: name.to_owned(),
            },
            &recipients,
            now,
        )?;
        self.group_info(group)
    }

    /// The group as a member sees it.
    pub fn info(&mut self, user: UserId, group: GroupId) -> Result<GroupInfo, ProtocolError> {
        self.require_member(group, user)?;
        self.group_info(group)
    }
}
