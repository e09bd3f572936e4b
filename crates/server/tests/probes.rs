//! Readiness and liveness probes as upstream: rendered onto the launcher pod, run by the
//! embedded node (an HTTP readiness probe to the guest's web server through the pod
//! network; an exec liveness probe through the guest agent). A guest whose web server
//! stops goes Ready=False with `Unhealthy` events; a failing liveness probe stops the VMI
//! and the VM's run strategy starts a new one.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Every event, `REASON: message` per line (the probes' are the launcher pod's).
fn events(server: &Server) -> String {
    server.kubectl_ok(&[
        "get",
        "events",
        "-o",
        "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
    ])
}

fn ready(server: &Server, name: &str) -> String {
    server.jsonpath(
        "vmi",
        name,
        r#"{.status.conditions[?(@.type=="Ready")].status}"#,
    )
}

fn wait_ready(server: &Server, name: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while ready(server, name) != want {
        assert!(
            Instant::now() < deadline,
            "VMI Ready never became {want}; events:\n{}",
            events(server)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn readiness_follows_the_guests_web_server_and_liveness_restarts_the_vm() {
    let server = Server::start(&["--stop-vms-on-exit"]);
    let name = "probed";
    let vm = hostdisk_vm(name, "Always", &server.data_dir).replace(
        "      terminationGracePeriodSeconds: 30\n",
        r#"      terminationGracePeriodSeconds: 30
      readinessProbe:
        httpGet:
          port: 8080
          path: /
        periodSeconds: 2
        failureThreshold: 2
      livenessProbe:
        exec:
          command: ["/bin/sh", "-c", "! test -e /tmp/dead"]
        # Past a slow boot on a loaded machine: the guest agent must be up first.
        initialDelaySeconds: 20
        periodSeconds: 2
        failureThreshold: 2
"#,
    );
    server.apply_yaml(&vm);
    server.wait_for("vm", name, "{.status.printableStatus}", "Running");
    let first_uid = server.jsonpath("vmi", name, "{.metadata.uid}");

    // Rendered onto the pod as upstream: the startup delay added, exec through virt-probe.
    let pod = server.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        &format!("vm.kubevirt.io/name={name}"),
        "-o",
        "jsonpath={.items[0].spec.containers[0].readinessProbe.initialDelaySeconds} {.items[0].spec.containers[0].livenessProbe.exec.command[0]}",
    ]);
    assert_eq!(pod, "10 virt-probe");

    // Nothing listens on 8080 yet: the guest runs but is not ready, and the kubelet says why.
    server.wait_for("vmi", name, "{.status.phase}", "Running");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !events(&server).contains("Unhealthy: Readiness probe failed: Get \"http://") {
        assert!(
            Instant::now() < deadline,
            "no Unhealthy event:\n{}",
            events(&server)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(ready(&server, name), "False");

    // The guest starts a web server: ready. It stops it: not ready again.
    let mut console = ConsoleCapture::start(&server, name);
    console.wait_for_prompt();
    console.send("mkdir -p /www && echo ok >/www/index.html && httpd -p 8080 -h /www && echo started-$((6*7))\r");
    console.wait_for("started-42");
    wait_ready(&server, name, "True");
    console.send("killall httpd && echo stopped-$((6*7))\r");
    console.wait_for("stopped-42");
    wait_ready(&server, name, "False");

    // The liveness probe fails twice: the VMI ends and the VM starts a new one.
    console.send("touch /tmp/dead && echo dead-$((6*7))\r");
    console.wait_for("dead-42");
    drop(console);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let uid = server.jsonpath("vmi", name, "{.metadata.uid}");
        if !uid.is_empty() && uid != first_uid {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new VMI; events:\n{}",
            events(&server)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let all = events(&server);
    assert!(
        all.contains("Killing: Container compute failed liveness probe, will be restarted"),
        "{all}"
    );
    server.wait_for("vm", name, "{.status.printableStatus}", "Running");
}
