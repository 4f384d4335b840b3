//! `ClusterConfig`: the `[cluster]` section of hearthd's TOML.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::NodeId;

/// The `[cluster]` section of hearthd's configuration. Absent section = a single node that
/// owns every slot and talks to no etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id: 1 or more, unique in the cluster, kept for the node's whole life
    /// (0 is the single node of an unclustered deployment).
    pub node_id: NodeId,
    /// etcd client URLs, e.g. `["http://10.0.0.5:2379"]`.
    pub etcd_endpoints: Vec<String>,
    /// Cluster name; also names the node certificates (`n<id>.<name>`).
    pub name: String,
    /// Root of every key in etcd; empty means `/hearth/<name>/`.
    pub prefix: String,
    /// Address devices reach this node's QUIC front at (`host:port`), sent in redirects.
    pub advertise_client: String,
    /// Address this node's inter-node link listens on.
    pub link_listen: String,
    /// Address other nodes reach this node's inter-node link at (`host:port`).
    pub advertise_link: String,
    /// This node's region, matched against the residency zones; empty means the node's
    /// top-level `region`.
    pub region: String,
    /// Failure zone (rack, availability zone): replicas of one shard go to distinct zones
    /// where they can (replication); empty means none.
    pub failure_zone: String,
    /// Shards each node gets when it joins placement (the cluster's creation included).
    pub shards_per_node: u32,
    /// Lease TTL of the node's registration, in seconds.
    pub lease_ttl_secs: u32,
    /// Replicas per shard (1 until replication lands).
    pub replication_factor: u8,
    /// Members the controller waits for before it creates the cluster map at first start.
    pub initial_nodes: u32,
    /// Cluster CA certificate (PEM) that signs every node certificate of the link.
    pub ca_cert: String,
    /// This node's link certificate chain (PEM), issued by `hearthctl cluster ca node`.
    pub node_cert: String,
    /// This node's link private key (PEM).
    pub node_key: String,
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            node_id: 1,
            etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
            name: "hearth".into(),
            prefix: String::new(),
            advertise_client: "127.0.0.1:4433".into(),
            link_listen: "0.0.0.0:4434".into(),
            advertise_link: "127.0.0.1:4434".into(),
            region: String::new(),
            failure_zone: String::new(),
            shards_per_node: 8,
            lease_ttl_secs: 5,
            replication_factor: 1,
            initial_nodes: 1,
            ca_cert: String::new(),
            node_cert: String::new(),
            node_key: String::new(),
        }
    }
}

impl ClusterConfig {
    /// The key prefix in etcd, always ending in `/`.
    pub fn key_prefix(&self) -> String {
        let p = if self.prefix.is_empty() {
            format!("/hearth/{}/", self.name)
        } else {
            self.prefix.clone()
        };
        if p.ends_with('/') {
            p
        } else {
            p + "/"
        }
    }

    /// The lease TTL.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(u64::from(self.lease_ttl_secs))
    }

    /// Check the values a node cannot run with; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id == 0 {
            return Err("cluster.node_id must be 1 or more (0 is the unclustered node)".into());
        }
        if self.etcd_endpoints.is_empty() {
            return Err("cluster.etcd_endpoints must list at least one etcd URL".into());
        }
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err("cluster.name must be lowercase letters, digits and '-'".into());
        }
        if !(1..=64).contains(&self.shards_per_node) {
            return Err("cluster.shards_per_node must be 1 to 64".into());
        }
        if !(2..=60).contains(&self.lease_ttl_secs) {
            return Err("cluster.lease_ttl_secs must be 2 to 60".into());
        }
        if !(1..=7).contains(&self.replication_factor) {
            return Err("cluster.replication_factor must be 1 to 7".into());
        }
        if self.initial_nodes == 0 {
            return Err("cluster.initial_nodes must be 1 or more".into());
        }
        for (key, v) in [
            ("advertise_client", &self.advertise_client),
            ("advertise_link", &self.advertise_link),
            ("link_listen", &self.link_listen),
        ] {
            if v.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(format!("cluster.{key} must be host:port, got {v:?}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_cluster_section_and_fills_defaults() {
        let c: ClusterConfig = toml::from_str(
            "node_id = 3\netcd_endpoints = [\"http://127.0.0.1:12379\"]\nname = \"prod\"\n\
             advertise_client = \"n3.example:4433\"\nregion = \"eu-west\"\n",
        )
        .unwrap();
        assert_eq!(c.node_id, 3);
        assert_eq!(c.shards_per_node, 8);
        assert_eq!(c.lease_ttl(), Duration::from_secs(5));
        assert_eq!(c.replication_factor, 1);
        assert_eq!(c.key_prefix(), "/hearth/prod/");
        c.validate().unwrap();
        assert!(
            toml::from_str::<ClusterConfig>("nodeid = 3").is_err(),
            "typos refused"
        );
    }

    #[test]
    fn refuses_what_a_node_cannot_run_with() {
        let bad = [
            ClusterConfig {
                node_id: 0,
                ..Default::default()
            },
            ClusterConfig {
                name: "Bad Name".into(),
                ..Default::default()
            },
            ClusterConfig {
                advertise_link: "nohost".into(),
                ..Default::default()
            },
            ClusterConfig {
                lease_ttl_secs: 1,
                ..Default::default()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
        let p = ClusterConfig {
            prefix: "/x/y".into(),
            ..Default::default()
        };
        assert_eq!(p.key_prefix(), "/x/y/");
    }
}
