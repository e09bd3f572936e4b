//! The launcher's status, in one place: every change goes through [`StatusCell::update`],
//! which bumps the revision and wakes every `GET /v1/watch` stream (the node agent learns of
//! a change as it happens instead of polling).

use tokio::sync::watch;

use crate::protocol::LauncherStatus;

/// Shared, watchable [`LauncherStatus`].
pub struct StatusCell {
    tx: watch::Sender<LauncherStatus>,
}

impl StatusCell {
    pub fn new(initial: LauncherStatus) -> Self {
        StatusCell {
            tx: watch::Sender::new(initial),
        }
    }

    /// The current status.
    pub fn get(&self) -> LauncherStatus {
        self.tx.borrow().clone()
    }

    /// Applies `f`; watchers hear of it only if something changed.
    pub fn update(&self, f: impl FnOnce(&mut LauncherStatus)) {
        self.tx.send_if_modified(|s| {
            let before = s.clone();
            f(s);
            if *s == before {
                return false;
            }
            s.revision = before.revision + 1;
            true
        });
    }

    /// A receiver that sees the current status and every later one.
    pub fn subscribe(&self) -> watch::Receiver<LauncherStatus> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Stage;

    #[test]
    fn only_real_changes_bump_the_revision() {
        let cell = StatusCell::new(LauncherStatus::new(None));
        let mut rx = cell.subscribe();
        rx.mark_unchanged();
        cell.update(|s| s.agent_connected = false);
        assert!(!rx.has_changed().unwrap());
        cell.update(|s| s.stage = Stage::Preparing);
        assert!(rx.has_changed().unwrap());
        assert_eq!(cell.get().revision, 1);
    }
}
