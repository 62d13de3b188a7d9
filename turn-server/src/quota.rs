//! Allocations per user at once, counted for the `user_quota` check. The table holds one
//! entry per user with a live allocation, so it is bounded by the allocation count.

use std::collections::HashMap;

#[derive(Default)]
pub(crate) struct UserQuotas {
    per_user: HashMap<String, usize>,
}

impl UserQuotas {
    /// Allocations `user` holds now.
    pub(crate) fn count(&self, user: &str) -> usize {
        self.per_user.get(user).copied().unwrap_or(0)
    }

    pub(crate) fn add(&mut self, user: &str) {
        *self.per_user.entry(user.to_owned()).or_default() += 1;
    }

    pub(crate) fn release(&mut self, user: &str) {
        if let Some(n) = self.per_user.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(user);
            }
        }
    }
}
