//! Live migration end to end with a real guest, virtctl and kubectl: `virtctl migrate` moves
//! a running guest onto a new launcher pod (memory, a run-dir disk and a counter carry on; no
//! reboot; the pod-network address and a port into the guest stay), evicting the launcher
//! pod of a VM with `evictionStrategy: LiveMigrate` migrates it again, so does `kubevirt-rs
//! update-vms`, and `virtctl
//! migrate-cancel` of a migration slowed by a MigrationPolicy, or a target that cannot
//! start, leaves the guest on its source.

mod common;

use std::io::Read;
use std::time::Duration;

use common::*;

/// A console that runs commands and waits for their output.
struct Guest(ConsoleCapture);

impl Guest {
    fn attach(server: &Server, vm: &str) -> Guest {
        Guest(ConsoleCapture::start(server, vm))
    }

    fn run(&mut self, command: &str, want: &str) {
        self.0.run(command, want);
    }

    /// The counter the guest writes to /tmp/ticks, read twice a second apart: it must grow.
    fn ticks_grow(&mut self, tag: &str) -> u64 {
        // `$((1+1))end` prints `2end`, which the echoed command line does not contain.
        self.run(
            &format!(
                "a=$(cat /tmp/ticks); sleep 1; b=$(cat /tmp/ticks); echo {tag}-$a-$b-$((1+1))end"
            ),
            "-2end",
        );
        let text = self.0.text();
        let line = text
            .lines()
            .map(str::trim)
            .rev()
            .find(|l| l.starts_with(&format!("{tag}-")) && l.ends_with("-2end"))
            .unwrap_or_else(|| panic!("no {tag} line in:\n{text}"));
        let nums: Vec<u64> = line
            .split('-')
            .filter_map(|p| p.trim().parse().ok())
            .collect();
        assert!(
            nums.len() == 2 && nums[1] > nums[0],
            "counter stuck: {line}"
        );
        nums[1]
    }
}

fn vm(server: &Server, name: &str, labels: &str) -> String {
    hostdisk_vm(name, "Always", &server.data_dir)
        .replace(
            "  template:\n    spec:\n",
            &format!("  template:\n    metadata:\n      labels: {labels}\n    spec:\n"),
        )
        .replace(
            "        memory:\n",
            "          - name: scratch\n            disk:\n              bus: virtio\n          interfaces:\n          - name: default\n            masquerade: {}\n        memory:\n",
        )
        .replace(
            "      volumes:\n",
            "      networks:\n      - name: default\n        pod: {}\n      volumes:\n      - name: scratch\n        emptyDisk:\n          capacity: 8Mi\n",
        )
}

fn migration_of(server: &Server, vm: &str, path: &str) -> String {
    String::from_utf8_lossy(
        &server
            .kubectl(&[
                "get",
                "vmim",
                "-l",
                &format!("kubevirt.io/vmi-name={vm}"),
                "-o",
                &format!("jsonpath={{.items[0]{path}}}"),
            ])
            .stdout,
    )
    .into_owned()
}

fn wait_migration_phase(server: &Server, vm: &str, want: &str) {
    wait_until(&format!("migration of {vm} {want}"), || {
        let phase = migration_of(server, vm, ".status.phase");
        assert!(
            phase != "Failed" || want == "Failed",
            "migration failed: {}\n{}",
            server.kubectl_ok(&["get", "vmim", "-o", "yaml"]),
            tail(&server.log(), 40)
        );
        phase == want
    });
}

/// The name of the one launcher pod there is.
fn only_launcher_pod(server: &Server) -> String {
    server.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "kubevirt.io=virt-launcher",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ])
}

/// What the guest's port 8080 answers through the pod IP.
fn ask(ip: &str) -> String {
    let mut s = std::net::TcpStream::connect_timeout(
        &format!("{ip}:8080").parse().unwrap(),
        Duration::from_secs(10),
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text
}

#[test]
fn migrate_moves_a_running_guest_to_a_new_launcher() {
    let server = Server::start(&["--stop-vms-on-exit"]);
    let name = "mover";
    server.apply_yaml(&vm(&server, name, "{app: mover}").replace(
        "      terminationGracePeriodSeconds",
        "      evictionStrategy: LiveMigrate\n      terminationGracePeriodSeconds",
    ));
    server.wait_for("vm", name, "{.status.printableStatus}", "Running");
    server.wait_for(
        "vmi",
        name,
        "{.status.conditions[?(@.type==\"LiveMigratable\")].status}",
        "True",
    );
    assert_eq!(
        server.jsonpath("vmi", name, "{.status.migrationMethod}"),
        "LiveMigration"
    );
    let mut guest = Guest::attach(&server, name);
    guest.0.wait_for(kubevirt_testenv::READY_MARKER);
    guest.run(
        "echo before-$((6*7)) > /tmp/mem && printf disk-%s kept > /dev/vdb && sync && echo wrote-$((1+1))",
        "wrote-2",
    );
    guest.run(
        "(i=0; while true; do i=$((i+1)); echo $i > /tmp/ticks; sleep 0.2; done) & echo counting-$((2+2))",
        "counting-4",
    );
    guest.run(
        "(while true; do echo guest-says-hi | nc -l -p 8080; done) & until netstat -ltn | grep -q :8080; do sleep 0.2; done; echo listening-$((3+3))",
        "listening-6",
    );
    let ip = server.jsonpath("vmi", name, "{.status.interfaces[0].ipAddress}");
    assert_eq!(ask(&ip).trim(), "guest-says-hi");
    let before = guest.ticks_grow("t1");
    let source = only_launcher_pod(&server);

    let out = server.virtctl(&["migrate", name]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("VM {name} was scheduled to migrate")
    );
    wait_migration_phase(&server, name, "Succeeded");
    let state = |f: &str| server.jsonpath("vmi", name, &format!("{{.status.migrationState.{f}}}"));
    assert_eq!(state("completed"), "true");
    assert_eq!(state("sourcePod"), source);
    let target = state("targetPod");
    assert!(target.starts_with(&format!("virt-launcher-{name}-")) && target != source);
    assert_eq!(state("mode"), "PreCopy");
    assert!(!state("startTimestamp").is_empty() && !state("endTimestamp").is_empty());
    assert_eq!(
        migration_of(&server, name, ".status.migrationState.targetPod"),
        target,
        "the migration records the VMI's migration state"
    );
    server.wait_for("pod", &target, "{.status.phase}", "Running");
    server.wait_for("pod", &source, "{.status.phase}", "Succeeded");
    server.wait_for("vm", name, "{.status.printableStatus}", "Running");
    server.wait_for("vmi", name, "{.status.phase}", "Running");
    let vmim = migration_of(&server, name, ".metadata.name");
    // The metrics tell of it as upstream's: the migration succeeded, when it started and
    // ended, and none is running now.
    let metrics = server.kubectl_ok(&["get", "--raw", "/metrics"]);
    let node = server.jsonpath("vmi", name, "{.status.nodeName}");
    for want in [
        format!(
            r#"kubevirt_vmi_migration_succeeded{{vmi="{name}",vmim="{vmim}",namespace="default"}} 1.0"#
        ),
        format!(
            r#"kubevirt_vmi_migration_end_time_seconds{{node="{node}",namespace="default",name="{name}",migration_name="{vmim}",status="succeeded"}}"#
        ),
        format!(
            r#"kubevirt_vmi_migration_start_time_seconds{{node="{node}",namespace="default",name="{name}",migration_name="{vmim}"}}"#
        ),
        "kubevirt_vmi_migrations_in_running_phase 0.0".to_string(),
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(&want)),
            "{want} missing from /metrics"
        );
    }
    let events = server.events_of(&vmim);
    for want in [
        "Created migration target pod",
        "Migration target pod is ready for preparation by virt-handler.",
        "Source node reported migration succeeded",
    ] {
        assert!(events.contains(want), "{want:?} missing from:\n{events}");
    }
    let events = server.events_of(name);
    assert!(
        events.contains("The VirtualMachineInstance migrated to node"),
        "{events}"
    );

    // The same guest, not a new boot: memory, the run-dir disk, the counter, the address.
    drop(guest);
    let mut guest = Guest::attach(&server, name);
    guest.run("cat /tmp/mem", "before-42");
    guest.run("head -c 9 /dev/vdb; echo", "disk-kept");
    let after = guest.ticks_grow("t2");
    assert!(after > before, "counter went back: {before} -> {after}");
    assert_eq!(
        server.jsonpath("vmi", name, "{.status.interfaces[0].ipAddress}"),
        ip
    );
    assert_eq!(ask(&ip).trim(), "guest-says-hi");

    // Evicting its launcher pod (what `kubectl drain` does) migrates it again (its
    // evictionStrategy is LiveMigrate): refused with 429 while the VMI is evacuated.
    let evict = |pod: &str| {
        let body = format!(
            r#"{{"apiVersion":"policy/v1","kind":"Eviction","metadata":{{"name":"{pod}","namespace":"default"}}}}"#
        );
        let path = std::env::temp_dir().join(format!("eviction-{pod}.json"));
        std::fs::write(&path, body).unwrap();
        let out = server.kubectl(&[
            "create",
            "--raw",
            &format!("/api/v1/namespaces/default/pods/{pod}/eviction"),
            "-f",
            path.to_str().unwrap(),
        ]);
        let _ = std::fs::remove_file(&path);
        out
    };
    let refused = evict(&target);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(
                "admission webhook \"virt-launcher-eviction-interceptor.kubevirt.io\" denied the request: Eviction triggered evacuation of VMI \"default/mover\""
            ),
        "{refused:?}"
    );
    wait_until("second migration", || {
        server
            .kubectl_ok(&["get", "vmim", "-o", "jsonpath={.items[*].status.phase}"])
            .split_whitespace()
            .filter(|p| *p == "Succeeded")
            .count()
            == 2
    });
    assert!(
        server
            .kubectl_ok(&["get", "vmim", "-o", "name"])
            .contains("kubevirt-evacuation-"),
        "the evacuation made a migration"
    );
    assert_eq!(
        server.jsonpath("vmi", name, "{.status.evacuationNodeName}"),
        ""
    );
    // The pod it left may go now.
    server.wait_for("pod", &target, "{.status.phase}", "Succeeded");
    let out = evict(&target);
    assert!(out.status.success(), "{out:?}");
    server.wait_gone("pod", &target);
    drop(guest);
    let mut guest = Guest::attach(&server, name);
    guest.run("cat /tmp/mem", "before-42");
    assert_eq!(ask(&ip).trim(), "guest-says-hi");

    // After an upgrade, `kubevirt-rs update-vms` moves every running VM onto a fresh
    // launcher the same way.
    let out = std::process::Command::new(kubevirt_rs())
        .args(["update-vms", "--kubeconfig"])
        .arg(&server.kubeconfig)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("default/mover: moved (kubevirt-workload-update-"),
        "{text}"
    );
    assert!(text.contains("1 moved, 0 failed, 0 left alone"), "{text}");
    drop(guest);
    let mut guest = Guest::attach(&server, name);
    guest.run("cat /tmp/mem", "before-42");
    guest.ticks_grow("t3");

    let out = server.virtctl(&["stop", name]);
    assert!(out.status.success(), "{out:?}");
    server.wait_for("vm", name, "{.status.printableStatus}", "Stopped");
}

#[test]
fn migrate_cancel_leaves_the_guest_on_its_source() {
    let server = Server::start(&["--stop-vms-on-exit"]);
    // The install's KubeVirt object is there and up, as upstream's install instructions
    // wait for; its migration configuration is the cluster's.
    let out = server.kubectl_ok(&[
        "-n",
        "kubevirt",
        "wait",
        "kv",
        "kubevirt",
        "--for",
        "condition=Available",
        "--timeout=60s",
    ]);
    assert_eq!(out.trim(), "kubevirt.kubevirt.io/kubevirt condition met");
    let out = server.kubectl_ok(&["get", "kv", "-A"]);
    assert!(
        out.contains("kubevirt    kubevirt") && out.contains("Deployed"),
        "{out}"
    );
    server.kubectl_ok(&[
        "-n", "kubevirt", "patch", "kv", "kubevirt", "--type", "merge", "-p",
        r#"{"spec":{"configuration":{"migrations":{"allowAutoConverge":true,"completionTimeoutPerGiB":90,"bandwidthPerMigration":"8Mi"}}}}"#,
    ]);
    let kv = |path: &str| {
        server.kubectl_ok(&[
            "-n",
            "kubevirt",
            "get",
            "kv",
            "kubevirt",
            "-o",
            &format!("jsonpath={path}"),
        ])
    };
    let generation = kv("{.metadata.generation}");
    wait_until("the KubeVirt object's status follows its spec", || {
        kv("{.status.observedGeneration}") == generation
    });
    // A configuration no migration can run with is refused with its field (the CRD's
    // schema types the part read; admission refuses what upstream's validators refuse);
    // the object keeps what it had, and upstream's other fields are kept as given.
    let refused = |args: &[&str], patch: &str| {
        let out = server.kubectl(&[args, &["--type", "merge", "-p", patch]].concat());
        assert!(!out.status.success(), "{args:?} {patch} was taken");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let patch_kv = ["-n", "kubevirt", "patch", "kv", "kubevirt"];
    let err = refused(
        &patch_kv,
        r#"{"spec":{"configuration":{"migrations":{"completionTimeoutPerGiB":"soon"}}}}"#,
    );
    assert!(
        err.contains(
            "spec.configuration.migrations.completionTimeoutPerGiB in body must be of type integer"
        ),
        "{err}"
    );
    let err = refused(
        &patch_kv,
        r#"{"spec":{"configuration":{"migrations":{"completionTimeoutPerGiB":-1}}}}"#,
    );
    assert!(
        err.contains("spec.configuration.migrations.completionTimeoutPerGiB")
            && err.contains("must not be negative"),
        "{err}"
    );
    let err = refused(
        &patch_kv,
        r#"{"spec":{"configuration":{"migrations":{"parallelMigrationsPerCluster":-2}}}}"#,
    );
    assert!(
        err.contains("spec.configuration.migrations.parallelMigrationsPerCluster"),
        "{err}"
    );
    assert_eq!(
        kv("{.spec.configuration.migrations.completionTimeoutPerGiB}"),
        "90"
    );
    server.kubectl_ok(&[
        &patch_kv[..],
        &["--type", "merge", "-p", r#"{"spec":{"configuration":{"migrations":{"unsafeMigrationOverride":false},"developerConfiguration":{"featureGates":["Snapshot"]}}}}"#],
    ].concat());
    assert_eq!(
        kv("{.spec.configuration.migrations.unsafeMigrationOverride}"),
        "false"
    );
    assert_eq!(
        kv("{.spec.configuration.developerConfiguration.featureGates[0]}"),
        "Snapshot"
    );
    let policy = |name: &str, spec: &str| {
        format!("apiVersion: migrations.kubevirt.io/v1alpha1\nkind: MigrationPolicy\nmetadata:\n  name: {name}\nspec:\n{spec}")
    };
    let out = server.apply_output(&policy("greedy", "  bandwidthPerMigration: -1Mi\n"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("spec.bandwidthPerMigration")
            && err.contains("must not be negative"),
        "{err}"
    );
    server.apply_yaml(&policy(
        "upstream-fields",
        "  maxDowntimeMs: 100\n  selectors:\n    virtualMachineInstanceSelector: {none: here}\n",
    ));
    assert_eq!(
        server.kubectl_ok(&[
            "get",
            "migrationpolicy",
            "upstream-fields",
            "-o",
            "jsonpath={.spec.maxDowntimeMs}"
        ]),
        "100"
    );
    server.kubectl_ok(&["delete", "migrationpolicy", "upstream-fields"]);
    // A migration this slow is still copying when the cancel comes.
    server.apply_yaml(
        r#"apiVersion: migrations.kubevirt.io/v1alpha1
kind: MigrationPolicy
metadata:
  name: slow
spec:
  bandwidthPerMigration: 1Mi
  selectors:
    virtualMachineInstanceSelector:
      speed: slow
"#,
    );
    let name = "stayer";
    server.apply_yaml(&hostdisk_vm(name, "Always", &server.data_dir).replace(
        "  template:\n    spec:\n",
        "  template:\n    metadata:\n      labels: {speed: slow}\n    spec:\n",
    ));
    server.wait_for("vm", name, "{.status.printableStatus}", "Running");
    let mut guest = Guest::attach(&server, name);
    guest.0.wait_for(kubevirt_testenv::READY_MARKER);
    guest.run(
        "dd if=/dev/urandom of=/tmp/fill bs=1M count=24 2>/dev/null; echo filled-$((5*5))",
        "filled-25",
    );
    let source = only_launcher_pod(&server);

    let out = server.virtctl(&["migrate", name]);
    assert!(out.status.success(), "{out:?}");
    wait_migration_phase(&server, name, "Running");
    server.wait_for("vm", name, "{.status.printableStatus}", "Migrating");
    let state = |f: &str| server.jsonpath("vmi", name, &format!("{{.status.migrationState.{f}}}"));
    assert_eq!(state("migrationPolicyName"), "slow");
    // The policy's bandwidth over the cluster's, the cluster's settings over upstream's
    // defaults.
    let config = |f: &str| state(&format!("migrationConfiguration.{f}"));
    assert_eq!(config("bandwidthPerMigration"), "1Mi");
    assert_eq!(config("allowAutoConverge"), "true");
    assert_eq!(config("completionTimeoutPerGiB"), "90");
    assert_eq!(config("parallelMigrationsPerCluster"), "5");
    assert_eq!(config("allowPostCopy"), "false");
    let vmim = migration_of(&server, name, ".metadata.name");
    let target = state("targetPod");

    let out = server.virtctl(&["migrate-cancel", name]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("VM {name} was scheduled to migrate-cancel")
    );
    server.wait_gone("vmim", &vmim);
    assert_eq!(state("abortStatus"), "Succeeded");
    assert_eq!(state("failed"), "true");
    assert_eq!(state("completed"), "");
    server.wait_gone("pod", &target);
    assert_eq!(
        server.jsonpath("pod", &source, "{.status.phase}"),
        "Running"
    );
    server.wait_for("vm", name, "{.status.printableStatus}", "Running");
    // The guest never left: the same console still answers.
    guest.run("ls -la /tmp/fill | wc -l; echo still-$((7*7))", "still-49");

    // A target that cannot start (its root disk is gone from the host; the source's QEMU
    // still holds it open) fails the migration with the target's reason; the guest stays.
    std::fs::remove_file(server.data_dir.join(format!("{name}.img"))).unwrap();
    let out = server.virtctl(&["migrate", name]);
    assert!(out.status.success(), "{out:?}");
    wait_until("the second migration to fail", || {
        server.kubectl_ok(&[
            "get",
            "vmim",
            "-l",
            &format!("kubevirt.io/vmi-name={name}"),
            "-o",
            "jsonpath={.items[*].status.phase}",
        ]) == "Failed"
    });
    let reason = state("failureReason");
    assert!(reason.contains("root"), "{reason}");
    let failed = migration_of(&server, name, ".metadata.name");
    let events = server.events_of(&failed);
    assert!(
        events.contains("source node reported migration failed"),
        "{events}"
    );
    assert_eq!(
        server.jsonpath("pod", &source, "{.status.phase}"),
        "Running"
    );
    server.wait_for("vm", name, "{.status.printableStatus}", "Running");
    guest.run("echo still-here-$((8*8))", "still-here-64");

    let again = server.virtctl(&["migrate-cancel", name]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("Found no migration to cancel for stayer"),
        "{again:?}"
    );
    // Bodies that are not what they claim get a clear refusal and change nothing.
    let raw = |verb: &str, path: &str, body: &str| {
        let file = server.data_dir.join("raw-body.json");
        std::fs::write(&file, body).unwrap();
        server.kubectl(&[verb, "--raw", path, "-f", file.to_str().unwrap()])
    };
    let bad = raw(
        "replace",
        &format!(
            "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachines/{name}/migrate"
        ),
        r#"{"addedNodeSelector": ["not", "a", "map"]}"#,
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("Can not unmarshal Request body to struct"),
        "{bad:?}"
    );
    let bad = raw(
        "create",
        &format!("/api/v1/namespaces/default/pods/{source}/eviction"),
        r#"{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"someone-else"}}"#,
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr)
            .contains("name in URL does not match name in Eviction object"),
        "{bad:?}"
    );
    assert_eq!(
        server.kubectl_ok(&[
            "get",
            "vmim",
            "-l",
            &format!("kubevirt.io/vmi-name={name}"),
            "-o",
            "jsonpath={.items[*].status.phase}"
        ]),
        "Failed",
        "no migration was made"
    );
    assert_eq!(
        server.jsonpath("pod", &source, "{.status.phase}"),
        "Running"
    );

    // A target pod no node can take is given up after the migration's unschedulable
    // timeout (upstream's annotation; 5 minutes by default): the migration fails and the
    // guest stays where it is.
    server.apply_yaml(&format!(
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachineInstanceMigration
metadata:
  name: nowhere
  annotations:
    kubevirt.io/migrationUnschedulablePodTimeoutSeconds: "3"
spec:
  vmiName: {name}
  addedNodeSelector:
    kubevirt.io/no-such-node: "true"
"#
    ));
    server.wait_for("vmim", "nowhere", "{.status.phase}", "Failed");
    let events = server.events_of("nowhere");
    for want in [
        "Migration target pod for VMI [default/stayer] is currently unschedulable.",
        "timeout period exceeded",
        "Migration target pod was removed during active migration.",
    ] {
        assert!(events.contains(want), "{want:?} in {events}");
    }
    assert_eq!(
        server.jsonpath("pod", &source, "{.status.phase}"),
        "Running"
    );
    guest.run("echo stayed-$((9*9))", "stayed-81");

    // A migration names its VMI.
    let out = server.apply_output(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstanceMigration\nmetadata:\n  name: nameless\nspec: {}\n",
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spec.vmiName"),
        "{out:?}"
    );
}
