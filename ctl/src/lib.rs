//! hearthctl, the Hearth operator's control CLI, as a library.
//!
//! The binary is a thin `main.rs` over [`Cli`] and [`run`]. Every command is also a function that
//! writes its output to a writer and returns a `Result`, so tests drive the same code:
//!
//! - [`token_issue`] and [`key_generate`] work offline, on the node's token key file;
//! - [`status`], [`queue_stats`], [`device_remove`], [`abuse_top`], [`account_purge`],
//!   [`group_show`] and [`group_members`] talk to a node's admin API (HTTP on loopback by
//!   default, or HTTPS) with its bearer token ([`AdminTarget`]) and print tables, or the node's
//!   JSON with `--json`.

mod admin;
mod cli;
mod cluster_ca;
mod keys;
mod render;
mod ttl;

pub use admin::{
    abuse_top, account_purge, device_remove, group_members, group_show, queue_stats,
    read_token_file, status, AdminTarget,
};
pub use cli::{
    run, AbuseCommand, AbuseTopArgs, AccountCommand, AccountPurgeArgs, Cli, Command, DeviceCommand,
    DeviceRemoveArgs, GroupCommand, GroupMembersArgs, GroupShowArgs, KeyCommand, KeyGenerateArgs,
    QueueCommand, QueueStatsArgs, TokenCommand, TokenIssueArgs, DEFAULT_ADMIN,
    DEFAULT_ADMIN_TOKEN_PATH, DEFAULT_KEY_PATH,
};
pub use cluster_ca::{
    ca_init, ca_node, run_cluster, CaCommand, CaInitArgs, CaNodeArgs, ClusterCommand,
};
pub use keys::{key_generate, token_issue};
pub use render::{
    format_bytes, format_count, format_duration, format_micros, format_timestamp_ms,
    render_abuse_top, render_account_purged, render_device_removed, render_group_members,
    render_group_show, render_queue_stats, render_status, Table,
};
pub use ttl::{parse_ttl, ParseTtlError};
