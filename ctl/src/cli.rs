//! Command-line arguments (clap derive) and the dispatcher.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};

use crate::admin::{read_token_file, AdminTarget};
use crate::ttl::parse_ttl;

/// Where the node's admin HTTP API listens unless told otherwise.
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:9090";

/// The token key an embedded default node creates in its working directory.
pub const DEFAULT_KEY_PATH: &str = "./hearth-data/token.key";

/// The admin token an embedded default node creates in its working directory; read when
/// neither `--token-file` nor `HEARTH_ADMIN_TOKEN` is given and the file exists.
pub const DEFAULT_ADMIN_TOKEN_PATH: &str = "./hearth-data/admin.token";

/// hearthctl: operate a Hearth node.
#[derive(Debug, Parser)]
#[command(name = "hearthctl", version, about, propagate_version = true)]
pub struct Cli {
    /// Base URL of the node's admin API (`http://`, or `https://` with `admin_tls_cert`).
    #[arg(long, global = true, env = "HEARTH_ADMIN", default_value = DEFAULT_ADMIN)]
    pub admin: String,
    /// File with the node's admin token (its `admin_token_file`). Without it: env
    /// HEARTH_ADMIN_TOKEN (the token itself), else ./hearth-data/admin.token if it exists.
    #[arg(
        long,
        global = true,
        env = "HEARTH_ADMIN_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub token_file: Option<PathBuf>,
    /// PEM of the CA that signed the admin port's certificate (https:// only; default: the
    /// Mozilla roots built in).
    #[arg(long, global = true, env = "HEARTH_ADMIN_CA", value_name = "PEM")]
    pub admin_ca: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Device tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Show the node's status: connections, envelopes, queue totals, fsync latency.
    Status,
    /// Per-device queues.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Registered devices.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Token signing keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Abuse signals computed from metadata (never content).
    #[command(subcommand)]
    Abuse(AbuseCommand),
    /// Accounts.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// The cluster: CA and node certificates of the inter-node link.
    #[command(subcommand)]
    Cluster(crate::cluster_ca::ClusterCommand),
}

/// `hearthctl token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Sign a device token with the node's token key and print it.
    Issue(TokenIssueArgs),
}

/// Arguments of `hearthctl token issue`.
#[derive(Debug, Clone, Args)]
pub struct TokenIssueArgs {
    /// Account id.
    #[arg(long)]
    pub account: u64,
    /// Device id (1 or more; 0 is reserved).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub device: u32,
    /// Lifetime: 90s, 15m, 12h, 30d, or plain seconds.
    #[arg(long, default_value = "30d", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// The node's token key (PKCS#8 DER Ed25519, v1 or v2).
    #[arg(long, env = "HEARTH_TOKEN_KEY", default_value = DEFAULT_KEY_PATH)]
    pub key: PathBuf,
    /// Network (app) the device speaks for, one of the node's `[privacy] networks`. With
    /// `--network` or `--zone` the token is v2 (`ht2.`); what is omitted is the node's default.
    #[arg(long)]
    pub network: Option<String>,
    /// Residency zone of the account, a key of the node's `[residency] zones`.
    #[arg(long)]
    pub zone: Option<String>,
}

/// `hearthctl queue ...`
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Show the queues of an account's devices (or of one device).
    Stats(QueueStatsArgs),
}

/// Arguments of `hearthctl queue stats`.
#[derive(Debug, Clone, Args)]
pub struct QueueStatsArgs {
    /// Account id.
    #[arg(long)]
    pub account: u64,
    /// Only this device.
    #[arg(long)]
    pub device: Option<u32>,
}

/// `hearthctl device ...`
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Unregister a device: delete its queue and close its connection.
    Remove(DeviceRemoveArgs),
}

/// Arguments of `hearthctl device remove`.
#[derive(Debug, Clone, Args)]
pub struct DeviceRemoveArgs {
    /// Account id.
    #[arg(long)]
    pub account: u64,
    /// Device id.
    #[arg(long)]
    pub device: u32,
}

/// `hearthctl abuse ...`
#[derive(Debug, Subcommand)]
pub enum AbuseCommand {
    /// List the accounts the node flagged (most severe first), with the reasons and counters.
    Top(AbuseTopArgs),
}

/// Arguments of `hearthctl abuse top`.
#[derive(Debug, Clone, Args)]
pub struct AbuseTopArgs {
    /// Show at most this many accounts.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
}

/// `hearthctl account ...`
#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Erase everything the node holds about an account: devices and their queues, account
    /// record and settings, its allow and block lists, push tokens, dedup records, group
    /// memberships (groups it created are deleted) and abuse counters. Cannot be undone.
    Purge(AccountPurgeArgs),
}

/// Arguments of `hearthctl account purge`.
#[derive(Debug, Clone, Args)]
pub struct AccountPurgeArgs {
    /// Account id.
    #[arg(long)]
    pub account: u64,
    /// Confirm the erasure (required: it cannot be undone).
    #[arg(long)]
    pub yes: bool,
}

/// `hearthctl group ...`
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Show a group: its creator, membership version and member count.
    Show(GroupShowArgs),
    /// List a group's members and their roles, one page at a time (in account order).
    Members(GroupMembersArgs),
}

/// Arguments of `hearthctl group show`.
#[derive(Debug, Clone, Args)]
pub struct GroupShowArgs {
    /// Group id.
    #[arg(long)]
    pub group: u64,
}

/// Arguments of `hearthctl group members`.
#[derive(Debug, Clone, Args)]
pub struct GroupMembersArgs {
    /// Group id.
    #[arg(long)]
    pub group: u64,
    /// Skip this many members (in account order).
    #[arg(long, default_value_t = 0)]
    pub offset: u32,
    /// Show at most this many members (the node allows up to 10,000 per page).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,
}

/// `hearthctl key ...`
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a new token signing key file (mode 0600; never overwrites).
    Generate(KeyGenerateArgs),
}

/// Arguments of `hearthctl key generate`.
#[derive(Debug, Clone, Args)]
pub struct KeyGenerateArgs {
    /// Where to write the key.
    #[arg(long)]
    pub out: PathBuf,
}

impl Cli {
    /// The admin API these flags name, with the token found as `--token-file` documents.
    pub fn admin_target(&self) -> anyhow::Result<AdminTarget> {
        let token = match &self.token_file {
            Some(path) => Some(read_token_file(path)?),
            None => match std::env::var("HEARTH_ADMIN_TOKEN") {
                Ok(t) if !t.trim().is_empty() => Some(t.trim().to_owned()),
                _ => {
                    let default = std::path::Path::new(DEFAULT_ADMIN_TOKEN_PATH);
                    if default.exists() {
                        Some(read_token_file(default)?)
                    } else {
                        None
                    }
                }
            },
        };
        Ok(AdminTarget {
            url: self.admin.clone(),
            token,
            ca_file: self.admin_ca.clone(),
        })
    }
}

/// Run one parsed command, writing its output to `out`.
pub fn run(cli: &Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    let json = cli.json;
    let target = match &cli.command {
        Command::Token(_) | Command::Key(_) => None,
        _ => Some(cli.admin_target()?),
    };
    let offline = AdminTarget::default();
    let admin = target.as_ref().unwrap_or(&offline);
    match &cli.command {
        Command::Token(TokenCommand::Issue(args)) => token_issue_now(args, json, out),
        Command::Status => crate::admin::status(admin, json, out),
        Command::Queue(QueueCommand::Stats(a)) => {
            crate::admin::queue_stats(admin, a.account, a.device, json, out)
        }
        Command::Device(DeviceCommand::Remove(a)) => {
            crate::admin::device_remove(admin, a.account, a.device, json, out)
        }
        Command::Key(KeyCommand::Generate(a)) => crate::keys::key_generate(&a.out, json, out),
        Command::Abuse(AbuseCommand::Top(a)) => crate::admin::abuse_top(admin, a.limit, json, out),
        Command::Account(AccountCommand::Purge(a)) => {
            crate::admin::account_purge(admin, a.account, a.yes, json, out)
        }
        Command::Group(GroupCommand::Show(a)) => {
            crate::admin::group_show(admin, a.group, json, out)
        }
        Command::Group(GroupCommand::Members(a)) => {
            crate::admin::group_members(admin, a.group, a.offset, a.limit, json, out)
        }
        Command::Cluster(c) => crate::cluster_ca::run_cluster(c, json, out),
    }?;
    out.flush()?;
    Ok(())
}

fn token_issue_now(args: &TokenIssueArgs, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    crate::keys::token_issue(args, now, json, out)
}
