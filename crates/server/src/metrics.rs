//! What the embedded server's `/metrics` adds to the API server's own: the node's VM
//! metrics (virt-handler's part, [`kubevirt_handler::metrics`]) and the VM and VMI
//! object metrics (virt-controller's part, [`kubevirt_metrics::objects`]), gathered when
//! scraped from the API and the launchers.

use std::sync::{Arc, OnceLock};

use futures::future::BoxFuture;
use kube::api::{Api, ListParams};
use kube::Client;
use kubevirt_api::v1::{VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration};
use kubevirt_handler::launchers::Launchers;
use kubevirt_metrics::Families;
use prometheus_client::collector::Collector;

/// The embedded server's metrics source; serves nothing until it has a client.
pub struct EmbeddedMetrics {
    client: OnceLock<Client>,
    node: String,
    launchers: Arc<Launchers>,
}

impl EmbeddedMetrics {
    pub fn new(node: String, launchers: Arc<Launchers>) -> Self {
        EmbeddedMetrics {
            client: OnceLock::new(),
            node,
            launchers,
        }
    }

    pub fn set_client(&self, client: Client) {
        let _ = self.client.set(client);
    }

    async fn families(&self) -> Families {
        let Some(client) = self.client.get() else {
            return Families::default();
        };
        let vms: Api<VirtualMachine> = Api::all(client.clone());
        let vmis: Api<VirtualMachineInstance> = Api::all(client.clone());
        let migrations: Api<VirtualMachineInstanceMigration> = Api::all(client.clone());
        let lp = ListParams::default();
        let (vms, vmis, migrations) =
            futures::join!(vms.list(&lp), vmis.list(&lp), migrations.list(&lp));
        let vmis = match vmis {
            Ok(l) => l.items,
            Err(error) => {
                tracing::warn!(%error, "listing VMIs for metrics");
                return Families::default();
            }
        };
        // One list of the VMIs serves both parts.
        let mut families =
            kubevirt_handler::metrics::collect(&vmis, &self.node, &self.launchers).await;
        match (vms, migrations) {
            (Ok(vms), Ok(migrations)) => kubevirt_metrics::objects::collect(
                &mut families,
                &vms.items,
                &vmis,
                &migrations.items,
            ),
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!(%error, "listing VMs and migrations for metrics")
            }
        }
        families
    }
}

impl kubevirt_apiserver::metrics::Source for EmbeddedMetrics {
    fn gather(&self) -> BoxFuture<'_, Box<dyn Collector>> {
        Box::pin(async move { Box::new(self.families().await) as Box<dyn Collector> })
    }
}
