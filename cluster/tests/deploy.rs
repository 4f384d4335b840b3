//! deploy/: the cluster's deployment files parse, and the `[cluster]` sections they give
//! hearthd are valid `ClusterConfig`s. (No container engine runs here: images and manifests
//! are checked for shape, not started.)

use std::collections::BTreeSet;

use hearth_cluster::ClusterConfig;

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/../deploy/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

fn yaml_docs(path: &str) -> Vec<serde_yaml::Value> {
    let text = read(path);
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

fn cluster_section(toml_text: &str) -> ClusterConfig {
    let v: toml::Value = toml::from_str(toml_text).unwrap();
    let c: ClusterConfig = v["cluster"].clone().try_into().unwrap();
    c.validate().unwrap();
    c
}

#[test]
fn the_image_is_multi_stage_slim_and_not_root() {
    let d = read("Dockerfile");
    assert_eq!(d.lines().filter(|l| l.starts_with("FROM ")).count(), 2);
    assert!(d.contains("FROM debian:bookworm-slim AS runtime"));
    let user = d
        .lines()
        .find(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(!user.contains(" 0") && !user.contains("root"), "{user}");
    assert!(d.contains("protobuf-compiler") && d.contains("libclang-dev"));
}

#[test]
fn compose_runs_three_nodes_and_etcd_with_valid_cluster_sections() {
    let c = &yaml_docs("cluster/compose/compose.yaml")[0];
    let services = c["services"].as_mapping().unwrap();
    let names: BTreeSet<&str> = services.keys().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["etcd", "hearth-1", "hearth-2", "hearth-3"])
    );
    let mut ids = BTreeSet::new();
    for i in 1..=3 {
        let cfg = cluster_section(&read(&format!("cluster/compose/hearthd-{i}.toml")));
        assert_eq!(cfg.etcd_endpoints, vec!["http://etcd:2379"]);
        assert_eq!(cfg.initial_nodes, 3);
        assert_eq!(cfg.advertise_link, format!("hearth-{i}:4434"));
        ids.insert(cfg.node_id);
        let mounts = format!("{:?}", services[format!("hearth-{i}").as_str()]["volumes"]);
        assert!(mounts.contains(&format!("hearthd-{i}.toml")), "{mounts}");
    }
    assert_eq!(ids, BTreeSet::from([1, 2, 3]));
}

#[test]
fn kubernetes_has_a_statefulset_headless_service_pdb_probes_and_drain() {
    let docs = yaml_docs("cluster/k8s/hearth.yaml");
    let kind = |k: &'static str| docs.iter().filter(move |d| d["kind"] == k);
    assert!(
        kind("Service").any(|s| s["spec"]["clusterIP"] == "None"),
        "headless service"
    );
    assert_eq!(kind("PodDisruptionBudget").count(), 1);
    let sts = kind("StatefulSet").next().expect("a StatefulSet");
    assert_eq!(sts["spec"]["serviceName"], "hearth");
    let c = &sts["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let pre_stop = format!("{:?}", c["lifecycle"]["preStop"]["exec"]["command"]);
    assert!(pre_stop.contains("drain"), "{pre_stop}");
    assert_eq!(
        sts["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
        true
    );
    let cm = kind("ConfigMap").next().unwrap();
    let tmpl = cm["data"]["hearthd.toml"].as_str().unwrap();
    let cfg = cluster_section(
        &tmpl
            .replace("@NODE_ID@", "2")
            .replace("@POD@", "hearth-1")
            .replace("@NS@", "default"),
    );
    assert_eq!(cfg.node_id, 2);
    assert_eq!(cfg.advertise_client, "hearth-1.hearth.default.svc:4433");
}

#[test]
fn prometheus_rules_and_the_dashboard_parse() {
    let p = &yaml_docs("cluster/prometheus/prometheus.yml")[0];
    assert_eq!(p["rule_files"][0], "alerts.yml");
    let jobs: Vec<&str> = p["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|j| j["job_name"].as_str().unwrap())
        .collect();
    assert_eq!(jobs, ["hearth", "etcd"]);
    let rules = &yaml_docs("cluster/prometheus/alerts.yml")[0];
    let mut n = 0;
    for g in rules["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            assert!(r["alert"].is_string() && r["expr"].is_string(), "{r:?}");
            assert!(r["annotations"]["summary"].is_string(), "{r:?}");
            n += 1;
        }
    }
    assert!(n >= 8, "{n} alerts");
    let dash: serde_json::Value =
        serde_json::from_str(&read("cluster/grafana/hearth-cluster.json")).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    assert!(panels.iter().all(|p| p["targets"][0]["expr"].is_string()));
}

#[test]
fn the_example_cluster_config_and_units_are_consistent() {
    let cfg = cluster_section(&read("cluster/hearthd-cluster.toml"));
    assert_eq!(cfg.shards_per_node, 8);
    assert_eq!(cfg.lease_ttl_secs, 5);
    let etcd = read("cluster/systemd/etcd-hearth.service");
    assert!(etcd.contains("ExecStart=/usr/bin/etcd") && etcd.contains("[Install]"));
    let dropin = read("cluster/systemd/hearthd-cluster.conf");
    assert!(dropin.contains("node drain"));
}
