//! Reaching a guest as upstream users do: an SSH key and a password from Secrets, delivered
//! through the guest agent (`accessCredentials`) and kept in step when the Secret changes;
//! `virtctl ssh`, `scp` and `port-forward` reaching the guest's dropbear through the API's
//! port-forward stream alone (the test never dials the pod network itself).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{hostdisk_vm, tail, virtctl, wait_until, Server};

const NAME: &str = "box";
const SYNCED: &str = "{.status.conditions[?(@.type==\"AccessCredentialsSynchronized\")].status}";

/// A fresh ed25519 key pair: (private key file, public key line).
fn keypair(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .output()
        .expect("running ssh-keygen");
    assert!(out.status.success(), "{out:?}");
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public.trim().to_string())
}

/// Options every ssh/scp call gets: no host key prompts, no agent, no other keys.
const LOCAL_OPTS: &[&str] = &[
    "--local-ssh-opts=-oStrictHostKeyChecking=no",
    "--local-ssh-opts=-oUserKnownHostsFile=/dev/null",
    "--local-ssh-opts=-oIdentitiesOnly=yes",
    "--local-ssh-opts=-oConnectTimeout=60",
    "--local-ssh-opts=-oLogLevel=ERROR",
];

fn run(server: &Server, args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(virtctl())
        .args(args)
        .env("KUBECONFIG", &server.kubeconfig)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("running virtctl")
}

/// `virtctl ssh` with a key, running `command` in the guest.
fn ssh_with_key(server: &Server, key: &Path, command: &str) -> Output {
    let key = key.to_str().unwrap();
    let mut args = vec![
        "ssh",
        "root@vmi/box",
        "-i",
        key,
        "--local-ssh-opts=-oBatchMode=yes",
    ];
    args.extend(LOCAL_OPTS);
    args.extend(["-c", command]);
    run(server, &args, &[])
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn ssh_scp_and_port_forward_with_credentials_from_secrets() {
    let server = Server::start(&["--stop-vms-on-exit"]);
    let keys = tempfile::tempdir().unwrap();
    let (first, first_pub) = keypair(keys.path(), "first");
    let (second, second_pub) = keypair(keys.path(), "second");
    server.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "keys",
        &format!("--from-literal=first={first_pub}"),
    ]);
    server.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "passwords",
        "--from-literal=root=Open-Sesame-42",
    ]);
    let vm = hostdisk_vm(NAME, "Always", &server.data_dir).replace(
        "      terminationGracePeriodSeconds: 30\n",
        "      terminationGracePeriodSeconds: 30
      accessCredentials:
      - sshPublicKey:
          source: {secret: {secretName: keys}}
          propagationMethod: {qemuGuestAgent: {users: [root]}}
      - userPassword:
          source: {secret: {secretName: passwords}}
          propagationMethod: {qemuGuestAgent: {}}
",
    );
    server.apply_yaml(&vm);
    server.wait_for("vm", NAME, "{.status.printableStatus}", "Running");
    wait_synced(&server, "True");
    let events = server.events_of(NAME);
    assert!(
        events.contains("AccessCredentialsSyncSuccess")
            && events.contains("Access credentials sync successful."),
        "{events}"
    );

    // The guest agent's view of the network joins the VMI's status: the guest's name for
    // the interface, and (masquerade) the pod's address stays the one reported.
    let pod_ip = server.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        &format!("vm.kubevirt.io/name={NAME}"),
        "-o",
        "jsonpath={.items[0].status.podIP}",
    ]);
    assert!(!pod_ip.is_empty());
    server.wait_for(
        "vmi",
        NAME,
        "{.status.interfaces[0].interfaceName} {.status.interfaces[0].infoSource} {.status.interfaces[0].ipAddress}",
        &format!("eth0 domain, guest-agent {pod_ip}"),
    );

    // The key from the Secret opens a shell; the command's output comes back.
    let out = ssh_with_key(&server, &first, "echo guest-says-$((6*7)); uname -s");
    assert!(out.status.success(), "{out:?}\n{}", tail(&server.log(), 40));
    assert_eq!(stdout(&out), "guest-says-42\nLinux");
    // Its exit code too.
    let out = ssh_with_key(&server, &first, "exit 3");
    assert_eq!(out.status.code(), Some(3), "{out:?}");

    // The password from the Secret logs in (ssh asks the askpass script, never a terminal).
    let askpass = keys.path().join("askpass");
    std::fs::write(&askpass, "#!/bin/sh\necho Open-Sesame-42\n").unwrap();
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut args = vec![
        "ssh",
        "vmi/box",
        "-l",
        "root",
        "--local-ssh-opts=-oPubkeyAuthentication=no",
        "--local-ssh-opts=-oPreferredAuthentications=password,keyboard-interactive",
        "--local-ssh-opts=-oNumberOfPasswordPrompts=1",
    ];
    args.extend(LOCAL_OPTS);
    args.extend(["-c", "echo password-login"]);
    let askpass = askpass.to_str().unwrap();
    let out = run(
        &server,
        &args,
        &[("SSH_ASKPASS", askpass), ("SSH_ASKPASS_REQUIRE", "force")],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "password-login");

    // scp there and back gives the same bytes.
    let local = keys.path().join("payload");
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&local, &payload).unwrap();
    let back = keys.path().join("back");
    let key = first.to_str().unwrap();
    for (from, to) in [
        (local.to_str().unwrap(), "root@vmi/box:/tmp/payload"),
        ("root@vmi/box:/tmp/payload", back.to_str().unwrap()),
    ] {
        let mut args = vec!["scp", "-i", key];
        args.extend(LOCAL_OPTS);
        args.extend([from, to]);
        let out = run(&server, &args, &[]);
        assert!(out.status.success(), "scp {from} {to}: {out:?}");
    }
    assert!(
        std::fs::read(&back).unwrap() == payload,
        "scp changed the bytes"
    );

    // port-forward with a local listener: plain ssh to 127.0.0.1:<port> reaches the guest.
    let (mut forward, port) = port_forward(&server, &["--address", "127.0.0.1", "vmi/box", "0:22"]);
    let out = Command::new("ssh")
        .args(["-p", &port.to_string(), "-i", key, "-oBatchMode=yes"])
        .args(
            LOCAL_OPTS
                .iter()
                .map(|o| o.trim_start_matches("--local-ssh-opts=")),
        )
        .args(["root@127.0.0.1", "echo through-the-listener"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = forward.kill();
    let _ = forward.wait();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "through-the-listener");

    // UDP: the guest's echo server answers a datagram sent to the local port.
    let out = ssh_with_key(
        &server,
        &first,
        "setsid udp-echo 5353 </dev/null >/dev/null 2>&1 & echo started",
    );
    assert_eq!(stdout(&out), "started", "{out:?}");
    let (mut forward, port) = port_forward(&server, &["vmi/box/default", "udp/0:5353"]);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut answer = String::new();
    for _ in 0..15 {
        sock.send_to(b"ping", ("127.0.0.1", port)).unwrap();
        let mut buf = [0u8; 64];
        if let Ok(n) = sock.recv(&mut buf) {
            answer = String::from_utf8_lossy(&buf[..n]).into_owned();
            break;
        }
    }
    let _ = forward.kill();
    let _ = forward.wait();
    assert_eq!(answer, "echo:ping");

    // Replacing the Secret's key reaches the guest while it runs: the new key works, the
    // old one no longer does.
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: keys}}\nstringData: {{second: \"{second_pub}\"}}\n"
    );
    server.kubectl_ok(&["delete", "secret", "keys"]);
    server.apply_yaml(&secret);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = ssh_with_key(&server, &second, "echo second-key");
        if out.status.success() {
            assert_eq!(stdout(&out), "second-key");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new key never worked: {out:?}\n{}",
            tail(&server.log(), 40)
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let out = ssh_with_key(&server, &first, "true");
    assert!(!out.status.success(), "the replaced key still logs in");

    // A rebooted guest forgot its keys (they lived in its initramfs): they come back once
    // its agent does.
    let out = ssh_with_key(&server, &second, "echo $$ > /tmp/before-reboot");
    assert!(out.status.success(), "{out:?}");
    let out = run(&server, &["soft-reboot", NAME], &[]);
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = ssh_with_key(
            &server,
            &second,
            "test -e /tmp/before-reboot || echo rebooted",
        );
        if stdout(&out) == "rebooted" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no login after the reboot: {out:?}\n{}",
            tail(&server.log(), 40)
        );
        std::thread::sleep(Duration::from_secs(2));
    }

    // A missing Secret turns the condition False with the reason, and a warning.
    server.kubectl_ok(&["delete", "secret", "passwords"]);
    wait_synced(&server, "False");
    let message = server.jsonpath(
        "vmi",
        NAME,
        "{.status.conditions[?(@.type==\"AccessCredentialsSynchronized\")].message}",
    );
    assert_eq!(message, "secret \"passwords\" not found");
    wait_until("the sync failure event", || {
        server
            .events_of(NAME)
            .contains("Access credentials sync failed: secret \"passwords\" not found")
    });

    // Refusals keep upstream's shapes: a port nothing listens on, a VMI that is not there.
    let out = run(
        &server,
        &["port-forward", "--stdio=true", "vmi/box", "9"],
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("dialing VM: dial tcp") && err.contains(":9"),
        "{err}"
    );
    let out = run(
        &server,
        &["port-forward", "--stdio=true", "vmi/nope", "22"],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("virtualmachineinstance.kubevirt.io \"nope\" not found"),
        "{err}"
    );
}

/// Waits for the `AccessCredentialsSynchronized` condition's status, showing the
/// conditions and events when it does not come.
fn wait_synced(server: &Server, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while server.jsonpath("vmi", NAME, SYNCED) != want {
        assert!(
            Instant::now() < deadline,
            "AccessCredentialsSynchronized never {want}: {}\n{}",
            server.jsonpath("vmi", NAME, "{.status.conditions}"),
            server.events_of(NAME)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Starts `virtctl port-forward ARGS` (one port) and returns it with the local port it
/// listens on, read from its log.
fn port_forward(server: &Server, args: &[&str]) -> (Child, u16) {
    let mut child = Command::new(virtctl())
        .arg("port-forward")
        .args(args)
        .env("KUBECONFIG", &server.kubeconfig)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let port = listening_port(child.stderr.take().unwrap());
    (child, port)
}

/// Reads the port-forward's log until it names the local port it listens on.
fn listening_port(stderr: impl Read + Send + 'static) -> u16 {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        // "forwarding tcp 127.0.0.1:PORT to 22"
        if let Some(port) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("127.0.0.1:"))
            .and_then(|p| p.parse().ok())
        {
            return port;
        }
        seen.push(line);
    }
    let _ = std::io::stderr().write_all(seen.join("\n").as_bytes());
    panic!("port-forward never said where it listens: {seen:?}");
}
