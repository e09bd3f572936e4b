//! `virtctl create vm`: prints a VirtualMachine manifest as upstream's command does.

use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kubevirt_api::v1::{
    CloudInitSource, ContainerDiskSource, Devices, Disk, DomainSpec, InstancetypeMatcher, Memory,
    PersistentVolumeClaimVolumeSource, PreferenceMatcher, ResourceRequirements, RunStrategy,
    VirtualMachine, VirtualMachineInstanceSpec, VirtualMachineInstanceTemplateSpec,
    VirtualMachineSpec, Volume,
};
use kubevirt_api::Quantity;
use serde_json::{json, Map, Value};

#[derive(Subcommand, Debug)]
pub enum CreateCmd {
    /// Create a VirtualMachine manifest.
    Vm(VmArgs),
}

#[derive(Args, Debug)]
pub struct VmArgs {
    /// Name of the VM (random when omitted).
    #[arg(long)]
    name: Option<String>,
    /// RunStrategy of the VM.
    #[arg(long, default_value = "Always", value_parser = ["Always", "Manual", "Halted", "Once", "RerunOnFailure"])]
    run_strategy: String,
    /// Termination grace period of the VM in seconds.
    #[arg(long, default_value_t = 180)]
    termination_grace_period: i64,
    /// Instancetype, as `name` or `kind/name` (kind: virtualmachineinstancetype or
    /// virtualmachineclusterinstancetype).
    #[arg(long)]
    instancetype: Option<String>,
    /// Preference, as `name` or `kind/name`.
    #[arg(long)]
    preference: Option<String>,
    /// Guest memory when no instancetype is given.
    #[arg(long)]
    memory: Option<String>,
    /// A containerdisk volume: `src:IMAGE[,name:NAME][,bootorder:N]` (repeatable).
    #[arg(long)]
    volume_containerdisk: Vec<String>,
    /// A PVC volume: `src:CLAIM[,name:NAME][,bootorder:N]` (repeatable).
    #[arg(long)]
    volume_pvc: Vec<String>,
    /// Base64 encoded cloud-init user data (NoCloud).
    #[arg(long)]
    cloud_init_user_data: Option<String>,
}

/// Parses `key:value,key:value` volume parameters.
pub fn parse_params(flag: &str, raw: &str) -> Result<Map<String, Value>> {
    let mut m = Map::new();
    for part in raw.split(',') {
        let (k, v) = part.split_once(':').ok_or_else(|| {
            anyhow!(
                "failed to parse \"--{flag}\" flag: params need to have at least one colon: {part}"
            )
        })?;
        if !["src", "name", "bootorder"].contains(&k) {
            bail!("failed to parse \"--{flag}\" flag: unknown param(s): {k}:{v}");
        }
        m.insert(k.to_string(), Value::String(v.to_string()));
    }
    if !m.contains_key("src") {
        bail!("failed to parse \"--{flag}\" flag: src must be specified");
    }
    Ok(m)
}

fn matcher(raw: &str, default_kind: &str) -> (String, String) {
    match raw.split_once('/') {
        Some((kind, name)) => (kind.to_string(), name.to_string()),
        None => (default_kind.to_string(), raw.to_string()),
    }
}

fn random_suffix() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// The VirtualMachine the flags describe (typed), e.g. for `kubectl apply`.
pub fn vm_from_args(a: &VmArgs) -> Result<VirtualMachine> {
    let name = a
        .name
        .clone()
        .unwrap_or_else(|| format!("vm-{}", random_suffix()));
    let mut volumes = Vec::new();
    let mut disks = Vec::new();
    let mut add = |flag: &str, raw: &str, index: usize, kind: &str| -> Result<()> {
        let p = parse_params(flag, raw)?;
        let src = p["src"].as_str().unwrap_or_default().to_string();
        let vol_name = p
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("{name}-{kind}-{index}"));
        let mut volume = Volume {
            name: vol_name.clone(),
            ..Default::default()
        };
        if kind == "containerdisk" {
            volume.container_disk = Some(ContainerDiskSource {
                image: src,
                ..Default::default()
            });
        } else {
            volume.persistent_volume_claim = Some(PersistentVolumeClaimVolumeSource {
                claim_name: src,
                ..Default::default()
            });
        }
        volumes.push(volume);
        if let Some(order) = p.get("bootorder").and_then(Value::as_str) {
            let order: u32 = order.parse().map_err(|_| {
                anyhow!(
                    "failed to parse \"--{flag}\" flag: bootorder: not a positive number: {order}"
                )
            })?;
            disks.push(Disk {
                name: vol_name,
                boot_order: Some(order),
                ..Default::default()
            });
        }
        Ok(())
    };
    for (i, raw) in a.volume_containerdisk.iter().enumerate() {
        add("volume-containerdisk", raw, i, "containerdisk")?;
    }
    for (i, raw) in a.volume_pvc.iter().enumerate() {
        add("volume-pvc", raw, i, "pvc")?;
    }
    if let Some(ud) = &a.cloud_init_user_data {
        volumes.push(Volume {
            name: "cloudinitdisk".into(),
            cloud_init_no_cloud: Some(CloudInitSource {
                user_data_base64: Some(ud.clone()),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let memory = match (&a.instancetype, &a.memory) {
        (Some(_), Some(_)) => bail!("--memory cannot be used together with --instancetype"),
        (Some(_), None) => None,
        (None, m) => {
            let guest = m.clone().unwrap_or_else(|| "512Mi".into());
            Some(Memory {
                guest: Some(
                    Quantity::parse(&guest).map_err(|e| anyhow!("--memory {guest:?}: {e}"))?,
                ),
                ..Default::default()
            })
        }
    };
    let run_strategy: RunStrategy = serde_json::from_value(Value::String(a.run_strategy.clone()))?;
    Ok(VirtualMachine {
        metadata: ObjectMeta {
            name: Some(name),
            ..Default::default()
        },
        spec: VirtualMachineSpec {
            run_strategy: Some(run_strategy),
            instancetype: a.instancetype.as_deref().map(|it| {
                let (kind, name) = matcher(it, "virtualmachineclusterinstancetype");
                InstancetypeMatcher {
                    kind: Some(kind),
                    name: Some(name),
                    ..Default::default()
                }
            }),
            preference: a.preference.as_deref().map(|p| {
                let (kind, name) = matcher(p, "virtualmachineclusterpreference");
                PreferenceMatcher {
                    kind: Some(kind),
                    name: Some(name),
                    ..Default::default()
                }
            }),
            template: VirtualMachineInstanceTemplateSpec {
                metadata: Some(ObjectMeta::default()),
                spec: Some(VirtualMachineInstanceSpec {
                    domain: DomainSpec {
                        devices: Devices {
                            disks: Some(disks).filter(|d| !d.is_empty()),
                            ..Default::default()
                        },
                        memory,
                        resources: Some(ResourceRequirements::default()),
                        ..Default::default()
                    },
                    termination_grace_period_seconds: Some(a.termination_grace_period),
                    volumes: Some(volumes).filter(|v| !v.is_empty()),
                    ..Default::default()
                }),
            },
            ..Default::default()
        },
        status: None,
    })
}

/// The manifest as upstream's `virtctl create vm` prints it: Go's zero values show as
/// `creationTimestamp: null` and `status: {}`.
pub fn build_vm(a: &VmArgs) -> Result<Value> {
    let mut v = serde_json::to_value(vm_from_args(a)?)?;
    v["metadata"]["creationTimestamp"] = Value::Null;
    v["spec"]["template"]["metadata"]["creationTimestamp"] = Value::Null;
    v["status"] = json!({});
    Ok(v)
}

pub fn render(cmd: &CreateCmd) -> Result<String> {
    match cmd {
        CreateCmd::Vm(a) => Ok(serde_yaml::to_string(&build_vm(a)?)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(subcommand)]
        c: CreateCmd,
    }

    fn vm(args: &[&str]) -> Result<Value> {
        let mut all = vec!["t", "vm"];
        all.extend_from_slice(args);
        let CreateCmd::Vm(a) = T::try_parse_from(all)?.c;
        build_vm(&a)
    }

    #[test]
    fn containerdisk_vm_like_upstream() {
        let v = vm(&[
            "--name",
            "testvm",
            "--volume-containerdisk",
            "src:registry:5000/kubevirt/cirros-container-disk-demo:devel",
        ])
        .unwrap();
        assert_eq!(v["metadata"]["name"], "testvm");
        assert_eq!(v["spec"]["runStrategy"], "Always");
        let vol = &v["spec"]["template"]["spec"]["volumes"][0];
        assert_eq!(vol["name"], "testvm-containerdisk-0");
        assert_eq!(
            vol["containerDisk"]["image"],
            "registry:5000/kubevirt/cirros-container-disk-demo:devel"
        );
        assert_eq!(
            v["spec"]["template"]["spec"]["domain"]["memory"]["guest"],
            "512Mi"
        );
        assert_eq!(
            v["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
            180
        );
        let yaml = serde_yaml::to_string(&v).unwrap();
        assert!(
            yaml.starts_with("apiVersion: kubevirt.io/v1\nkind: VirtualMachine\n"),
            "{yaml}"
        );
    }

    #[test]
    fn instancetype_and_errors() {
        let v = vm(&[
            "--name",
            "a",
            "--instancetype",
            "u1.small",
            "--run-strategy",
            "Manual",
        ])
        .unwrap();
        assert_eq!(
            v["spec"]["instancetype"]["kind"],
            "virtualmachineclusterinstancetype"
        );
        assert_eq!(v["spec"]["instancetype"]["name"], "u1.small");
        assert!(v["spec"]["template"]["spec"]["domain"]
            .get("memory")
            .is_none());
        let err = vm(&["--volume-containerdisk", "image"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--volume-containerdisk"), "{err}");
        let err = vm(&["--volume-containerdisk", "name:x"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("src must be specified"), "{err}");
        assert!(vm(&["--run-strategy", "Sometimes"]).is_err());
        let v = vm(&[
            "--name",
            "b",
            "--volume-containerdisk",
            "src:img,name:root,bootorder:1",
        ])
        .unwrap();
        assert_eq!(
            v["spec"]["template"]["spec"]["domain"]["devices"]["disks"][0]["bootOrder"],
            1
        );
    }
}
