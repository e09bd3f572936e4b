//! `kubevirt-rs update-vms`: after a package upgrade, moves every running VM onto a fresh
//! launcher (the launcher and QEMU binaries now on disk) by live migration, so no guest
//! reboots: upstream's workload updater, as a command. One
//! VirtualMachineInstanceMigration (`kubevirt-workload-update-*`) per VMI that is
//! `LiveMigratable`, at most `--parallel` at a time; VMIs that cannot migrate are listed
//! with the reason and left alone.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use kubevirt_api::v1::{
    vmi_condition, ConditionStatus, VirtualMachineInstance, VirtualMachineInstanceMigration,
    VirtualMachineInstanceMigrationPhase as Phase, VirtualMachineInstancePhase,
};

#[derive(clap::Args, Debug)]
pub struct UpdateArgs {
    /// Kubeconfig of the server (as `kubevirt-rs server` prints it).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: std::path::PathBuf,
    /// Migrations at once.
    #[arg(long, default_value_t = 2)]
    parallel: usize,
    /// Give up on one VM's migration after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

/// What became of one VMI.
enum Outcome {
    Moved,
    Failed(String),
    Skipped(String),
}

pub async fn run(args: UpdateArgs) -> anyhow::Result<()> {
    let client = crate::client_from(&args.kubeconfig).await?;
    let vmis: Api<VirtualMachineInstance> = Api::all(client.clone());
    let running: Vec<VirtualMachineInstance> = vmis
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|v| v.phase() == VirtualMachineInstancePhase::Running)
        .collect();
    let mut results: BTreeMap<String, Outcome> = BTreeMap::new();
    let mut queue = Vec::new();
    for vmi in running {
        let key = format!("{}/{}", vmi.namespace().unwrap_or_default(), vmi.name_any());
        match vmi
            .condition(vmi_condition::LIVE_MIGRATABLE)
            .filter(|c| c.status == ConditionStatus::True)
        {
            Some(_) => queue.push(vmi),
            None => {
                let why = vmi
                    .condition(vmi_condition::LIVE_MIGRATABLE)
                    .and_then(|c| c.message.clone())
                    .unwrap_or_else(|| "not known to be live-migratable".into());
                results.insert(key, Outcome::Skipped(why));
            }
        }
    }
    println!(
        "moving {} running VM(s) onto fresh launchers, {} at a time",
        queue.len(),
        args.parallel.max(1)
    );
    for batch in queue.chunks(args.parallel.max(1)) {
        let mut started = Vec::new();
        for vmi in batch {
            let key = format!("{}/{}", vmi.namespace().unwrap_or_default(), vmi.name_any());
            match start(&client, vmi).await {
                Ok(name) => started.push((key, vmi.namespace().unwrap_or_default(), name)),
                Err(e) => {
                    results.insert(key, Outcome::Failed(e.to_string()));
                }
            }
        }
        for (key, ns, name) in started {
            let outcome = wait(&client, &ns, &name, Duration::from_secs(args.timeout)).await;
            match &outcome {
                Outcome::Moved => println!("{key}: moved ({name})"),
                Outcome::Failed(why) => println!("{key}: migration {name} failed: {why}"),
                Outcome::Skipped(_) => {}
            }
            results.insert(key, outcome);
        }
    }
    let (mut moved, mut failed) = (0, 0);
    for (key, outcome) in &results {
        match outcome {
            Outcome::Moved => moved += 1,
            Outcome::Failed(_) => failed += 1,
            Outcome::Skipped(why) => println!("{key}: left where it is: {why}"),
        }
    }
    println!(
        "{moved} moved, {failed} failed, {} left alone",
        results.len() - moved - failed
    );
    if failed > 0 {
        anyhow::bail!("{failed} VM(s) could not be moved");
    }
    Ok(())
}

async fn start(client: &Client, vmi: &VirtualMachineInstance) -> anyhow::Result<String> {
    let api: Api<VirtualMachineInstanceMigration> =
        Api::namespaced(client.clone(), &vmi.namespace().unwrap_or_default());
    let m = kubevirt_api::migration::new_migration("kubevirt-workload-update-", &vmi.name_any());
    Ok(api.create(&PostParams::default(), &m).await?.name_any())
}

async fn wait(client: &Client, ns: &str, name: &str, timeout: Duration) -> Outcome {
    let api: Api<VirtualMachineInstanceMigration> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + timeout;
    loop {
        match api.get_opt(name).await {
            Ok(Some(m)) => {
                let status = m.status.unwrap_or_default();
                match status.phase.unwrap_or_default() {
                    Phase::Succeeded => return Outcome::Moved,
                    Phase::Failed => {
                        let why = status
                            .migration_state
                            .and_then(|s| s.failure_reason)
                            .unwrap_or_else(|| "see `kubectl describe vmim`".into());
                        return Outcome::Failed(why);
                    }
                    _ => {}
                }
            }
            Ok(None) => return Outcome::Failed("the migration was deleted".into()),
            Err(e) => return Outcome::Failed(e.to_string()),
        }
        if Instant::now() > deadline {
            return Outcome::Failed(format!("not done after {} s", timeout.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
