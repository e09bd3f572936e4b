//! The monitoring assets in `monitoring/` hold together: promtool accepts the rules and
//! their unit tests pass, every rule has a unit test, every dashboard query is valid PromQL
//! reading only metrics the server exports (or the rules record), and every panel uses the
//! dashboard's data source variable. No server or VM is needed.

mod common;

use common::monitoring::*;

#[test]
fn rules_pass_promtool_check_and_their_unit_tests() {
    let dir = monitoring_dir();
    let out = run_promtool(&dir, &["check", "rules", "prometheus-rules.yaml"]);
    assert_promtool_ok("promtool check rules prometheus-rules.yaml", &out);
    let out = run_promtool(&dir, &["test", "rules", "prometheus-rules.test.yaml"]);
    assert_promtool_ok("promtool test rules prometheus-rules.test.yaml", &out);
}

/// promtool does not notice a rule nobody tests; this does.
#[test]
fn every_rule_has_a_unit_test() {
    let path = rules_test_file();
    let text = std::fs::read_to_string(&path).unwrap();
    let tests: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    let mut alerts = Vec::new();
    for test in tests["tests"].as_array().unwrap() {
        for t in test["promql_expr_test"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().trim().to_string());
        }
        for t in test["alert_rule_test"].as_array().into_iter().flatten() {
            // Both firing and quiet cases, for every alert.
            let fires = t["exp_alerts"].as_array().is_some_and(|a| !a.is_empty());
            alerts.push((t["alertname"].as_str().unwrap().to_string(), fires));
        }
    }
    let mut untested = Vec::new();
    for rule in rules() {
        let tested = if rule.is_alert {
            alerts.contains(&(rule.name.clone(), true))
                && alerts.contains(&(rule.name.clone(), false))
        } else {
            exprs.contains(&rule.name)
        };
        if !tested {
            untested.push(rule.name);
        }
    }
    assert!(
        untested.is_empty(),
        "rules without a unit test in {} (alerts need a firing and a quiet case): {untested:?}",
        path.display()
    );
}

#[test]
fn rules_read_only_exported_metrics() {
    let rules = rules();
    let recorded: Vec<&str> = rules
        .iter()
        .filter(|r| !r.is_alert)
        .map(|r| r.name.as_str())
        .collect();
    for rule in &rules {
        for metric in metric_names(&rule.expr) {
            assert!(
                EXPORTED_METRICS.contains(&metric.as_str()) || recorded.contains(&metric.as_str()),
                "rule {} reads {metric}, which the server does not export and no rule records",
                rule.name
            );
        }
    }
}

#[test]
fn dashboard_panels_have_titles_and_use_the_datasource_variable() {
    let dashboard = dashboard();
    let vars: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "namespace", "name"]);

    let panels = panels(&dashboard);
    assert!(panels.len() > 20, "only {} panels", panels.len());
    let mut ids = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(!title.trim().is_empty(), "a panel without a title: {panel}");
        ids.push(panel["id"].as_u64().expect("panel id"));
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {title:?} does not use the ${{datasource}} variable"
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for target in targets {
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "a query of panel {title:?} does not use the ${{datasource}} variable"
            );
            assert!(
                target["expr"]
                    .as_str()
                    .is_some_and(|e| !e.trim().is_empty()),
                "a query of panel {title:?} has no expr"
            );
        }
    }
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count, "panel ids are not unique");
}

/// Each query, its variables filled in, becomes a recording rule that
/// `promtool check rules` parses: the dashboard holds no invalid PromQL.
#[test]
fn dashboard_queries_are_valid_promql_over_exported_metrics() {
    let queries = dashboard_queries(&DashboardVars::new("default", "testvm"));
    assert!(queries.len() > 40, "only {} queries", queries.len());
    let recorded: Vec<String> = rules()
        .into_iter()
        .filter(|r| !r.is_alert)
        .map(|r| r.name)
        .collect();

    let mut file = String::from("groups:\n  - name: dashboard-queries\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        let left = unresolved_variables(&q.expr);
        assert!(
            left.is_empty(),
            "panel {:?} query {} keeps variables {left:?}: {}",
            q.panel,
            q.ref_id,
            q.expr
        );
        for metric in metric_names(&q.expr) {
            assert!(
                EXPORTED_METRICS.contains(&metric.as_str()) || recorded.contains(&metric),
                "panel {:?} reads {metric}, which the server does not export and no rule records",
                q.panel
            );
        }
        // JSON strings are YAML double-quoted scalars.
        let expr = serde_json::to_string(&q.expr).unwrap();
        file.push_str(&format!(
            "      - record: dashboard:query_{i}:{}\n        expr: {expr}\n",
            q.ref_id.to_lowercase()
        ));
    }

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard-queries.yaml"), &file).unwrap();
    let out = run_promtool(dir.path(), &["check", "rules", "dashboard-queries.yaml"]);
    assert_promtool_ok(
        &format!("promtool check rules on the dashboard's queries:\n{file}"),
        &out,
    );
}

#[test]
fn substitution_fills_grafana_variables_and_keeps_regex_groups() {
    let vars = DashboardVars::new("ns1", "vm1");
    assert_eq!(
        substitute(
            r#"rate(x{namespace=~"$namespace", name=~"${name}", n="${name:regex}"}[$__rate_interval])"#,
            &vars
        ),
        r#"rate(x{namespace=~"ns1", name=~"vm1", n="vm1"}[1m])"#
    );
    let kept = r#"label_replace(x, "vm", "$1", "name", "(.+)") $unknown"#;
    assert_eq!(substitute(kept, &vars), kept);
    assert_eq!(unresolved_variables(kept), ["unknown"]);
    assert_eq!(
        metric_names(r#"sum(rate(kubevirt_a_total{l="kubevirt_b"}[5m:1m])) / node:kubevirt_c:sum"#),
        ["kubevirt_a_total", "node:kubevirt_c:sum"]
    );
}
