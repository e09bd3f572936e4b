//! Teams sharing the embedded server, as an administrator sets them up with kubectl: a
//! namespace per team, a ServiceAccount bound to KubeVirt's edit role, its token; that
//! user starts a VM and opens its console in its own namespace and nowhere else; a view
//! user reads but cannot reach into the VM; a quota keeps a VM from starting and the VMI
//! says why, in upstream's words.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn run_as(kubeconfig: &Path, program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A ServiceAccount in `ns` bound to `role` there, and a kubeconfig with its token.
fn team_user(server: &Server, ns: &str, name: &str, role: &str) -> PathBuf {
    server.kubectl_ok(&["-n", ns, "create", "serviceaccount", name]);
    server.kubectl_ok(&[
        "-n",
        ns,
        "create",
        "rolebinding",
        name,
        &format!("--clusterrole={role}"),
        &format!("--serviceaccount={ns}:{name}"),
    ]);
    let token = server.kubectl_ok(&["-n", ns, "create", "token", name]);
    // The admin kubeconfig with the token in place of the admin's.
    let admin = std::fs::read_to_string(&server.kubeconfig).unwrap();
    let text: String = admin
        .lines()
        .map(|l| match l.trim_start().strip_prefix("token: ") {
            Some(_) => format!("    token: {}", token.trim()),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = server.data_dir.join(format!("kubeconfig-{name}"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn teams_run_their_own_vms_and_nobody_else_s() {
    let server = Server::start(&["--stop-vms-on-exit"]);
    server.kubectl_ok(&["create", "namespace", "team-a"]);
    server.kubectl_ok(&["create", "namespace", "team-b"]);
    let alice = team_user(&server, "team-a", "alice", "kubevirt.io:edit");
    let viewer = team_user(&server, "team-a", "viewer", "view");
    let kubectl = Path::new("/usr/bin/kubectl");
    let virtctl = virtctl();

    let name = "teamvm";
    let vm = hostdisk_vm(name, "Halted", &server.data_dir).replacen(
        &format!("name: {name}\n"),
        &format!("name: {name}\n  namespace: team-a\n"),
        1,
    );
    let mut apply = Command::new(kubectl)
        .args(["apply", "-f", "-"])
        .env("KUBECONFIG", &alice)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    apply
        .stdin
        .take()
        .unwrap()
        .write_all(vm.as_bytes())
        .unwrap();
    let o = apply.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));

    // Alice waits for the controller to take the VM in (a start racing its first status
    // write is refused as a conflict, as upstream's), then starts it and reads its console.
    let printable = || {
        let o = run_as(
            &alice,
            kubectl,
            &[
                "-n",
                "team-a",
                "get",
                "vm",
                name,
                "-o",
                "jsonpath={.status.printableStatus}",
            ],
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    for _ in 0..300 {
        if printable() == "Stopped" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let o = run_as(&alice, &virtctl, &["start", "-n", "team-a", name]);
    assert!(o.status.success(), "{}", text(&o));
    for _ in 0..300 {
        if printable() == "Running" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert_eq!(
        printable(),
        "Running",
        "{name} never ran:\n{}",
        tail(&server.log(), 40)
    );
    let mut console = ConsoleCapture::start_as(&alice, &["console", "-n", "team-a", name]);
    console.wait_for_prompt();
    drop(console);

    // Not in another team's namespace.
    let o = run_as(&alice, &virtctl, &["start", "-n", "team-b", name]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("User \"system:serviceaccount:team-a:alice\" cannot update resource \"virtualmachines/start\" in API group \"subresources.kubevirt.io\" in the namespace \"team-b\""),
        "{}",
        text(&o)
    );

    // The viewer sees it but cannot open its console or VNC, nor stop it.
    let o = run_as(&viewer, kubectl, &["-n", "team-a", "get", "vmi", name]);
    assert!(o.status.success(), "{}", text(&o));
    for args in [
        vec!["console", "-n", "team-a", name, "--timeout", "1"],
        vec!["vnc", "-n", "team-a", name, "--proxy-only"],
        vec!["stop", "-n", "team-a", name],
    ] {
        let o = run_as(&viewer, &virtctl, &args);
        assert!(!o.status.success(), "{args:?}: {}", text(&o));
        assert!(text(&o).contains("forbidden"), "{args:?}: {}", text(&o));
    }
    assert_eq!(printable(), "Running");

    // A memory quota below what a second VM's launcher pod asks: that VM does not start,
    // and its VMI says why as upstream's does.
    server.kubectl_ok(&[
        "-n",
        "team-a",
        "create",
        "quota",
        "mem",
        "--hard=requests.memory=300Mi",
    ]);
    let second = "teamvm2";
    let vm2 = hostdisk_vm(second, "Always", &server.data_dir).replacen(
        &format!("name: {second}\n"),
        &format!("name: {second}\n  namespace: team-a\n"),
        1,
    );
    server.apply_yaml(&vm2);
    let mut message = String::new();
    for _ in 0..200 {
        let o = server.kubectl(&[
            "-n",
            "team-a",
            "get",
            "vmi",
            second,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Synchronized\")].message}",
        ]);
        message = String::from_utf8_lossy(&o.stdout).into_owned();
        if !message.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        message.starts_with("failed to create virtual machine pod: pods \"virt-launcher-teamvm2-"),
        "{message}"
    );
    assert!(
        message.contains("is forbidden: exceeded quota: mem, requested: requests.memory="),
        "{message}"
    );
    let status = String::from_utf8_lossy(
        &server
            .kubectl(&[
                "-n",
                "team-a",
                "get",
                "vm",
                second,
                "-o",
                "jsonpath={.status.printableStatus}",
            ])
            .stdout,
    )
    .into_owned();
    assert_eq!(status, "Starting");
    let events = server.kubectl_ok(&[
        "-n",
        "team-a",
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={second}"),
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert!(events.contains("FailedCreate"), "{events}");
}
