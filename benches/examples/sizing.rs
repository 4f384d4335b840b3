//! Bytes on disk per offline account and per queued envelope, measured with the real storage
//! crate: fill a store, close it, reopen the RocksDB directory, flush and compact every
//! column family and read `rocksdb.total-sst-files-size`. Feeds docs/SIZING.md (the slot
//! map's sizes come from `cargo run --release -p hearth-cluster --example map_size`).
//!
//! `cargo run --release -p hearth-benches --example sizing` (prints a table; measures, asserts
//! nothing).
//! `HEARTH_SIZING_ACCOUNTS` / `HEARTH_SIZING_ENVELOPES` / `HEARTH_SIZING_PAYLOAD` change the
//! defaults (20,000 accounts of one device, 50,000 envelopes of 512 bytes).

use bytes::Bytes;
use hearth_protocol::MessageId;
use hearth_storage::{DeviceKey, Durability, Store, StoreOptions, StoredEnvelope};
use rocksdb::{Options, DB};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Total SST bytes (after flush and full compaction) and key count per column family.
fn sst_sizes(path: &std::path::Path) -> Vec<(String, u64, u64)> {
    let cfs = DB::list_cf(&Options::default(), path).unwrap();
    let db = DB::open_cf(&Options::default(), path, &cfs).unwrap();
    let mut out = Vec::new();
    for name in &cfs {
        let cf = db.cf_handle(name).unwrap();
        db.flush_cf(&cf).unwrap();
        db.compact_range_cf(&cf, None::<&[u8]>, None::<&[u8]>);
        let size = db
            .property_int_value_cf(&cf, "rocksdb.total-sst-files-size")
            .unwrap()
            .unwrap_or(0);
        let keys = db
            .property_int_value_cf(&cf, "rocksdb.estimate-num-keys")
            .unwrap()
            .unwrap_or(0);
        out.push((name.clone(), size, keys));
    }
    out
}

fn total(s: &[(String, u64, u64)]) -> u64 {
    s.iter().map(|(_, b, _)| b).sum()
}

fn main() {
    let accounts = env("HEARTH_SIZING_ACCOUNTS", 20_000);
    let envelopes = env("HEARTH_SIZING_ENVELOPES", 50_000);
    let payload = env("HEARTH_SIZING_PAYLOAD", 512) as usize;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        durability: Durability::None,
        max_queue_len: u64::MAX,
        max_queue_bytes: u64::MAX,
        ..StoreOptions::default()
    };
    let now = 1_700_000_000_000u64;

    // 1. Offline accounts: account record + one registered device, nothing queued.
    let empty = {
        let store = Store::open(dir.path(), opts.clone()).unwrap();
        store.close();
        total(&sst_sizes(dir.path()))
    };
    {
        let store = Store::open(dir.path(), opts.clone()).unwrap();
        rt.block_on(async {
            for a in 0..accounts {
                let acct = 1_000_000 + a * 7919;
                store
                    .ensure_account(acct, "chat", "global", now)
                    .await
                    .unwrap();
                store
                    .register_device(DeviceKey::new(acct, 1), now)
                    .await
                    .unwrap();
            }
        });
        store.close();
    }
    let with_accounts = sst_sizes(dir.path());
    let accounts_bytes = total(&with_accounts) - empty;

    // 2. Queued envelopes spread over those devices.
    {
        let store = Store::open(dir.path(), opts).unwrap();
        rt.block_on(async {
            let mut commits = Vec::new();
            for n in 0..envelopes {
                let acct = 1_000_000 + (n % accounts) * 7919;
                let env = StoredEnvelope {
                    msg_id: MessageId::from_u128(u128::from(n) + 1),
                    from_account: 42,
                    from_device: 1,
                    accepted_at_ms: now,
                    expires_at_ms: now + 30 * 86_400_000,
                    flags: 0,
                    payload: Bytes::from(vec![0xa5; payload]),
                };
                commits.push(
                    store
                        .enqueue(&[DeviceKey::new(acct, 1)], &env, None)
                        .unwrap()
                        .commit,
                );
                if commits.len() == 256 {
                    for c in commits.drain(..) {
                        c.await.unwrap();
                    }
                }
            }
            for c in commits {
                c.await.unwrap();
            }
        });
        store.close();
    }
    let with_queues = sst_sizes(dir.path());
    let queue_bytes = total(&with_queues) - total(&with_accounts);

    println!("column family      after accounts      after envelopes");
    for ((name, a, ka), (_, q, kq)) in with_accounts.iter().zip(&with_queues) {
        println!("{name:<12} {a:>12} B {ka:>8} keys {q:>12} B {kq:>8} keys");
    }
    println!(
        "offline account (record + 1 device): {:.1} bytes on disk ({} accounts)",
        accounts_bytes as f64 / accounts as f64,
        accounts
    );
    println!(
        "queued envelope ({payload}-byte payload): {:.1} bytes on disk, {:.1} beyond the payload ({} envelopes)",
        queue_bytes as f64 / envelopes as f64,
        queue_bytes as f64 / envelopes as f64 - payload as f64,
        envelopes
    );
}
