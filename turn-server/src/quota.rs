//! Allocations per user at once, counted for the `user_quota` check. The table holds one
//! entry per user with a live allocation, so it is bounded by the allocation count.

use std::collections::HashMap;

/// Whose quota an allocation counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Owner {
    /// A static long-term user, by name.
    Static(String),
    /// A REST user: the part of `expiry:user` after the first `:` (`""` when there is
    /// none). Not the whole username: the expiry changes with every credential minted, and
    /// a quota keyed on it would grow by one per credential.
    Rest(String),
}

impl Owner {
    pub(crate) fn rest(username: &str) -> Owner {
        Owner::Rest(username.split_once(':').map_or("", |(_, u)| u).to_owned())
    }
}

#[derive(Default)]
pub(crate) struct UserQuotas {
    per_user: HashMap<Owner, usize>,
}

impl UserQuotas {
    /// Allocations `user` holds now.
    pub(crate) fn count(&self, user: &Owner) -> usize {
        self.per_user.get(user).copied().unwrap_or(0)
    }

    pub(crate) fn add(&mut self, user: &Owner) {
        *self.per_user.entry(user.clone()).or_default() += 1;
    }

    pub(crate) fn release(&mut self, user: &Owner) {
        if let Some(n) = self.per_user.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_owners_are_the_user_part() {
        assert_eq!(Owner::rest("1800000000:bob"), Owner::Rest("bob".into()));
        assert_eq!(Owner::rest("1800000060:bob"), Owner::Rest("bob".into()));
        assert_eq!(Owner::rest("1800000000:a:b"), Owner::Rest("a:b".into()));
        assert_eq!(Owner::rest("1800000000"), Owner::Rest(String::new()));
        assert_ne!(Owner::rest("1:alice"), Owner::Static("alice".into()));
    }
}
