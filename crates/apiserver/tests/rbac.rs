//! Users, RBAC and namespaces as an administrator meets them: everything through kubectl
//! against the real server, and compared with kube-apiserver's messages.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{kubectl_with, TestServer, VM_YAML};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A kubeconfig file for a bearer token (what a user does with `kubectl create token`).
fn token_kubeconfig(s: &TestServer, name: &str, token: &str) -> PathBuf {
    let ca = std::fs::read_to_string(s.dir.path().join("ca.crt")).unwrap();
    let text = kubevirt_apiserver::tls::kubeconfig(
        &format!("https://{}", s.addr),
        &ca,
        name,
        token.trim(),
    );
    let path = s.dir.path().join(format!("kubeconfig-{name}"));
    std::fs::write(&path, text).unwrap();
    path
}

struct As<'a>(&'a Path);

impl As<'_> {
    fn run(&self, args: &[&str]) -> Output {
        kubectl_with(self.0, args, None)
    }
    fn run_stdin(&self, args: &[&str], stdin: &str) -> Output {
        kubectl_with(self.0, args, Some(stdin))
    }
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "kubectl {args:?}: {}", stderr(&o));
        stdout(&o)
    }
    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            !o.status.success(),
            "kubectl {args:?} succeeded: {}",
            stdout(&o)
        );
        stderr(&o)
    }
}

/// Namespaces team-a and team-b; a ServiceAccount in team-a bound to `role` there; its
/// token from the TokenRequest API.
fn service_account_user(s: &TestServer, name: &str, role: &str) -> PathBuf {
    let _ = s.kubectl(&["create", "namespace", "team-a"]);
    let _ = s.kubectl(&["create", "namespace", "team-b"]);
    s.ok(&["-n", "team-a", "create", "serviceaccount", name]);
    s.ok(&[
        "-n",
        "team-a",
        "create",
        "rolebinding",
        &format!("{name}-{}", role.replace([':', '.'], "-")),
        &format!("--clusterrole={role}"),
        &format!("--serviceaccount=team-a:{name}"),
    ]);
    let token = s.ok(&["-n", "team-a", "create", "token", name]);
    token_kubeconfig(s, name, &token)
}

#[test]
fn a_team_editor_works_in_its_namespace_and_nowhere_else() {
    let s = TestServer::start();
    let kc = service_account_user(&s, "alice", "kubevirt.io:edit");
    let alice = As(&kc);
    let me = "system:serviceaccount:team-a:alice";

    assert_eq!(
        alice.ok(&[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}"
        ]),
        me
    );
    let groups = alice.ok(&["auth", "whoami", "-o", "jsonpath={.status.userInfo.groups}"]);
    assert!(
        groups.contains("system:serviceaccounts:team-a") && groups.contains("system:authenticated"),
        "{groups}"
    );

    // Her namespace: create, list, delete.
    let o = alice.run_stdin(&["-n", "team-a", "create", "-f", "-"], VM_YAML);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(alice.ok(&["-n", "team-a", "get", "vms"]).contains("testvm"));

    // Another namespace: refused with kube-apiserver's words.
    let e = alice.fails(&["-n", "team-b", "get", "vms"]);
    assert!(e.contains(&format!("Error from server (Forbidden): virtualmachines.kubevirt.io is forbidden: User \"{me}\" cannot list resource \"virtualmachines\" in API group \"kubevirt.io\" in the namespace \"team-b\"")), "{e}");
    let o = alice.run_stdin(&["-n", "team-b", "create", "-f", "-"], VM_YAML);
    assert!(!o.status.success());
    assert!(stderr(&o).contains(&format!("virtualmachines.kubevirt.io is forbidden: User \"{me}\" cannot create resource \"virtualmachines\" in API group \"kubevirt.io\" in the namespace \"team-b\"")), "{}", stderr(&o));
    // All namespaces and cluster-scoped objects.
    let e = alice.fails(&["get", "vms", "-A"]);
    assert!(e.contains("cannot list resource \"virtualmachines\" in API group \"kubevirt.io\" at the cluster scope"), "{e}");
    let e = alice.fails(&["get", "nodes"]);
    assert!(e.contains(&format!("nodes is forbidden: User \"{me}\" cannot list resource \"nodes\" in API group \"\" at the cluster scope")), "{e}");
    let e = alice.fails(&[
        "create",
        "clusterrole",
        "mine",
        "--verb=get",
        "--resource=pods",
    ]);
    assert!(e.contains("cannot create resource \"clusterroles\" in API group \"rbac.authorization.k8s.io\" at the cluster scope"), "{e}");

    // kubectl auth can-i, with and without --list.
    assert_eq!(
        alice
            .ok(&["auth", "can-i", "create", "virtualmachines", "-n", "team-a"])
            .trim(),
        "yes"
    );
    let o = alice.run(&["auth", "can-i", "create", "virtualmachines", "-n", "team-b"]);
    assert_eq!((o.status.code(), stdout(&o).trim()), (Some(1), "no"));
    let list = alice.ok(&["auth", "can-i", "--list", "-n", "team-a"]);
    assert!(list.contains("virtualmachines.kubevirt.io"), "{list}");
    assert!(
        list.contains("virtualmachines.subresources.kubevirt.io/start"),
        "{list}"
    );
    // The administrator asks on her behalf (impersonation).
    let o = s.kubectl(&[
        "auth",
        "can-i",
        "delete",
        "virtualmachines",
        "-n",
        "team-b",
        "--as",
        me,
    ]);
    assert_eq!(stdout(&o).trim(), "no");
    let o = s.kubectl(&[
        "auth",
        "can-i",
        "delete",
        "virtualmachines",
        "-n",
        "team-a",
        "--as",
        me,
    ]);
    assert_eq!(stdout(&o).trim(), "yes");
    // SubjectAccessReview, as webhooks and controllers ask it.
    let sar = |ns: &str| {
        format!("apiVersion: authorization.k8s.io/v1\nkind: SubjectAccessReview\nspec:\n  user: {me}\n  groups: [system:serviceaccounts, system:authenticated]\n  resourceAttributes:\n    namespace: {ns}\n    verb: get\n    group: subresources.kubevirt.io\n    resource: virtualmachineinstances\n    subresource: console\n")
    };
    let o = s.kubectl_stdin(
        // Client-side validation of create-only kinds wants protobuf OpenAPI v2.
        &[
            "create",
            "--validate=false",
            "-f",
            "-",
            "-o",
            "jsonpath={.status.allowed}",
        ],
        &sar("team-a"),
    );
    assert_eq!(stdout(&o), "true", "{}", stderr(&o));
    let o = s.kubectl_stdin(
        // Client-side validation of create-only kinds wants protobuf OpenAPI v2.
        &[
            "create",
            "--validate=false",
            "-f",
            "-",
            "-o",
            "jsonpath={.status.allowed}",
        ],
        &sar("team-b"),
    );
    assert_eq!(stdout(&o), "false", "{}", stderr(&o));
    // She may not impersonate anyone.
    let e = alice.fails(&["get", "vms", "-n", "team-a", "--as", "bob"]);
    assert!(e.contains(&format!("users \"bob\" is forbidden: User \"{me}\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope")), "{e}");

    // KubeVirt's subresources are authorized as virt-api's are: edit may start and open
    // a console (the bare API server then has no such route: 404, not 403).
    let start = "/apis/subresources.kubevirt.io/v1/namespaces/team-a/virtualmachines/testvm/start";
    let o = alice.run_stdin(&["replace", "--raw", start, "-f", "-"], "{}");
    assert!(!stderr(&o).contains("Forbidden"), "{}", stderr(&o));

    // A screenshot is more than VNC access: KubeVirt grants `vnc/screenshot` to admin only.
    let shot = "/apis/subresources.kubevirt.io/v1/namespaces/team-a/virtualmachineinstances/testvm/vnc/screenshot";
    let e = alice.fails(&["get", "--raw", shot]);
    assert!(e.contains("cannot get resource \"virtualmachineinstances/vnc/screenshot\" in API group \"subresources.kubevirt.io\""), "{e}");

    // A deleted ServiceAccount's tokens stop working.
    s.ok(&["-n", "team-a", "delete", "serviceaccount", "alice"]);
    let e = alice.fails(&["-n", "team-a", "get", "vms"]);
    assert!(e.contains("Unauthorized"), "{e}");
}

#[test]
fn a_viewer_reads_but_cannot_reach_into_a_vm() {
    let s = TestServer::start();
    let kc = service_account_user(&s, "viewer", "view");
    let viewer = As(&kc);
    s.kubectl_stdin(&["-n", "team-a", "create", "-f", "-"], VM_YAML);
    assert!(viewer
        .ok(&["-n", "team-a", "get", "vms"])
        .contains("testvm"));
    let me = "system:serviceaccount:team-a:viewer";
    let e = viewer.fails(&["-n", "team-a", "delete", "vm", "testvm"]);
    assert!(e.contains(&format!("virtualmachines.kubevirt.io \"testvm\" is forbidden: User \"{me}\" cannot delete resource \"virtualmachines\" in API group \"kubevirt.io\" in the namespace \"team-a\"")), "{e}");
    for (verb_args, path, what) in [
        (
            vec!["get", "--raw"],
            "/apis/subresources.kubevirt.io/v1/namespaces/team-a/virtualmachineinstances/testvm/console",
            "cannot get resource \"virtualmachineinstances/console\" in API group \"subresources.kubevirt.io\"",
        ),
        (
            vec!["get", "--raw"],
            "/apis/subresources.kubevirt.io/v1/namespaces/team-a/virtualmachineinstances/testvm/vnc",
            "cannot get resource \"virtualmachineinstances/vnc\" in API group \"subresources.kubevirt.io\"",
        ),
        (
            vec!["replace", "-f", "-", "--raw"],
            "/apis/subresources.kubevirt.io/v1/namespaces/team-a/virtualmachines/testvm/start",
            "cannot update resource \"virtualmachines/start\" in API group \"subresources.kubevirt.io\"",
        ),
    ] {
        let mut args = verb_args.clone();
        args.push(path);
        let o = viewer.run_stdin(&args, "{}");
        assert!(!o.status.success());
        assert!(stderr(&o).contains(what), "{args:?}: {}", stderr(&o));
    }
    // Secrets are not for viewers.
    let e = viewer.fails(&["-n", "team-a", "get", "secrets"]);
    assert!(e.contains("cannot list resource \"secrets\""), "{e}");
    // The server's read-only kubeconfig is such a viewer.
    let ro = As(&s.readonly_kubeconfig);
    assert!(ro.ok(&["-n", "team-a", "get", "vms"]).contains("testvm"));
    let e = ro.fails(&["get", "--raw", "/apis/subresources.kubevirt.io/v1/namespaces/team-a/virtualmachineinstances/testvm/console"]);
    assert!(
        e.contains("User \"readonly\" cannot get resource \"virtualmachineinstances/console\""),
        "{e}"
    );
}

#[test]
fn nobody_grants_what_they_do_not_hold() {
    let s = TestServer::start();
    let kc = service_account_user(&s, "boss", "admin");
    let boss = As(&kc);
    let me = "system:serviceaccount:team-a:boss";
    // An admin of team-a may hand out edit there...
    boss.ok(&[
        "-n",
        "team-a",
        "create",
        "rolebinding",
        "dev",
        "--clusterrole=edit",
        "--user=dev",
    ]);
    // ...but not cluster-admin, nor a Role with rights it lacks.
    let e = boss.fails(&[
        "-n",
        "team-a",
        "create",
        "rolebinding",
        "grab",
        "--clusterrole=cluster-admin",
        "--serviceaccount=team-a:boss",
    ]);
    assert!(
        e.contains(&format!(
            "rolebindings.rbac.authorization.k8s.io \"grab\" is forbidden: user \"{me}\" (groups="
        )),
        "{e}"
    );
    assert!(
        e.contains("is attempting to grant RBAC permissions not currently held"),
        "{e}"
    );
    let e = boss.fails(&[
        "-n",
        "team-a",
        "create",
        "role",
        "nodes",
        "--verb=get",
        "--resource=nodes",
    ]);
    assert!(
        e.contains("is attempting to grant RBAC permissions not currently held"),
        "{e}"
    );
    assert!(e.contains("Resources:[\"nodes\"]"), "{e}");
    // Nor anything outside team-a.
    let e = boss.fails(&[
        "-n",
        "team-b",
        "create",
        "rolebinding",
        "dev",
        "--clusterrole=edit",
        "--user=dev",
    ]);
    assert!(e.contains("cannot create resource \"rolebindings\" in API group \"rbac.authorization.k8s.io\" in the namespace \"team-b\""), "{e}");
    // The default roles are there, aggregated: edit includes KubeVirt's edit rules.
    let edit = s.ok(&["get", "clusterrole", "edit", "-o", "json"]);
    assert!(
        edit.contains("virtualmachines/start"),
        "edit was not aggregated"
    );
}

#[test]
fn client_certificates_and_legacy_token_secrets_authenticate() {
    let s = TestServer::start();
    s.ok(&["create", "namespace", "team-b"]);
    s.ok(&[
        "-n",
        "team-b",
        "create",
        "rolebinding",
        "admins",
        "--clusterrole=edit",
        "--group=team-b-admins",
    ]);
    let text = kubevirt_apiserver::tls::user_kubeconfig(
        s.dir.path(),
        "carol",
        &["team-b-admins".to_string()],
        std::time::Duration::from_secs(3600),
    )
    .unwrap();
    let path = s.dir.path().join("kubeconfig-carol");
    std::fs::write(&path, text).unwrap();
    let carol = As(&path);
    assert_eq!(
        carol.ok(&[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}"
        ]),
        "carol"
    );
    carol.ok(&[
        "-n",
        "team-b",
        "create",
        "configmap",
        "c",
        "--from-literal=a=b",
    ]);
    let e = carol.fails(&["-n", "default", "get", "configmaps"]);
    assert!(
        e.contains("User \"carol\" cannot list resource \"configmaps\""),
        "{e}"
    );

    // A Secret of type kubernetes.io/service-account-token gets a token that works.
    s.ok(&["-n", "team-b", "create", "serviceaccount", "robot"]);
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: robot-token\n  namespace: team-b\n  annotations:\n    kubernetes.io/service-account.name: robot\ntype: kubernetes.io/service-account-token\n",
    );
    let mut token = String::new();
    for _ in 0..100 {
        token = s.ok(&[
            "-n",
            "team-b",
            "get",
            "secret",
            "robot-token",
            "-o",
            "jsonpath={.data.token}",
        ]);
        if !token.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    use base64::Engine;
    let token = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(token.trim())
            .unwrap(),
    )
    .unwrap();
    let kc = token_kubeconfig(&s, "robot", &token);
    let robot = As(&kc);
    assert_eq!(
        robot.ok(&[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}"
        ]),
        "system:serviceaccount:team-b:robot"
    );
    s.ok(&["-n", "team-b", "delete", "secret", "robot-token"]);
    assert!(robot.fails(&["auth", "whoami"]).contains("Unauthorized"));
    // Every namespace has its default ServiceAccount.
    assert!(s
        .ok(&["-n", "team-b", "get", "serviceaccounts"])
        .contains("default"));
}

#[test]
fn a_namespace_terminates_after_its_contents() {
    let s = TestServer::start();
    s.ok(&["create", "namespace", "doomed"]);
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  namespace: doomed\n  finalizers: [example.com/hold]\n",
    );
    s.ok(&["create", "configmap", "plain", "-n", "doomed"]);
    s.ok(&["delete", "namespace", "doomed", "--wait=false"]);
    assert_eq!(
        s.ok(&[
            "get",
            "namespace",
            "doomed",
            "-o",
            "jsonpath={.status.phase}"
        ]),
        "Terminating"
    );
    let e = s.fails(&["create", "configmap", "late", "-n", "doomed"]);
    assert!(e.contains("configmaps \"late\" is forbidden: unable to create new content in namespace doomed because it is being terminated"), "{e}");
    let mut message = String::new();
    for _ in 0..100 {
        message = s.ok(&[
            "get",
            "namespace",
            "doomed",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"NamespaceFinalizersRemaining\")].message}",
        ]);
        if !message.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(message, "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances");
    assert!(s
        .fails(&["get", "configmap", "plain", "-n", "doomed"])
        .contains("NotFound"));
    s.ok(&[
        "patch",
        "configmap",
        "held",
        "-n",
        "doomed",
        "--type=merge",
        "-p",
        "{\"metadata\":{\"finalizers\":null}}",
    ]);
    s.ok(&["wait", "--for=delete", "namespace/doomed", "--timeout=20s"]);
    let e = s.fails(&["delete", "namespace", "default"]);
    assert!(
        e.contains("namespaces \"default\" is forbidden: this namespace may not be deleted"),
        "{e}"
    );
}

#[test]
fn a_quota_of_one_vm_refuses_the_second() {
    let s = TestServer::start();
    s.ok(&["create", "namespace", "team-a"]);
    s.ok(&[
        "-n",
        "team-a",
        "create",
        "quota",
        "vms",
        "--hard=count/virtualmachines.kubevirt.io=1",
    ]);
    let o = s.kubectl_stdin(&["-n", "team-a", "create", "-f", "-"], VM_YAML);
    assert!(o.status.success(), "{}", stderr(&o));
    let second = VM_YAML.replace("name: testvm", "name: second");
    let o = s.kubectl_stdin(&["-n", "team-a", "create", "-f", "-"], &second);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("Error from server (Forbidden): error when creating \"STDIN\": virtualmachines.kubevirt.io \"second\" is forbidden: exceeded quota: vms, requested: count/virtualmachines.kubevirt.io=1, used: count/virtualmachines.kubevirt.io=1, limited: count/virtualmachines.kubevirt.io=1"), "{}", stderr(&o));
    let used = s.ok(&[
        "-n",
        "team-a",
        "get",
        "quota",
        "vms",
        "-o",
        "jsonpath={.status.used}",
    ]);
    assert_eq!(used, "{\"count/virtualmachines.kubevirt.io\":\"1\"}");
    // Deleting the first frees the unit.
    s.ok(&["-n", "team-a", "delete", "vm", "testvm"]);
    let mut created = false;
    for _ in 0..100 {
        if s.kubectl_stdin(&["-n", "team-a", "create", "-f", "-"], &second)
            .status
            .success()
        {
            created = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(created, "the quota was not released");
    let described = s.ok(&["-n", "team-a", "describe", "quota", "vms"]);
    assert!(
        described.contains("count/virtualmachines.kubevirt.io  1     1"),
        "{described}"
    );
}

#[test]
fn a_limit_range_defaults_and_bounds_pods() {
    let s = TestServer::start();
    s.ok(&["create", "namespace", "team-a"]);
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: LimitRange\nmetadata:\n  name: limits\n  namespace: team-a\nspec:\n  limits:\n  - type: Container\n    default:\n      memory: 512Mi\n    defaultRequest:\n      memory: 256Mi\n    max:\n      memory: 1Gi\n",
    );
    let pod = |name: &str, limit: Option<&str>| {
        let resources = limit
            .map(|l| format!("\n    resources:\n      limits:\n        memory: {l}"))
            .unwrap_or_default();
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: team-a\nspec:\n  containers:\n  - name: app\n    image: example.com/app{resources}\n")
    };
    let o = s.kubectl_stdin(&["create", "-f", "-"], &pod("defaulted", None));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        s.ok(&[
            "-n",
            "team-a",
            "get",
            "pod",
            "defaulted",
            "-o",
            "jsonpath={.spec.containers[0].resources}"
        ]),
        "{\"limits\":{\"memory\":\"512Mi\"},\"requests\":{\"memory\":\"256Mi\"}}"
    );
    let o = s.kubectl_stdin(&["create", "-f", "-"], &pod("big", Some("2Gi")));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("pods \"big\" is forbidden: maximum memory usage per Container is 1Gi, but limit is 2Gi"), "{}", stderr(&o));
}
