//! DomainConfig -> QEMU command line.

use std::collections::HashSet;
use std::path::Path;

use crate::accel::{Accelerator, AcceleratorKind};
use crate::config::*;
use crate::error::{HypervisorError, Result};
use crate::qemu::fds::FdRefs;

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> HypervisorError {
    HypervisorError::InvalidConfig {
        field: field.into(),
        reason: reason.into(),
    }
}

/// QEMU option values use `,` as separator; a literal comma is written `,,`.
pub fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

fn path(p: &Path) -> String {
    escape(&p.to_string_lossy())
}

pub(crate) fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Disk serials go onto the command line as they are: up to 20 of `[A-Za-z0-9_-]`.
pub(crate) fn valid_serial(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 20
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn valid_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chipset {
    Q35,
    I440fx,
    Microvm,
}

pub(crate) fn chipset(machine: &str) -> Result<Chipset> {
    if machine.contains("q35") {
        Ok(Chipset::Q35)
    } else if machine == "pc" || machine.starts_with("pc-i440fx") || machine.starts_with("pc-") {
        Ok(Chipset::I440fx)
    } else if machine == "microvm" {
        Ok(Chipset::Microvm)
    } else {
        Err(invalid(
            "machine",
            format!("unsupported machine type {machine:?} (supported: q35, pc-q35-*, pc, pc-i440fx-*, microvm)"),
        ))
    }
}

/// Checks everything that does not need the file system.
pub fn validate(cfg: &DomainConfig) -> Result<()> {
    if cfg.name.is_empty() || cfg.name.len() > 200 || cfg.name.chars().any(|c| c.is_control()) {
        return Err(invalid("name", "must be 1-200 printable characters"));
    }
    chipset(&cfg.machine)?;
    let vcpus = cfg.cpu.vcpus();
    if cfg.cpu.sockets == 0 || cfg.cpu.cores == 0 || cfg.cpu.threads == 0 {
        return Err(invalid(
            "cpu",
            "sockets, cores and threads must be at least 1",
        ));
    }
    if vcpus > 255 {
        return Err(invalid(
            "cpu",
            format!("{vcpus} vCPUs exceed the limit of 255"),
        ));
    }
    if let CpuModel::Named(m) = &cfg.cpu.model {
        if !valid_id(m) {
            return Err(invalid(
                "cpu.model",
                format!("invalid CPU model name {m:?}"),
            ));
        }
    }
    if cfg.memory_mib < 16 {
        return Err(invalid(
            "memory_mib",
            "guest memory must be at least 16 MiB",
        ));
    }
    if cfg.memory_mib > 16 * 1024 * 1024 {
        return Err(invalid("memory_mib", "guest memory above 16 TiB"));
    }
    if let Firmware::Uefi {
        secure_boot: true, ..
    } = &cfg.firmware
    {
        if chipset(&cfg.machine)? != Chipset::Q35 {
            return Err(invalid("firmware", "secure boot needs a q35 machine (SMM)"));
        }
    }
    let mut names = HashSet::new();
    let mut orders = HashSet::new();
    let mut sata = 0;
    for (i, d) in cfg.disks.iter().enumerate() {
        let f = format!("disks[{i}]");
        if !valid_id(&d.name) {
            return Err(invalid(
                format!("{f}.name"),
                format!("invalid device name {:?}", d.name),
            ));
        }
        if !names.insert(d.name.clone()) {
            return Err(invalid(
                format!("{f}.name"),
                format!("duplicate device name {:?}", d.name),
            ));
        }
        if d.device == DiskDevice::Cdrom && d.bus == DiskBus::Virtio {
            return Err(invalid(
                format!("{f}.bus"),
                "a cdrom cannot use the virtio bus (use sata or scsi)",
            ));
        }
        if d.path.is_none() && (d.device != DiskDevice::Cdrom || d.backing.is_some()) {
            return Err(invalid(
                format!("{f}.path"),
                "only a cdrom may have no medium",
            ));
        }
        if d.bus == DiskBus::Sata {
            sata += 1;
        }
        if let Some(o) = d.boot_order {
            if o == 0 || !orders.insert(o) {
                return Err(invalid(
                    format!("{f}.boot_order"),
                    format!("boot order {o} is zero or used twice"),
                ));
            }
        }
    }
    match chipset(&cfg.machine)? {
        Chipset::Q35 if sata > 6 => return Err(invalid("disks", "q35 has 6 SATA ports")),
        Chipset::I440fx if sata > 4 => return Err(invalid("disks", "pc has 4 IDE slots")),
        Chipset::Microvm if sata > 0 => {
            return Err(invalid("disks", "microvm has no SATA/IDE bus"))
        }
        _ => {}
    }
    for (i, n) in cfg.nics.iter().enumerate() {
        let f = format!("nics[{i}]");
        if !valid_id(&n.name) {
            return Err(invalid(
                format!("{f}.name"),
                format!("invalid interface name {:?}", n.name),
            ));
        }
        if !names.insert(n.name.clone()) {
            return Err(invalid(
                format!("{f}.name"),
                format!("duplicate device name {:?}", n.name),
            ));
        }
        if let Some(mac) = &n.mac {
            if !valid_mac(mac) {
                return Err(invalid(
                    format!("{f}.mac"),
                    format!("invalid MAC address {mac:?}"),
                ));
            }
        }
        if let NicBackend::Tap { ifname } = &n.backend {
            if !valid_id(ifname) || ifname.len() > 15 {
                return Err(invalid(
                    format!("{f}.backend"),
                    format!("invalid tap name {ifname:?}"),
                ));
            }
        }
        if let Some(o) = n.boot_order {
            if o == 0 || !orders.insert(o) {
                return Err(invalid(
                    format!("{f}.boot_order"),
                    format!("boot order {o} is zero or used twice"),
                ));
            }
        }
    }
    Ok(())
}

/// The id of the virtio-scsi controller (its bus is `scsi0.0`).
pub const SCSI_CONTROLLER: &str = "scsi0";

/// Spare hot-pluggable PCIe root ports on q35, one virtio-blk disk each.
pub const HOTPLUG_ROOT_PORTS: usize = 3;

/// The id (and bus name) of spare root port `i`.
pub fn hotplug_port_id(i: usize) -> String {
    format!("hpport{i}")
}

/// The seccomp filter QEMU installs on itself: no obsolete system calls, no set*id, no
/// fork/exec, no scheduler or affinity changes. (QEMU never needs them: it gets its files
/// and taps as descriptors and runs no helper scripts.)
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// Translation cache under software emulation, MiB: bounded, so the VM's memory is.
pub const TCG_TB_SIZE_MIB: u64 = 128;

/// Builds the QEMU arguments (without the program name). `incoming` adds `-incoming defer`.
/// Files, logs and taps are referred to through `fds` (see [`super::fds`]).
pub fn build_argv(
    cfg: &DomainConfig,
    accel: &Accelerator,
    incoming: bool,
    fds: &FdRefs,
) -> Result<Vec<String>> {
    validate(cfg)?;
    let chip = chipset(&cfg.machine)?;
    let mut a: Vec<String> = Vec::with_capacity(64);
    let mut push = |args: &[&str]| a.extend(args.iter().map(|s| s.to_string()));

    push(&[
        "-name",
        &format!("guest={},debug-threads=on", escape(&cfg.name)),
    ]);
    push(&["-nodefaults", "-no-user-config", "-display", "none"]);
    push(&["-sandbox", SANDBOX]);
    for (set, fd) in &fds.sets {
        push(&["-add-fd", &format!("fd={fd},set={set}")]);
    }
    let mut machine = escape(&cfg.machine);
    if let Firmware::Uefi {
        secure_boot: true, ..
    } = &cfg.firmware
    {
        machine.push_str(",smm=on");
    }
    push(&["-machine", &machine]);
    match accel.kind {
        AcceleratorKind::Tcg => push(&["-accel", &format!("tcg,tb-size={TCG_TB_SIZE_MIB}")]),
        _ => push(&["-accel", accel.kind.as_str()]),
    }
    let cpu = match (&cfg.cpu.model, accel.kind) {
        (CpuModel::HostModel | CpuModel::HostPassthrough, AcceleratorKind::Kvm) => {
            "host".to_string()
        }
        // TCG cannot pass the host CPU through; `max` enables everything the emulator offers.
        (CpuModel::HostModel | CpuModel::HostPassthrough, AcceleratorKind::Tcg) => {
            "max".to_string()
        }
        (CpuModel::Named(m), _) => m.clone(),
    };
    push(&["-cpu", &cpu]);
    push(&[
        "-smp",
        &format!(
            "{},sockets={},cores={},threads={}",
            cfg.cpu.vcpus(),
            cfg.cpu.sockets,
            cfg.cpu.cores,
            cfg.cpu.threads
        ),
    ]);
    push(&["-m", &format!("{}M", cfg.memory_mib)]);
    if let Some(uuid) = &cfg.uuid {
        push(&["-uuid", uuid]);
    }
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", path(&cfg.qmp_socket)),
    ]);

    if let Firmware::Uefi {
        code,
        vars_path,
        secure_boot,
        ..
    } = &cfg.firmware
    {
        push(&[
            "-drive",
            &format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                path(code)
            ),
        ]);
        let vars = fds.uefi_vars.ok_or_else(|| {
            invalid(
                "firmware.vars_path",
                format!("{} was not opened", vars_path.display()),
            )
        })?;
        push(&[
            "-drive",
            &format!("if=pflash,format=raw,unit=1,file=/dev/fdset/{vars}"),
        ]);
        if *secure_boot {
            push(&["-global", "driver=cfi.pflash01,property=secure,value=on"]);
        }
    }

    if let Some(kb) = &cfg.kernel_boot {
        let opened = |name: &Option<String>, what: &str| {
            name.clone()
                .ok_or_else(|| invalid(format!("kernel_boot.{what}"), "was not opened"))
        };
        push(&["-kernel", &opened(&fds.kernel, "kernel")?]);
        if kb.initrd.is_some() {
            push(&["-initrd", &opened(&fds.initrd, "initrd")?]);
        }
        if !kb.cmdline.is_empty() {
            push(&["-append", &kb.cmdline]);
        }
    }

    // Disks.
    let mut sata_index = 0u32;
    let mut scsi_index = 0u32;
    // The SCSI controller is always there (but on microvm, which has no PCI bus unless a
    // disk needs one): disks hot-plugged on SCSI need no PCI hot-plug, and a controller
    // present at boot is scanned by the guest.
    if chip != Chipset::Microvm || cfg.disks.iter().any(|d| d.bus == DiskBus::Scsi) {
        push(&["-device", &format!("virtio-scsi-pci,id={SCSI_CONTROLLER}")]);
    }
    let no_boot_order = cfg.disks.iter().all(|d| d.boot_order.is_none())
        && cfg.nics.iter().all(|n| n.boot_order.is_none());
    for (i, d) in cfg.disks.iter().enumerate() {
        let sets = fds
            .disks
            .get(i)
            .ok_or_else(|| invalid(format!("disks.{}", d.name), "image was not opened"))?;
        // Explicit nodes, named by index (node names are at most 31 characters): the
        // protocol and format drivers are ours, and so is the backing chain.
        let drive_id = format!("drive-ua-{i}");
        let read_only = if d.readonly || d.device == DiskDevice::Cdrom {
            "on"
        } else {
            "off"
        };
        // An empty cdrom is a device with no drive: QEMU gives it an empty tray.
        let image = match (&d.path, sets.image) {
            (Some(_), Some(set)) => Some(set),
            (None, _) => None,
            (Some(_), None) => {
                return Err(invalid(format!("disks.{}", d.name), "image was not opened"))
            }
        };
        let drive = match image {
            Some(set) => {
                let mut top = format!(
                    "driver={},node-name={drive_id},read-only={read_only},file.driver=file,file.filename=/dev/fdset/{set}",
                    d.format.as_str(),
                );
                match (&d.backing, sets.backing) {
                    (Some(b), Some(set)) => {
                        let backing_id = format!("backing-ua-{i}");
                        let mut base = format!(
                            "driver={},node-name={backing_id},read-only=on,file.driver=file,file.filename=/dev/fdset/{set}",
                            b.format.as_str()
                        );
                        if b.format == DiskFormat::Qcow2 {
                            base.push_str(",backing=");
                        }
                        push(&["-blockdev", &base]);
                        top.push_str(&format!(",backing={backing_id}"));
                    }
                    (Some(_), None) => {
                        return Err(invalid(
                            format!("disks.{}.backing", d.name),
                            "backing image was not opened",
                        ));
                    }
                    (None, _) => {
                        if d.format == DiskFormat::Qcow2 {
                            top.push_str(",backing=");
                        }
                    }
                }
                push(&["-blockdev", &top]);
                format!(",drive={drive_id}")
            }
            None => String::new(),
        };
        let mut dev = match (d.bus, d.device) {
            (DiskBus::Virtio, _) => format!("virtio-blk-pci{drive}"),
            (DiskBus::Sata, kind) => {
                let model = if kind == DiskDevice::Cdrom {
                    "ide-cd"
                } else {
                    "ide-hd"
                };
                let bus = match chip {
                    Chipset::Q35 => format!("ide.{sata_index}"),
                    _ => format!("ide.{},unit={}", sata_index / 2, sata_index % 2),
                };
                sata_index += 1;
                format!("{model},bus={bus}{drive}")
            }
            (DiskBus::Scsi, kind) => {
                let model = if kind == DiskDevice::Cdrom {
                    "scsi-cd"
                } else {
                    "scsi-hd"
                };
                let s = format!(
                    "{model},bus={SCSI_CONTROLLER}.0,channel=0,scsi-id=0,lun={scsi_index}{drive}"
                );
                scsi_index += 1;
                s
            }
        };
        dev.push_str(&format!(",id=ua-{}", d.name));
        match d.boot_order {
            Some(o) => dev.push_str(&format!(",bootindex={o}")),
            // No boot order anywhere: the first disk boots (as libvirt's `<boot dev='hd'/>`),
            // so a disk hot-plugged while the firmware runs is never booted instead.
            None if i == 0 && no_boot_order => dev.push_str(",bootindex=1"),
            None => {}
        }
        if let Some(serial) = &d.serial {
            if !valid_serial(serial) {
                return Err(invalid(
                    format!("disks.{}.serial", d.name),
                    "serial must be up to 20 characters [A-Za-z0-9_-]",
                ));
            }
            dev.push_str(&format!(",serial={serial}"));
        }
        push(&["-device", &dev]);
    }

    // NICs.
    for (idx, n) in cfg.nics.iter().enumerate() {
        let id = format!("netdev-ua-{}", n.name);
        let netdev = match &n.backend {
            NicBackend::Tap { .. } => {
                let fd = fds.taps.get(idx).copied().flatten().ok_or_else(|| {
                    invalid(format!("nics.{}.backend", n.name), "tap was not opened")
                })?;
                format!("tap,id={id},fd={fd},vhost=off")
            }
            NicBackend::Passt { socket } => {
                format!(
                    "stream,id={id},server=off,addr.type=unix,addr.path={}",
                    path(socket)
                )
            }
            NicBackend::User { tcp_forwards } => {
                let mut s = format!("user,id={id}");
                for (host, guest) in tcp_forwards {
                    s.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
                }
                s
            }
        };
        push(&["-netdev", &netdev]);
        let model = match n.model {
            NicModel::Virtio => "virtio-net-pci",
            NicModel::E1000 => "e1000",
            NicModel::E1000e => "e1000e",
            NicModel::Rtl8139 => "rtl8139",
        };
        let mut dev = format!("{model},netdev={id},id=ua-{}", n.name);
        if let Some(mac) = &n.mac {
            dev.push_str(&format!(",mac={mac}"));
        }
        match n.boot_order {
            Some(o) => dev.push_str(&format!(",bootindex={o}")),
            // Without network boot the option ROM only costs boot time and memory.
            None => dev.push_str(",romfile="),
        }
        push(&["-device", &dev]);
    }

    if cfg.rng {
        push(&["-object", "rng-random,id=objrng0,filename=/dev/urandom"]);
        push(&["-device", "virtio-rng-pci,rng=objrng0,id=rng0"]);
    }

    if cfg.balloon {
        push(&["-device", "virtio-balloon-pci,id=balloon0"]);
    }

    if let Some(tpm) = &cfg.tpm {
        push(&[
            "-chardev",
            &format!("socket,id=chrtpm,path={}", path(&tpm.socket)),
        ]);
        push(&["-tpmdev", "emulator,id=tpm-tpm0,chardev=chrtpm"]);
        let model = if chip == Chipset::Q35 {
            "tpm-crb"
        } else {
            "tpm-tis"
        };
        push(&["-device", &format!("{model},tpmdev=tpm-tpm0,id=tpm0")]);
    }

    if let Some(serial) = &cfg.serial {
        let mut chardev = format!(
            "socket,id=charserial0,path={},server=on,wait=off",
            path(&serial.socket)
        );
        if serial.log_file.is_some() {
            let set = fds
                .serial_log
                .ok_or_else(|| invalid("serial.log_file", "was not opened"))?;
            chardev.push_str(&format!(",logfile=/dev/fdset/{set},logappend=on"));
        }
        push(&["-chardev", &chardev]);
        push(&["-device", "isa-serial,chardev=charserial0,id=serial0"]);
    }

    if let Some(vnc) = &cfg.vnc_socket {
        push(&["-vnc", &format!("unix:{}", path(vnc))]);
        if chip != Chipset::Microvm {
            push(&["-device", "VGA,id=video0"]);
        }
    }

    if let Some(qga) = &cfg.qga_socket {
        push(&[
            "-chardev",
            &format!("socket,id=charqga0,path={},server=on,wait=off", path(qga)),
        ]);
        push(&["-device", "virtio-serial-pci,id=virtio-serial0"]);
        push(&[
            "-device",
            "virtserialport,bus=virtio-serial0.0,nr=1,chardev=charqga0,id=channel0,name=org.qemu.guest_agent.0",
        ]);
    }

    // Spare PCIe root ports for virtio-blk hot-plug (q35 devices cannot be hot-plugged onto
    // the root complex). Last on the command line, so they take no other device's slot.
    // No I/O window: modern virtio devices need none, and I/O space is scarce.
    if chip == Chipset::Q35 {
        for i in 0..HOTPLUG_ROOT_PORTS {
            push(&[
                "-device",
                &format!(
                    "pcie-root-port,id={},chassis={},bus=pcie.0,io-reserve=0",
                    hotplug_port_id(i),
                    i + 1
                ),
            ]);
        }
    }

    if cfg.start_paused && !incoming {
        push(&["-S"]);
    }
    if incoming {
        push(&["-incoming", "defer"]);
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn tcg() -> Accelerator {
        Accelerator {
            kind: AcceleratorKind::Tcg,
            reason: "test".into(),
        }
    }

    fn disk(name: &str, bus: DiskBus, device: DiskDevice) -> DiskConfig {
        DiskConfig {
            name: name.into(),
            path: Some(PathBuf::from(format!("/img/{name},x.qcow2"))),
            format: DiskFormat::Qcow2,
            backing: None,
            bus,
            device,
            readonly: false,
            boot_order: None,
            serial: None,
        }
    }

    fn joined(cfg: &DomainConfig) -> String {
        build_argv(cfg, &tcg(), false, &FdRefs::placeholders(cfg))
            .unwrap()
            .join(" ")
    }

    #[test]
    fn minimal_config() {
        let cfg = DomainConfig::new("vm1", 128, "/run/x/qmp.sock");
        let s = joined(&cfg);
        assert!(
            s.contains("-nodefaults -no-user-config -display none"),
            "{s}"
        );
        assert!(s.contains("-accel tcg"));
        assert!(s.contains("-cpu max"));
        assert!(s.contains("-smp 1,sockets=1,cores=1,threads=1"));
        assert!(s.contains("-m 128M"));
        assert!(s.contains("-qmp unix:/run/x/qmp.sock,server=on,wait=off"));
    }

    #[test]
    fn disks_on_every_bus_with_boot_order_and_escaping() {
        let mut cfg = DomainConfig::new("vm1", 128, "/q");
        let mut root = disk("root", DiskBus::Virtio, DiskDevice::Disk);
        root.boot_order = Some(2);
        let mut cd = disk("cd", DiskBus::Sata, DiskDevice::Cdrom);
        cd.boot_order = Some(1);
        cd.format = DiskFormat::Raw;
        let mut data = disk("data", DiskBus::Scsi, DiskDevice::Disk);
        data.backing = Some(BackingImage {
            path: "/cache/base.qcow2".into(),
            format: DiskFormat::Qcow2,
        });
        cfg.disks = vec![root, cd, data];
        let fds = FdRefs::placeholders(&cfg);
        assert_eq!(fds.disks[2].backing, Some(4));
        let a = build_argv(&cfg, &tcg(), false, &fds).unwrap();
        let s = a.join(" ");
        // Explicit drivers on descriptors; a qcow2 without a backing image we chose has none.
        assert!(
            s.contains("-blockdev driver=qcow2,node-name=drive-ua-0,read-only=off,file.driver=file,file.filename=/dev/fdset/1,backing= "),
            "{s}"
        );
        assert!(
            s.contains("virtio-blk-pci,drive=drive-ua-0,id=ua-root,bootindex=2"),
            "{s}"
        );
        assert!(
            s.contains("driver=raw,node-name=drive-ua-1,read-only=on,file.driver=file,file.filename=/dev/fdset/2"),
            "{s}"
        );
        assert!(
            s.contains("ide-cd,bus=ide.0,drive=drive-ua-1,id=ua-cd,bootindex=1"),
            "{s}"
        );
        // The backing chain is the one in the config, and it ends there.
        assert!(
            s.contains("-blockdev driver=qcow2,node-name=backing-ua-2,read-only=on,file.driver=file,file.filename=/dev/fdset/4,backing= -blockdev driver=qcow2,node-name=drive-ua-2,read-only=off,file.driver=file,file.filename=/dev/fdset/3,backing=backing-ua-2"),
            "{s}"
        );
        assert!(s.contains("virtio-scsi-pci,id=scsi0"), "{s}");
        assert!(
            s.contains("scsi-hd,bus=scsi0.0,channel=0,scsi-id=0,lun=0,drive=drive-ua-2"),
            "{s}"
        );
        assert!(!s.contains("/img/"), "no path reaches QEMU: {s}");
    }

    #[test]
    fn an_empty_cdrom_is_a_device_without_a_drive() {
        let mut cfg = DomainConfig::new("vm1", 128, "/q");
        let root = disk("root", DiskBus::Virtio, DiskDevice::Disk);
        let mut sata = disk("tray", DiskBus::Sata, DiskDevice::Cdrom);
        sata.path = None;
        let mut scsi = disk("tray2", DiskBus::Scsi, DiskDevice::Cdrom);
        scsi.path = None;
        cfg.disks = vec![root, sata, scsi];
        let fds = FdRefs::placeholders(&cfg);
        assert_eq!(fds.disks[1].image, None);
        let s = build_argv(&cfg, &tcg(), false, &fds).unwrap().join(" ");
        assert!(s.contains("-device ide-cd,bus=ide.0,id=ua-tray "), "{s}");
        assert!(
            s.contains("-device scsi-cd,bus=scsi0.0,channel=0,scsi-id=0,lun=0,id=ua-tray2 "),
            "{s}"
        );
        assert!(
            !s.contains("drive-ua-1") && !s.contains("drive-ua-2"),
            "{s}"
        );
        // A disk always has its image.
        let mut disk_without = disk("d", DiskBus::Virtio, DiskDevice::Disk);
        disk_without.path = None;
        cfg.disks = vec![disk_without];
        let err = build_argv(&cfg, &tcg(), false, &FdRefs::placeholders(&cfg)).unwrap_err();
        assert!(
            err.to_string().contains("only a cdrom may have no medium"),
            "{err}"
        );
    }

    #[test]
    fn hotplug_needs_a_scsi_controller_and_spare_root_ports() {
        let cfg = DomainConfig::new("vm1", 128, "/q");
        let s = joined(&cfg);
        assert_eq!(s.matches("virtio-scsi-pci,id=scsi0").count(), 1, "{s}");
        for i in 0..HOTPLUG_ROOT_PORTS {
            let port = format!(
                "-device pcie-root-port,id=hpport{i},chassis={},bus=pcie.0,io-reserve=0",
                i + 1
            );
            assert!(s.contains(&port), "{s}");
        }
        // Last, so no other device's slot moves.
        let a = build_argv(&cfg, &tcg(), false, &FdRefs::placeholders(&cfg)).unwrap();
        assert!(
            a.last().unwrap().starts_with("pcie-root-port,id=hpport2"),
            "{s}"
        );
        // One controller for boot and hot-plugged SCSI disks alike.
        let mut cfg = cfg;
        cfg.disks = vec![disk("data", DiskBus::Scsi, DiskDevice::Disk)];
        assert_eq!(joined(&cfg).matches("virtio-scsi-pci").count(), 1);
        // i440fx hot-plugs on its root bus: no root ports there; microvm has no PCI.
        cfg.machine = "pc".into();
        let s = joined(&cfg);
        assert!(!s.contains("pcie-root-port"), "{s}");
        let mut cfg = DomainConfig::new("vm1", 128, "/q");
        cfg.machine = "microvm".into();
        let s = joined(&cfg);
        assert!(
            !s.contains("virtio-scsi-pci") && !s.contains("pcie-root-port"),
            "{s}"
        );
    }

    #[test]
    fn i440fx_sata_uses_units() {
        let mut cfg = DomainConfig::new("vm1", 128, "/q");
        cfg.machine = "pc".into();
        cfg.disks = vec![
            disk("a", DiskBus::Sata, DiskDevice::Disk),
            disk("b", DiskBus::Sata, DiskDevice::Disk),
            disk("c", DiskBus::Sata, DiskDevice::Disk),
        ];
        let s = joined(&cfg);
        assert!(
            s.contains("ide-hd,bus=ide.0,unit=1,drive=drive-ua-1"),
            "{s}"
        );
        assert!(
            s.contains("ide-hd,bus=ide.1,unit=0,drive=drive-ua-2"),
            "{s}"
        );
    }

    #[test]
    fn devices_and_channels() {
        let mut cfg = DomainConfig::new("vm1", 256, "/r/qmp.sock");
        cfg.cpu = CpuConfig {
            model: CpuModel::Named("Haswell".into()),
            sockets: 2,
            cores: 2,
            threads: 1,
        };
        cfg.rng = true;
        cfg.balloon = true;
        cfg.serial = Some(SerialConfig {
            socket: "/r/serial.sock".into(),
            log_file: Some("/r/serial.log".into()),
        });
        cfg.vnc_socket = Some("/r/vnc.sock".into());
        cfg.qga_socket = Some("/r/qga.sock".into());
        cfg.tpm = Some(TpmConfig {
            state_dir: "/r/tpm".into(),
            socket: "/r/swtpm.sock".into(),
            pid_file: "/r/swtpm.pid".into(),
        });
        cfg.firmware = Firmware::Uefi {
            code: "/fw/code.fd".into(),
            vars_template: "/fw/vars.fd".into(),
            vars_path: "/r/vars.fd".into(),
            secure_boot: true,
        };
        cfg.kernel_boot = Some(KernelBoot {
            kernel: "/k/vmlinuz".into(),
            initrd: Some("/k/initrd".into()),
            cmdline: "console=ttyS0 quiet".into(),
        });
        cfg.nics = vec![
            NicConfig {
                name: "default".into(),
                model: NicModel::Virtio,
                mac: Some("52:54:00:12:34:56".into()),
                backend: NicBackend::Tap {
                    ifname: "tap0".into(),
                },
                boot_order: None,
            },
            NicConfig {
                name: "p".into(),
                model: NicModel::E1000,
                mac: None,
                backend: NicBackend::Passt {
                    socket: "/r/passt.sock".into(),
                },
                boot_order: Some(3),
            },
        ];
        let a = build_argv(&cfg, &tcg(), true, &FdRefs::placeholders(&cfg)).unwrap();
        let s = a.join(" ");
        for want in [
            "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            "-cpu Haswell",
            "-smp 4,sockets=2,cores=2,threads=1",
            "-machine q35,smm=on",
            "if=pflash,format=raw,unit=0,readonly=on,file=/fw/code.fd",
            "if=pflash,format=raw,unit=1,file=/dev/fdset/1",
            "driver=cfi.pflash01,property=secure,value=on",
            "-kernel /proc/self/fd/KERNEL -initrd /proc/self/fd/INITRD",
            "virtio-rng-pci,rng=objrng0",
            "virtio-balloon-pci,id=balloon0",
            "socket,id=chrtpm,path=/r/swtpm.sock",
            "tpm-crb,tpmdev=tpm-tpm0",
            "socket,id=charserial0,path=/r/serial.sock,server=on,wait=off,logfile=/dev/fdset/2,logappend=on",
            "-vnc unix:/r/vnc.sock",
            "name=org.qemu.guest_agent.0",
            "tap,id=netdev-ua-default,fd=100,vhost=off",
            "virtio-net-pci,netdev=netdev-ua-default,id=ua-default,mac=52:54:00:12:34:56,romfile=",
            "stream,id=netdev-ua-p,server=off,addr.type=unix,addr.path=/r/passt.sock",
            "e1000,netdev=netdev-ua-p,id=ua-p,bootindex=3",
            "-incoming defer",
        ] {
            assert!(s.contains(want), "missing {want:?} in {s}");
        }
        // The kernel command line stays one argument.
        assert!(a.iter().any(|x| x == "console=ttyS0 quiet"));
    }

    #[test]
    fn rejects_bad_configs() {
        let base = DomainConfig::new("vm1", 128, "/q");
        type Mutation = Box<dyn Fn(&mut DomainConfig)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|c| c.memory_mib = 1), "memory_mib"),
            (Box::new(|c| c.machine = "virt".into()), "machine"),
            (Box::new(|c| c.cpu.cores = 0), "cpu"),
            (
                Box::new(|c| c.disks = vec![disk("x", DiskBus::Virtio, DiskDevice::Cdrom)]),
                "disks[0].bus",
            ),
            (
                Box::new(|c| {
                    c.disks = vec![
                        disk("x", DiskBus::Virtio, DiskDevice::Disk),
                        disk("x", DiskBus::Virtio, DiskDevice::Disk),
                    ]
                }),
                "disks[1].name",
            ),
            (
                Box::new(|c| c.disks = vec![disk("bad name", DiskBus::Virtio, DiskDevice::Disk)]),
                "disks[0].name",
            ),
            (
                Box::new(|c| {
                    c.nics = vec![NicConfig {
                        name: "n".into(),
                        model: NicModel::Virtio,
                        mac: Some("zz".into()),
                        backend: NicBackend::User {
                            tcp_forwards: vec![],
                        },
                        boot_order: None,
                    }]
                }),
                "nics[0].mac",
            ),
        ];
        for (mutate, field) in cases {
            let mut c = base.clone();
            mutate(&mut c);
            match validate(&c) {
                Err(HypervisorError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected error on {field}, got {other:?}"),
            }
        }
    }
}
