//! The node's VM metrics (upstream virt-handler's `kubevirt_vmi_*` domain families): at
//! each scrape, every Running VMI of this node is asked for its counters through its
//! launcher, all at once, each within [`STATS_TIMEOUT`]. A launcher that does not answer
//! in time leaves its VMI out of that scrape rather than holding up the others.

use std::time::Duration;

use kube::ResourceExt;
use kubevirt_api::v1::well_known::NODE_NAME_LABEL;
use kubevirt_api::v1::{VirtualMachineInstance, VirtualMachineInstancePhase};
use kubevirt_metrics::Families;

use crate::launchers::Launchers;

/// How long one launcher may take to report its counters.
pub const STATS_TIMEOUT: Duration = Duration::from_secs(3);

/// The domain metrics of every Running VMI of `vmis` on `node`.
pub async fn collect(
    vmis: &[VirtualMachineInstance],
    node: &str,
    launchers: &Launchers,
) -> Families {
    let running = vmis.iter().filter(|vmi| {
        vmi.labels().get(NODE_NAME_LABEL).map(String::as_str) == Some(node)
            && vmi.status.as_ref().and_then(|s| s.phase)
                == Some(VirtualMachineInstancePhase::Running)
    });
    let reports = running.filter_map(|vmi| {
        let launcher = launchers.guest(vmi)?;
        Some(async move {
            match tokio::time::timeout(STATS_TIMEOUT, launcher.client.stats()).await {
                Ok(Ok(stats)) => Some((vmi, stats)),
                Ok(Err(error)) => {
                    tracing::debug!(vmi = ?vmi.metadata.name, %error, "no counters for metrics");
                    None
                }
                Err(_) => {
                    tracing::warn!(vmi = ?vmi.metadata.name, "the launcher did not report its counters in time");
                    None
                }
            }
        })
    });
    let mut families = Families::default();
    for (vmi, stats) in futures::future::join_all(reports)
        .await
        .into_iter()
        .flatten()
    {
        kubevirt_metrics::domain::collect(&mut families, vmi, &stats);
    }
    families
}
