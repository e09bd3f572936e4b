//! The fixtures themselves work: the guest boots to its marker under TCG, answers on its
//! shell, and an image pushed to the registry is served back by digest.

use kubevirt_testenv::{guests, Console, Registry, READY_MARKER};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn initramfs_guest_boots_and_runs_shell_commands() {
    let g = guests();
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.sock");
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "128",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
        ])
        .arg("-kernel")
        .arg(&g.vmlinux)
        .arg("-initrd")
        .arg(&g.initramfs)
        .args(["-append", g.kernel_cmdline])
        .arg("-chardev")
        .arg(format!(
            "socket,id=s0,path={},server=on,wait=off",
            serial.display()
        ))
        .args(["-serial", "chardev:s0"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut console = Console::connect(&serial, Duration::from_secs(10)).unwrap();
    console
        .wait_for(READY_MARKER, Duration::from_secs(90))
        .unwrap();
    let out = console
        .run("cat /etc/os-release", Duration::from_secs(30))
        .unwrap();
    assert!(out.contains("ID=kubevirt-rs-guest"), "{out}");
    qemu.kill().unwrap();
    qemu.wait().unwrap();
}

#[test]
fn registry_serves_pushed_containerdisk() {
    let registry = Registry::start().unwrap();
    registry
        .push_guest_containerdisk("kubevirt/cirros-container-disk-demo:devel")
        .unwrap();
    assert_eq!(
        registry
            .http_status("/v2/kubevirt/cirros-container-disk-demo/manifests/devel")
            .unwrap(),
        200
    );
    assert_eq!(
        registry
            .http_status("/v2/kubevirt/no-such-image/manifests/devel")
            .unwrap(),
        404
    );
}
