//! `virtctl migrate` and `virtctl migrate-cancel`, as upstream: a migration is requested
//! through the VM's `migrate` subresource (the API creates the
//! VirtualMachineInstanceMigration) and cancelled by deleting the VMI's unfinished one.

use std::collections::BTreeMap;

use kube::api::{DeleteParams, ListParams};
use kube::Api;
use kubevirt_api::migration::{MigrateOptions, VMI_NAME_LABEL};
use kubevirt_api::v1::VirtualMachineInstanceMigration;

use crate::client::Session;

#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    pub vm: String,
    /// Only check the request; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Node labels the target node must also have (key=value, repeatable or comma-separated).
    #[arg(long = "addedNodeSelector", value_delimiter = ',')]
    pub added_node_selector: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct MigrateCancelArgs {
    pub vm: String,
    #[arg(long)]
    pub dry_run: bool,
}

fn dry_run(on: bool) -> Option<Vec<String>> {
    on.then(|| vec!["All".to_string()])
}

fn node_selector(pairs: &[String]) -> anyhow::Result<Option<BTreeMap<String, String>>> {
    if pairs.is_empty() {
        return Ok(None);
    }
    let mut out = BTreeMap::new();
    for p in pairs {
        let (k, v) = p.split_once('=').ok_or_else(|| {
            anyhow::anyhow!("invalid --addedNodeSelector {p:?}: expected key=value")
        })?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(Some(out))
}

pub async fn migrate(s: &Session, args: &MigrateArgs) -> anyhow::Result<()> {
    let body = MigrateOptions {
        dry_run: dry_run(args.dry_run),
        added_node_selector: node_selector(&args.added_node_selector)?,
    };
    s.vm_action(&args.vm, "migrate", serde_json::to_value(&body)?)
        .await
        .map_err(|e| e.context("Error migrating VirtualMachine"))?;
    println!("VM {} was scheduled to migrate", args.vm);
    Ok(())
}

pub async fn cancel(s: &Session, args: &MigrateCancelArgs) -> anyhow::Result<()> {
    let api: Api<VirtualMachineInstanceMigration> = Api::namespaced(s.client.clone(), &s.namespace);
    let list = api
        .list(&ListParams::default().labels(&format!("{VMI_NAME_LABEL}={}", args.vm)))
        .await
        .map_err(|e| {
            anyhow::anyhow!("Error fetching virtual machine instance migration list  {e}")
        })?;
    let active = list.items.into_iter().find(|m| {
        !m.status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or_default()
            .is_final()
    });
    let Some(m) = active else {
        anyhow::bail!("Found no migration to cancel for {}", args.vm);
    };
    let name = m.metadata.name.clone().unwrap_or_default();
    let params = DeleteParams {
        dry_run: args.dry_run,
        ..Default::default()
    };
    api.delete(&name, &params).await.map_err(|e| {
        anyhow::anyhow!(
            "Error canceling migration {name} of a VirtualMachine {}: {e}",
            args.vm
        )
    })?;
    println!("VM {} was scheduled to migrate-cancel", args.vm);
    Ok(())
}
