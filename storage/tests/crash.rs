//! Crash recovery: a child process enqueues with `Durability::Sync` and prints every seq once
//! its commit resolves; the parent kills it with SIGKILL, reopens the store and checks that
//! every printed seq is there, shared payloads included (the pattern of sled's
//! test_crash_recovery.rs).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use bytes::Bytes;
use hearth_storage::{DeviceKey, Durability, SharedRecipient, Store, StoreOptions};

const CHILD_ENV: &str = "HEARTH_STORAGE_CRASH_CHILD";
const DEVICE: DeviceKey = DeviceKey {
    account: 11,
    device: 2,
};
const ROUNDS: usize = 3;
const TASKS: u64 = 8;
const GROUP: u64 = 9;

fn options() -> StoreOptions {
    StoreOptions {
        durability: Durability::Sync,
        max_queue_len: 1_000_000,
        ..common::opts()
    }
}

fn payload(task: u64, i: u64) -> Vec<u8> {
    format!("task {task} envelope {i}").into_bytes()
}

/// The child: enqueue from several tasks until killed. `ALLOC seq` is printed as soon as a
/// seq is handed out, `SEQ seq task i` once its commit resolved.
fn child(dir: &str) {
    let store = Store::open(dir.as_ref(), options()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async {
        store.register_device(DEVICE, 1).await.unwrap();
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let store = store.clone();
                tokio::spawn(async move {
                    // Bounded, in case the parent never kills us.
                    for i in 0..20_000 {
                        let env = common::env(
                            u128::from(task) << 64 | u128::from(i),
                            1,
                            1 << 50,
                            &payload(task, i),
                        );
                        // Odd tasks store shared payloads behind pointer entries.
                        let e = if task % 2 == 1 {
                            let to = SharedRecipient {
                                device: DEVICE,
                                header: Bytes::from_static(b"h"),
                            };
                            store.enqueue_shared(&[to], &env, GROUP, None).unwrap()
                        } else {
                            store.enqueue(&[DEVICE], &env, None).unwrap()
                        };
                        let seq = e.seqs[0].1;
                        emit(&format!("ALLOC {seq}"));
                        e.commit.await.unwrap();
                        emit(&format!("SEQ {seq} {task} {i}"));
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}

fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

#[test]
fn committed_envelopes_survive_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut expected: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut max_alloc = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([
                "committed_envelopes_survive_sigkill",
                "--exact",
                "--nocapture",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let kill_after = 100 + 150 * round;
        let mut committed = 0;
        let mut killed = false;
        // Lines printed before the kill are still in the pipe: read to the end.
        for line in stdout.lines() {
            let line = line.unwrap();
            let mut words = line.split(' ');
            match words.next() {
                Some("ALLOC") => {
                    max_alloc = max_alloc.max(words.next().unwrap().parse::<u64>().unwrap());
                }
                Some("SEQ") => {
                    let n: Vec<u64> = words.map(|w| w.parse().unwrap()).collect();
                    assert!(
                        expected.insert(n[0], (n[1], n[2])).is_none(),
                        "seq {} twice",
                        n[0]
                    );
                    committed += 1;
                    if committed == kill_after && !killed {
                        child.kill().unwrap(); // SIGKILL
                        killed = true;
                    }
                }
                _ => {}
            }
        }
        let status = child.wait().unwrap();
        assert!(killed, "the child exited by itself: {status}");

        let store = Store::open(dir.path(), options()).unwrap();
        let queue = store.read_queue(DEVICE, 0, usize::MAX).unwrap();
        let present: BTreeMap<u64, &[u8]> = queue
            .iter()
            .map(|e| (e.seq, e.envelope.payload.as_ref()))
            .collect();
        for (seq, (task, i)) in &expected {
            assert_eq!(
                present.get(seq).copied(),
                Some(&payload(*task, *i)[..]),
                "seq {seq}"
            );
        }
        // Every pointer that survived has its payload, and no payload survived without one.
        let pointers = queue.iter().filter(|e| e.group == GROUP).count() as u64;
        assert!(pointers > 0);
        assert!(queue
            .iter()
            .all(|e| (e.group == GROUP) == (e.header.as_ref() == b"h")));
        assert_eq!(store.stats().payloads, pointers);
        assert_eq!(common::count(&store, "payloads"), pointers);
        // Groups commit in order, so what survived is every entry up to some point:
        // no entry is missing before the last one present.
        let seqs: Vec<u64> = present.keys().copied().collect();
        let mut gaps = seqs.windows(2).filter(|w| w[1] != w[0] + 1);
        // Seqs skip ahead once per unclean restart, so each round may open one gap.
        assert!(gaps.clone().count() <= round, "gaps: {:?}", gaps.next());
        let st = store.device_stats(DEVICE).unwrap().unwrap();
        assert_eq!(st.queued, queue.len() as u64);
        // Seqs handed out before the crash, even uncommitted ones, are never handed out again.
        assert!(
            st.next_seq > max_alloc,
            "next_seq {} after alloc {max_alloc}",
            st.next_seq
        );
        assert_eq!(store.stats().queued, queue.len() as u64);
        store.close();
    }
}
