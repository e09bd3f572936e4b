//! The web console: the page and its API proxy over the console's own TLS listener, and
//! the whole console driven in Debian's Chromium by Playwright (`web/tests/console.test.mjs`):
//! log in with a token, create a VM from an image URL, see it Running, type into its
//! serial console and read the guest's answer, see a server-side error at its field path,
//! stop it, and as a `view` user find Start and the console disabled. Screenshots of the
//! main pages land in `$CARGO_TARGET_TMPDIR/web-console-screenshots`.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

/// `curl -sk` against the console: status code, headers and body.
fn curl(url: &str, args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args([
            "-sk",
            "-m",
            "20",
            "-D",
            "-",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, code) = text.rsplit_once('\n').unwrap();
    let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
    (
        code.trim().parse().unwrap_or(0),
        head.to_lowercase(),
        body.to_string(),
    )
}

fn static_token(server: &Server, name: &str) -> String {
    let tokens = std::fs::read_to_string(server.data_dir.join("tokens")).unwrap();
    tokens
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap()
        .to_string()
}

#[test]
fn the_console_serves_its_app_and_reaches_the_api_only_as_its_user() {
    let server = Server::start(&[]);
    let url = &server.console_url;
    assert!(url.starts_with("https://127.0.0.1:"), "console URL {url:?}");

    let (code, head, body) = curl(url, &["--compressed"]);
    assert_eq!(code, 200, "{head}");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'self'"),
        "{head}"
    );
    assert!(body.contains("<script"), "{body}");
    // A reload of a deep link gets the app too; a missing script does not.
    let (code, _, deep) = curl(&format!("{url}ns/default/vms"), &["--compressed"]);
    assert_eq!((code, deep.as_str()), (200, body.as_str()));
    let (code, _, _) = curl(&format!("{url}assets/missing.js"), &[]);
    assert_eq!(code, 404);
    // Outside the API's paths the console takes no writes.
    let (code, head, _) = curl(url, &["-X", "POST", "--data-binary", "x"]);
    assert_eq!(code, 405, "{head}");
    assert!(head.contains("allow: get, head"), "{head}");
    // The app's scripts are named after their content and kept by the browser.
    let script = body
        .split("src=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("index.html names its script");
    let (code, head, _) = curl(&format!("{url}{script}"), &["--compressed"]);
    assert_eq!(code, 200, "{head}");
    assert!(head.contains("content-type: text/javascript"), "{head}");
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert!(head.contains("immutable"), "{head}");

    // No token: the API sees an anonymous user, so the proxy lends nobody its own rights.
    let (code, _, body) = curl(&format!("{url}api/v1/namespaces"), &[]);
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains(r#"User \"system:anonymous\" cannot list resource \"namespaces\""#),
        "{body}"
    );

    // The read-only user may look but not create, with kube-apiserver's answers.
    let readonly = format!(
        "Authorization: Bearer {}",
        static_token(&server, "readonly")
    );
    let vms = format!("{url}apis/kubevirt.io/v1/namespaces/default/virtualmachines");
    let (code, _, body) = curl(&vms, &["-H", &readonly]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""kind":"VirtualMachineList""#), "{body}");
    let vm = hostdisk_vm("nope", "Halted", &server.data_dir);
    let vm_json =
        serde_json::to_string(&serde_yaml::from_str::<serde_json::Value>(&vm).unwrap()).unwrap();
    let (code, _, body) = curl(
        &vms,
        &[
            "-H",
            &readonly,
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &vm_json,
        ],
    );
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains(r#"User \"readonly\" cannot create resource \"virtualmachines\""#),
        "{body}"
    );

    // A websocket carries its token as a subprotocol (browsers cannot set headers); a bad
    // one is a 401 and a good one reaches the subresource (here: no such VMI).
    let console = format!(
        "{url}apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/nope/console"
    );
    let websocket = |token: &str| {
        let upgrade = curl_websocket_args(token);
        let upgrade: Vec<&str> = upgrade.iter().map(String::as_str).collect();
        curl(&console, &upgrade)
    };
    let (code, _, body) = websocket("not-a-token");
    assert_eq!(code, 401, "{body}");
    let (code, _, body) = websocket(&static_token(&server, "admin"));
    assert_eq!(code, 404, "{body}");
    assert!(
        body.contains(r#"virtualmachineinstances.kubevirt.io \"nope\" not found"#),
        "{body}"
    );
}

#[test]
fn the_console_in_a_real_browser_creates_runs_and_stops_a_vm() {
    let web = kubevirt_testenv::repo_root().join("web");
    assert!(
        web.join("node_modules/playwright-core").is_dir(),
        "web/node_modules is missing: run scripts/build-web.sh"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "chromium is missing: run scripts/install-host-deps.sh"
    );
    let server = Server::start(&["--stop-vms-on-exit"]);
    let images = HttpDir::serve(&kubevirt_testenv::guests().dir);

    // A user with the `view` role in the namespace, logging in with its ServiceAccount's
    // token as a user of the console would.
    server.kubectl_ok(&["create", "serviceaccount", "viewer"]);
    server.kubectl_ok(&[
        "create",
        "rolebinding",
        "viewer",
        "--clusterrole=view",
        "--serviceaccount=default:viewer",
    ]);
    let view_token = server.kubectl_ok(&["create", "token", "viewer"]);

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web-console-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .arg(web.join("tests/console.test.mjs"))
        .current_dir(&web)
        .env("CONSOLE_URL", &server.console_url)
        .env("ADMIN_TOKEN", static_token(&server, "admin"))
        .env("VIEW_TOKEN", view_token.trim())
        .env("NAMESPACE", "default")
        .env("IMAGE_URL", images.url("disk.qcow2"))
        .env("SCREENSHOT_DIR", &shots)
        .env("CHROMIUM", "/usr/bin/chromium")
        .output()
        .expect("running node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n{stderr}\nscreenshots in {}", shots.display());
    assert!(
        out.status.success(),
        "the browser test failed:\n{stdout}\n{stderr}\nserver log:\n{}",
        tail(&server.log(), 60)
    );
    for shot in ["list.png", "detail.png", "console.png", "view-user.png"] {
        assert!(shots.join(shot).is_file(), "no screenshot {shot}");
    }
    // What the browser did happened in the API: the VM it created was imported from the
    // URL and is stopped now.
    assert_eq!(
        server.jsonpath("vm", "web-vm", "{.status.printableStatus}"),
        "Stopped"
    );
    assert_eq!(
        server.jsonpath("dv", "web-vm-root", "{.spec.source.http.url}"),
        images.url("disk.qcow2")
    );
}
