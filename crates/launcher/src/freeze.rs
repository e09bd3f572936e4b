//! Filesystem freeze for snapshots, through the guest agent (`guest-fsfreeze-*`).
//!
//! A freeze that nobody undoes would leave the guest unable to write, so every freeze arms
//! a thaw of its own: if no freeze or unfreeze came by the deadline, the launcher thaws.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::FS_FROZEN;
use crate::vm::{Vm, VmError};

/// When the caller names no deadline (upstream's default as well).
pub const DEFAULT_UNFREEZE_TIMEOUT: Duration = Duration::from_secs(300);

/// Freezing flushes every filesystem first: it can take a while on a busy guest.
const FREEZE_CALL_TIMEOUT: Duration = Duration::from_secs(60);

impl Vm {
    /// Freezes the guest's filesystems; they are thawed after `unfreeze_timeout` (default
    /// [`DEFAULT_UNFREEZE_TIMEOUT`]) unless [`Vm::unfreeze`] or another freeze came first.
    /// Freezing a frozen guest only re-arms the deadline.
    pub async fn freeze(
        self: &Arc<Self>,
        unfreeze_timeout: Option<Duration>,
    ) -> Result<(), VmError> {
        self.require_live("freeze")?;
        let st = self.status.get();
        if !st.agent_connected {
            return Err(VmError::AgentNotConnected);
        }
        if st.fs_freeze_status.as_deref() != Some(FS_FROZEN) {
            let frozen = self
                .agent_within("guest-fsfreeze-freeze", None, FREEZE_CALL_TIMEOUT)
                .await?;
            tracing::info!(filesystems = %frozen, "guest filesystems frozen");
        }
        let generation = self.freeze_generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.status
            .update(|s| s.fs_freeze_status = Some(FS_FROZEN.to_string()));
        let timeout = unfreeze_timeout.unwrap_or(DEFAULT_UNFREEZE_TIMEOUT);
        let vm = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            if vm.freeze_generation.load(Ordering::SeqCst) != generation {
                return;
            }
            tracing::warn!(
                seconds = timeout.as_secs(),
                "no unfreeze came in time; thawing the guest"
            );
            if let Err(error) = vm.unfreeze().await {
                tracing::error!(%error, "automatic thaw failed");
            }
        });
        Ok(())
    }

    /// Thaws the guest's filesystems (a guest that is not frozen is fine).
    pub async fn unfreeze(self: &Arc<Self>) -> Result<(), VmError> {
        self.require_live("unfreeze")?;
        self.freeze_generation.fetch_add(1, Ordering::SeqCst);
        let st = self.status.get();
        let frozen = st.fs_freeze_status.as_deref() == Some(FS_FROZEN);
        if !st.agent_connected {
            return if frozen {
                Err(VmError::AgentNotConnected)
            } else {
                Ok(())
            };
        }
        self.agent("guest-fsfreeze-thaw", None).await?;
        self.status.update(|s| s.fs_freeze_status = None);
        if frozen {
            tracing::info!("guest filesystems thawed");
        }
        Ok(())
    }
}
