//! Prints how long the pod network takes: setup, adopt and teardown of a VM's pod (median
//! of N), and QEMU start to `guest-ip: 10.0.2.2` for the test guest under TCG.
//! Needs root. `cargo run -p kubevirt-podnet --example podnet_bench [N]`

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use kubevirt_podnet::{enter_netns_for_child, MasqueradeConfig, PodNetwork, PodNetworkConfig};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let state = tempfile::tempdir().unwrap();
    let net = PodNetwork::new(PodNetworkConfig {
        bridge: format!("kvb{}", std::process::id() % 100_000),
        gateway: Ipv4Addr::new(10, 251, 200, 1),
        prefix_len: 24,
        state_dir: state.path().to_path_buf(),
        netns_prefix: "kvb-".into(),
        host_forwarding: false,
    })
    .unwrap();
    net.ensure_host().unwrap();

    let (mut setup, mut adopt, mut teardown) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let id = format!("bench-{}-{i}", std::process::id());
        let t = Instant::now();
        let h = net.setup(MasqueradeConfig::new(&id, "bench")).unwrap();
        setup.push(t.elapsed());
        let t = Instant::now();
        net.adopt(&id).unwrap();
        adopt.push(t.elapsed());
        let t = Instant::now();
        h.teardown().unwrap();
        teardown.push(t.elapsed());
    }
    println!(
        "pod network, median of {n}: setup {:?}, adopt {:?}, teardown {:?}",
        median(setup),
        median(adopt),
        median(teardown)
    );

    let g = kubevirt_testenv::guests();
    let h = net
        .setup(MasqueradeConfig::new(
            format!("bench-guest-{}", std::process::id()),
            "bench",
        ))
        .unwrap();
    let dhcp = tokio::spawn(h.dhcp_server().unwrap().serve());
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.sock");
    let mut cmd = std::process::Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        "tcg",
        "-m",
        "256",
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
    .arg("-serial")
    .arg(format!("unix:{},server=on,wait=off", serial.display()))
    .args(h.qemu_args("net0"));
    enter_netns_for_child(&mut cmd, &h.netns_path).unwrap();
    let start = Instant::now();
    let mut qemu = cmd.spawn().unwrap();
    let console = tokio::task::spawn_blocking(move || {
        let c = kubevirt_testenv::Console::connect(&serial, Duration::from_secs(30)).unwrap();
        c.wait_for(kubevirt_testenv::READY_MARKER, Duration::from_secs(90))
            .unwrap();
        let ready = start.elapsed();
        c.wait_for("guest-ip: 10.0.2.2", Duration::from_secs(90))
            .unwrap();
        (ready, start.elapsed())
    });
    let (ready, ip) = console.await.unwrap();
    println!("guest (TCG): qemu start -> ready marker {ready:?}, -> guest-ip 10.0.2.2 {ip:?}");
    let _ = qemu.kill();
    let _ = qemu.wait();
    dhcp.abort();
    let _ = dhcp.await;
    h.teardown().unwrap();
    net.teardown_host().unwrap();
}
