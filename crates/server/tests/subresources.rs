//! The VMI subresources through virtctl: guestosinfo, fslist, userlist, vnc (RFB through the proxy), reset,
//! soft-reboot, and their errors.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[test]
fn vmi_subresources_through_virtctl() {
    let server = Server::start(&["--stop-vms-on-exit"]);
    let name = "subres";
    server.apply_yaml(&hostdisk_vm(name, "Always", &server.data_dir));
    server.wait_for("vm", name, "{.status.printableStatus}", "Running");
    server.wait_for("vmi", name, "{.status.guestOSInfo.id}", "kubevirt-rs-guest");

    // guestosinfo prints the agent's answer in upstream's casing.
    let out = server.virtctl(&["guestosinfo", name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["id"], "kubevirt-rs-guest");
    assert!(
        info["kernelRelease"]
            .as_str()
            .is_some_and(|k| !k.is_empty()),
        "{info}"
    );

    // vnc --proxy-only prints the local port; a client there speaks RFB with the guest's VNC.
    let mut vnc = Command::new(virtctl())
        .args(["vnc", name, "--proxy-only"])
        .env("KUBECONFIG", &server.kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(vnc.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = serde_json::from_str::<serde_json::Value>(&line).unwrap()["port"]
        .as_u64()
        .unwrap();
    let mut tcp = TcpStream::connect(("127.0.0.1", port as u16)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut banner = [0u8; 12];
    tcp.read_exact(&mut banner).unwrap();
    assert!(
        banner.starts_with(b"RFB 003."),
        "{:?}",
        String::from_utf8_lossy(&banner)
    );
    drop(tcp);
    let _ = vnc.kill();
    let _ = vnc.wait();

    // reset and soft-reboot: the guest boots again (its marker shows up once more).
    let vmi_uid = server.jsonpath("vmi", name, "{.metadata.uid}");
    let uid = server.launcher_pod_uid(&vmi_uid);
    let qemu = qemu_pids(&uid);
    let mut console = ConsoleCapture::start(&server, name);
    console.wait_for_prompt();

    // fslist: the guest mounts its disk, and the agent's list shows it in upstream's
    // shape. userlist: nobody logged in to the test guest.
    console.send("mount -t iso9660 -o ro /dev/vda /mnt && echo mounted-$((6*7))\r");
    console.wait_for("mounted-42");
    let out = server.virtctl(&["fslist", name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mnt = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|fs| fs["mountPoint"] == "/mnt")
        .unwrap_or_else(|| panic!("no /mnt in {list}"));
    assert_eq!(mnt["fileSystemType"], "iso9660", "{mnt}");
    assert_eq!(mnt["diskName"], "vda", "{mnt}");
    assert_eq!(mnt["disk"][0]["busType"], "virtio", "{mnt}");
    assert!(mnt["totalBytes"].as_u64().unwrap() > 0, "{mnt}");
    let out = server.virtctl(&["userlist", name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let users: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(users, serde_json::json!({"metadata": {}, "items": []}));
    let out = server.virtctl(&["fslist", "missing"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("Error listing filesystems of VirtualMachineInstance missing"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let before = console
        .text()
        .matches(kubevirt_testenv::READY_MARKER)
        .count();
    let out = server.virtctl(&["reset", name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_count(&console, kubevirt_testenv::READY_MARKER, before + 1);
    server.wait_for("vmi", name, "{.status.guestOSInfo.id}", "kubevirt-rs-guest");
    let out = server.virtctl(&["soft-reboot", name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_count(&console, kubevirt_testenv::READY_MARKER, before + 2);
    assert_eq!(qemu_pids(&uid), qemu, "reset and reboot keep the same QEMU");
    assert_eq!(server.jsonpath("vmi", name, "{.metadata.uid}"), vmi_uid);
    drop(console);

    // Errors name the object.
    let out = server.virtctl(&["pause", "vmi", "missing"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"missing\" not found"));
    let out = server.virtctl(&["unpause", "vmi", name]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("VMI is not paused"));

    server.kubectl_ok(&["delete", "vm", name, "--wait=true", "--timeout=120s"]);
    wait_no_processes(&uid);
}

fn wait_count(console: &ConsoleCapture, needle: &str, count: usize) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    while std::time::Instant::now() < deadline {
        if console.text().matches(needle).count() >= count {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{needle:?} never seen {count} times:\n{}", console.text());
}
