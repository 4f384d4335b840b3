//! The routing rules, checked on the core in simulation: order, acknowledgement and
//! redelivery, expiry, dedup, ephemeral envelopes, groups, privacy, limits, sessions.

use bytes::Bytes;
use hearth_protocol::{
    flags, group_op, reach, ErrorCode, Frame, GroupCreate, GroupUpdate, Hello, MessageId,
    PolicyChange, PolicySet, SendGroup, SendSealed, PROTOCOL_VERSION,
};
use hearth_storage::{DeviceKey, StorageError};

use super::sim::{Setup, Sim};

fn dev(account: u64, device: u32) -> DeviceKey {
    DeviceKey::new(account, device)
}

/// The seqs and message ids of the DELIVER frames among `frames`.
fn delivered(frames: &[Frame]) -> Vec<(u64, u128)> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Deliver(d) => Some((d.meta.seq, d.meta.msg_id.as_u128())),
            Frame::DeliverShared(d) => Some((d.meta.seq, d.meta.msg_id.as_u128())),
            _ => None,
        })
        .collect()
}

fn ids(frames: &[Frame]) -> Vec<u128> {
    delivered(frames).into_iter().map(|(_, id)| id).collect()
}

/// The ACCEPTED recipients count, or the ERROR code, answering `msg`.
fn answer(frames: &[Frame], msg: u128) -> Option<Result<u32, ErrorCode>> {
    frames.iter().find_map(|f| match f {
        Frame::Accepted(a) if a.msg_id.as_u128() == msg => Some(Ok(a.recipients)),
        Frame::Error(e) if e.msg_id.as_u128() == msg => Some(Err(e.refusal.code)),
        _ => None,
    })
}

fn policy(sim: &mut Sim, id: u64, req: u128, change: PolicyChange) {
    sim.input(
        id,
        Frame::PolicySet(PolicySet {
            req_id: MessageId::from_u128(req),
            change,
        }),
    );
    sim.run();
    let frames = sim.take(id);
    assert!(
        frames
            .iter()
            .any(|f| matches!(f, Frame::Ok(o) if o.req_id.as_u128() == req)),
        "policy change {req} not confirmed: {frames:?}"
    );
}

#[test]
fn live_copies_go_first_in_order_and_accepted_waits_for_the_write() {
    let mut sim = Sim::new();
    sim.auto_commit = false;
    let a = sim.connect(dev(1, 1));
    let b1 = sim.connect(dev(2, 1));
    let b2 = sim.connect(dev(2, 2));
    for m in 1..=3 {
        sim.send(a, dev(2, 0), m, b"x");
    }
    sim.run();
    // Pushed to both devices at once, in order, before anything is durable...
    assert_eq!(ids(&sim.take(b1)), vec![1, 2, 3]);
    assert_eq!(ids(&sim.take(b2)), vec![1, 2, 3]);
    // ...but without acks the sender hears nothing until the write commits: one write for
    // all three (they waited together for acks, then went to the store as one group).
    assert_eq!(answer(&sim.take(a), 1), None);
    assert!(sim.commit());
    assert!(!sim.commit(), "one group");
    sim.run();
    let frames = sim.take(a);
    for m in 1..=3 {
        assert_eq!(answer(&frames, m), Some(Ok(2)), "message {m}");
    }
    assert_eq!(sim.store.queued(dev(2, 1)).len(), 3);
}

#[test]
fn sends_collect_while_a_write_is_outstanding() {
    let mut sim = Sim::new();
    sim.auto_commit = false;
    let a = sim.connect(dev(1, 1));
    let b = sim.connect(dev(2, 1));
    sim.disconnect(b);
    for m in 1..=3 {
        sim.send(a, dev(2, 1), m, b"x");
    }
    sim.run();
    // For an offline device the first is written at once; the next two wait for it.
    assert!(sim.commit());
    sim.run();
    let frames = sim.take(a);
    assert_eq!(answer(&frames, 1), Some(Ok(1)));
    assert_eq!(
        answer(&frames, 2),
        None,
        "collected while the first was written"
    );
    assert!(sim.commit(), "the second group");
    assert!(!sim.commit(), "two writes for three sends");
    sim.run();
    let frames = sim.take(a);
    assert_eq!(answer(&frames, 3), Some(Ok(1)));
    assert_eq!(sim.store.queued(dev(2, 1)).len(), 3);
}

#[test]
fn an_envelope_acked_before_its_write_is_never_written() {
    let mut sim = Sim::new();
    sim.auto_advance = false;
    let a = sim.connect(dev(1, 1));
    let b = sim.connect(dev(2, 1));
    sim.send(a, dev(2, 1), 1, b"x");
    sim.run();
    let got = delivered(&sim.take(b));
    assert_eq!(got.len(), 1);
    assert_eq!(answer(&sim.take(a), 1), None, "not acknowledged yet");
    sim.ack(b, vec![got[0].0]);
    sim.run();
    assert_eq!(
        answer(&sim.take(a), 1),
        Some(Ok(1)),
        "ACCEPTED on the last ack"
    );
    sim.advance(1000);
    sim.run();
    assert_eq!(sim.store.entries_written(), 0, "nothing reached the store");
    assert!(!sim.store.has_submitted());
    // The next connection of the device gets nothing again.
    sim.disconnect(b);
    let b = sim.connect(dev(2, 1));
    assert!(delivered(&sim.take(b)).is_empty());
}

#[test]
fn only_the_devices_that_did_not_ack_are_written() {
    let mut sim = Sim::new();
    sim.auto_commit = false;
    sim.auto_advance = false;
    let a = sim.connect(dev(1, 1));
    let b1 = sim.connect(dev(2, 1));
    sim.connect(dev(2, 2));
    let b2 = *sim.clients.keys().last().unwrap();
    sim.disconnect(b2);
    let c = sim.connect(dev(3, 1));
    sim.disconnect(c);
    // Keep the writer busy so the next send collects.
    sim.send(a, dev(3, 1), 1, b"busy");
    sim.run();
    sim.send(a, dev(2, 0), 2, b"to both devices");
    sim.run();
    let got = delivered(&sim.take(b1));
    sim.ack(b1, vec![got[0].0]);
    sim.run();
    while sim.commit() {
        sim.run();
    }
    assert_eq!(answer(&sim.take(a), 2), Some(Ok(2)));
    assert!(
        sim.store.queued(dev(2, 1)).is_empty(),
        "acked before its write"
    );
    assert_eq!(
        sim.store.queued(dev(2, 2)).len(),
        1,
        "the offline device's entry"
    );
}

#[test]
fn a_device_that_goes_away_gets_what_it_did_not_ack_on_its_next_connection() {
    let mut sim = Sim::new();
    sim.auto_advance = false;
    let a = sim.connect(dev(1, 1));
    let b = sim.connect(dev(2, 1));
    sim.send(a, dev(2, 1), 1, b"x");
    sim.run();
    assert_eq!(ids(&sim.take(b)), vec![1]);
    sim.disconnect(b);
    sim.run();
    assert_eq!(answer(&sim.take(a), 1), Some(Ok(1)), "written once it left");
    let b = sim.connect(dev(2, 1));
    assert_eq!(ids(&sim.take(b)), vec![1], "redelivered from the queue");
}

#[test]
fn past_the_memory_cap_envelopes_are_written_at_once() {
    let mut setup = Setup::default();
    setup.limits.max_held_bytes = 1;
    let mut sim = Sim::with(setup);
    sim.auto_advance = false;
    sim.auto_commit = false;
    let a = sim.connect(dev(1, 1));
    sim.connect(dev(2, 1));
    sim.send(a, dev(2, 1), 1, b"x");
    sim.run();
    assert!(
        sim.store.has_submitted(),
        "written without waiting for acks"
    );
}

#[test]
fn an_offline_device_drains_its_queue_in_order_past_the_window() {
    let mut setup = Setup::default();
    setup.limits.max_inflight = 4;
    let mut sim = Sim::with(setup);
    let a = sim.connect(dev(1, 1));
    sim.connect(dev(2, 1));
    let b = *sim.clients.keys().last().unwrap();
    sim.disconnect(b);
    for m in 1..=10 {
        sim.send(a, dev(2, 1), m, b"x");
    }
    sim.run();
    let b = sim.connect(dev(2, 1));
    let first = delivered(&sim.take(b));
    assert_eq!(first.len(), 4, "the window bounds what is in flight");
    let mut got: Vec<u128> = first.iter().map(|d| d.1).collect();
    let mut pending: Vec<u64> = first.iter().map(|d| d.0).collect();
    while got.len() < 10 {
        sim.ack(b, std::mem::take(&mut pending));
        sim.run();
        let more = delivered(&sim.take(b));
        assert!(!more.is_empty(), "acks reopen the window");
        pending = more.iter().map(|d| d.0).collect();
        got.extend(more.iter().map(|d| d.1));
    }
    assert_eq!(got, (1..=10).collect::<Vec<_>>(), "acceptance order");
}

#[test]
fn acked_envelopes_are_gone_and_unacked_ones_come_back() {
    let mut sim = Sim::new();
    let a = sim.connect(dev(1, 1));
    let b = sim.connect(dev(2, 1));
    sim.send(a, dev(2, 1), 1, b"one");
    sim.send(a, dev(2, 1), 2, b"two");
    sim.run();
    let got = delivered(&sim.take(b));
    assert_eq!(got.len(), 2);
    sim.ack(b, vec![got[0].0]);
    sim.run();
    sim.disconnect(b);
    let b = sim.connect(dev(2, 1));
    assert_eq!(
        ids(&sim.take(b)),
        vec![2],
        "only the unacked one is redelivered"
    );
    assert_eq!(sim.store.queued(dev(2, 1)).len(), 1);
}

#[test]
fn expired_envelopes_are_never_delivered() {
    let mut sim = Sim::new();
    let a = sim.connect(dev(1, 1));
    sim.connect(dev(2, 1));
    let b = *sim.clients.keys().last().unwrap();
    sim.disconnect(b);
    sim.send_with(a, dev(2, 1), 1, 0, 1, b"short");
    sim.send_with(a, dev(2, 1), 2, 0, 3600, b"long");
    sim.run();
    sim.advance(2_000);
    let b = sim.connect(dev(2, 1));
    assert_eq!(ids(&sim.take(b)), vec![2]);
    sim.store.sweep(sim.now_ms);
    assert_eq!(
        sim.store.queued(dev(2, 1)).len(),
        1,
        "the sweeper removed it"
    );
}

#[test]
fn a_retry_is_stored_once_and_answered_like_the_first() {
    let mut sim = Sim::new();
    sim.auto_commit = false;
    let a = sim.connect(dev(1, 1));
    let b = sim.connect(dev(2, 1));
    sim.disconnect(b);
    // A retry while the first is in flight waits for the same answer.
    sim.send(a, dev(2, 1), 7, b"x");
    sim.send(a, dev(2, 1), 7, b"x");
    sim.run();
    while sim.commit() {
        sim.run();
    }
    let frames = sim.take(a);
    let answers: Vec<_> = frames
        .iter()
        .filter(|f| matches!(f, Frame::Accepted(_)))
        .collect();
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0], answers[1]);
    // A retry after the commit finds the committed record: nothing more is stored.
    sim.advance(10);
    sim.send(a, dev(2, 1), 7, b"x");
    sim.run();
    while sim.commit() {
        sim.run();
    }
    let again = sim.take(a);
    assert_eq!(
        again.first(),
        answers.first().copied(),
        "same answer, same time"
    );
    assert_eq!(sim.store.queued(dev(2, 1)).len(), 1, "stored once");
}

#[test]
fn ephemeral_envelopes_reach_online_devices_only_and_are_never_written() {
    let mut sim = Sim::new();
    let a = sim.connect(dev(1, 1));
    let b1 = sim.connect(dev(2, 1));
    sim.connect(dev(2, 2));
    let b2 = *sim.clients.keys().last().unwrap();
    sim.disconnect(b2);
    sim.send_with(a, dev(2, 0), 1, flags::EPHEMERAL, 0, b"typing");
    sim.run();
    let got = sim.take(b1);
    assert_eq!(delivered(&got), vec![(0, 1)], "seq 0: nothing to ack");
    assert_eq!(answer(&sim.take(a), 1), Some(Ok(1)), "one device reached");
    assert_eq!(sim.store.entries_written(), 0);
    let b2 = sim.connect(dev(2, 2));
    assert!(delivered(&sim.take(b2)).is_empty());
}

#[test]
fn frames_behind_hello_are_handled_once_registered() {
    let mut sim = Sim::new();
    let b = sim.connect(dev(2, 1));
    let a = sim.open(dev(1, 1));
    let token = sim.token(dev(1, 1), "", "");
    // HELLO and SEND in one read, nothing after.
    sim.input(
        a,
        Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            token,
        }),
    );
    sim.send(a, dev(2, 1), 1, b"right behind");
    sim.run();
    let frames = sim.take(a);
    assert!(matches!(frames[0], Frame::Welcome(_)), "{frames:?}");
    assert_eq!(answer(&frames, 1), Some(Ok(1)));
    assert_eq!(ids(&sim.take(b)), vec![1]);
}

#[test]
fn a_zero_message_id_is_refused_and_the_connection_stays() {
    let mut sim = Sim::new();
    let a = sim.connect(dev(1, 1));
    sim.connect(dev(2, 1));
    sim.send(a, dev(2, 1), 0, b"x");
    sim.send(a, dev(2, 1), 5, b"x");
    sim.run();
    let frames = sim.take(a);
    assert_eq!(answer(&frames, 0), Some(Err(ErrorCode::InvalidMessageId)));
    assert_eq!(answer(&frames, 5), Some(Ok(1)));
    assert!(sim.closed(a).is_none());
}

#[test]
fn the_first_frame_must_be_hello_and_a_bad_token_is_refused() {
    let mut sim = Sim::new();
    let a = sim.open(dev(1, 1));
    sim.send(a, dev(2, 1), 1, b"x");
    sim.run();
    assert_eq!(
        sim.closed(a).map(|c| c.0),
        Some(ErrorCode::ProtocolViolation)
    );
    let b = sim.open(dev(1, 1));
    sim.input(
        b,
        Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            token: "ht1.forged".into(),
        }),
    );
    sim.run();
    assert_eq!(sim.closed(b).map(|c| c.0), Some(ErrorCode::BadToken));
}

#[test]
fn a_newer_connection_replaces_the_older_one() {
    let mut sim = Sim::new();
    let old = sim.connect(dev(1, 1));
    let new = sim.connect(dev(1, 1));
    assert_eq!(sim.closed(old).map(|c| c.0), Some(ErrorCode::Replaced));
    assert!(sim.closed(new).is_none());
    assert!(sim.core.is_online(dev(1, 1)));
}

#[test]
fn a_full_queue_refuses_and_stores_nothing() {
    let mut setup = Setup::default();
    setup.limits.max_queue_len = 2;
    let mut sim = Sim::with(setup);
    sim.auto_commit = false;
    let a = sim.connect(dev(1, 1));
    sim.connect(dev(2, 1));
    let b = *sim.clients.keys().last().unwrap();
    sim.disconnect(b);
    for m in 1..=3 {
        sim.send(a, dev(2, 1), m, b"x");
    }
    sim.run();
    // The third is refused before anything is written: the limit counts what is collected.
    assert_eq!(answer(&sim.take(a), 3), Some(Err(ErrorCode::QueueFull)));
    while sim.commit() {
        sim.run();
    }
    assert_eq!(sim.store.queued(dev(2, 1)).len(), 2);
}

#[test]
fn a_failed_write_answers_internal_and_stops_storing() {
    let mut sim = Sim::new();
    sim.auto_commit = false;
    let a = sim.connect(dev(1, 1));
    sim.connect(dev(2, 1));
    sim.send(a, dev(2, 1), 1, b"x");
    sim.run();
    let (job, _) = sim.store.commit_one().expect("a write");
    sim.core
        .handle_committed(job, Err(StorageError::Db("disk gone".into())), sim.now_ms);
    sim.run();
    assert_eq!(answer(&sim.take(a), 1), Some(Err(ErrorCode::Internal)));
    assert!(sim.core.poisoned());
    sim.send(a, dev(2, 1), 2, b"x");
    sim.run();
    assert_eq!(answer(&sim.take(a), 2), Some(Err(ErrorCode::Internal)));
    assert!(
        !sim.store.has_submitted(),
        "nothing more is handed to the store"
    );
}

#[test]
fn groups_reach_members_and_a_removed_member_stops_receiving() {
    let mut sim = Sim::new();
    let a = sim.connect(dev(1, 1));
    let b = sim.connect(dev(2, 1));
    let c = sim.connect(dev(3, 1));
    sim.input(
        a,
        Frame::GroupCreate(GroupCreate {
            req_id: MessageId::from_u128(100),
            group: 9,
            members: vec![2, 3],
        }),
    );
    sim.run();
    assert!(matches!(sim.take(a)[0], Frame::GroupOk(_)));
    // Members are loaded once, the first time the group is used after an eviction.
    sim.store.evict_groups();
    let group_send = |sim: &mut Sim, msg| {
        sim.input(
            a,
            Frame::SendGroup(SendGroup {
                msg_id: MessageId::from_u128(msg),
                group: 9,
                ttl_secs: 0,
                flags: 0,
                payload: Bytes::from_static(b"to the group"),
            }),
        );
        sim.run();
    };
    group_send(&mut sim, 1);
    assert_eq!(answer(&sim.take(a), 1), Some(Ok(2)));
    assert_eq!(ids(&sim.take(b)), vec![1]);
    assert_eq!(ids(&sim.take(c)), vec![1]);
    sim.input(
        a,
        Frame::GroupUpdate(GroupUpdate {
            req_id: MessageId::from_u128(101),
            group: 9,
            op: group_op::REMOVE_MEMBERS,
            accounts: vec![3],
        }),
    );
    sim.run();
    assert!(matches!(sim.take(a)[0], Frame::GroupOk(_)));
    group_send(&mut sim, 2);
    assert_eq!(answer(&sim.take(a), 2), Some(Ok(1)));
    assert_eq!(ids(&sim.take(b)), vec![2]);
    assert!(ids(&sim.take(c)).is_empty(), "removed right after GROUP_OK");
    // A non-member may not send.
    sim.input(
        c,
        Frame::SendGroup(SendGroup {
            msg_id: MessageId::from_u128(3),
            group: 9,
            ttl_secs: 0,
            flags: 0,
            payload: Bytes::new(),
        }),
    );
    sim.run();
    assert_eq!(answer(&sim.take(c), 3), Some(Err(ErrorCode::NotAMember)));
}

#[test]
fn a_block_is_silent_and_stores_nothing() {
    let mut sim = Sim::new();
    let a = sim.connect(dev(1, 1));
    let b = sim.connect(dev(2, 1));
    policy(
        &mut sim,
        b,
        50,
        PolicyChange::Block {
            add: true,
            accounts: vec![1],
        },
    );
    sim.send(a, dev(2, 1), 1, b"x");
    sim.run();
    assert_eq!(
        answer(&sim.take(a), 1),
        Some(Ok(1)),
        "told it reached one device"
    );
    assert!(ids(&sim.take(b)).is_empty());
    assert!(sim.store.queued(dev(2, 1)).is_empty());
}

#[test]
fn contacts_only_and_nobody_refuse_strangers() {
    let mut sim = Sim::new();
    let a = sim.connect(dev(1, 1));
    let c = sim.connect(dev(3, 1));
    let b = sim.connect(dev(2, 1));
    policy(&mut sim, b, 50, PolicyChange::Reach(reach::CONTACTS));
    policy(
        &mut sim,
        b,
        51,
        PolicyChange::Allow {
            add: true,
            accounts: vec![3],
        },
    );
    sim.send(a, dev(2, 1), 1, b"stranger");
    sim.send(c, dev(2, 1), 2, b"contact");
    sim.run();
    assert_eq!(
        answer(&sim.take(a), 1),
        Some(Err(ErrorCode::RecipientUnreachable))
    );
    assert_eq!(answer(&sim.take(c), 2), Some(Ok(1)));
    assert_eq!(ids(&sim.take(b)), vec![2]);
    policy(&mut sim, b, 52, PolicyChange::Reach(reach::NOBODY));
    sim.send(c, dev(2, 1), 3, b"contact");
    sim.run();
    assert_eq!(
        answer(&sim.take(c), 3),
        Some(Err(ErrorCode::RecipientUnreachable))
    );
    assert!(ids(&sim.take(b)).is_empty());
}

#[test]
fn other_networks_reach_an_account_only_after_it_opts_in() {
    let mut setup = Setup::default();
    setup.privacy.networks = vec!["chat".into(), "photos".into()];
    let mut sim = Sim::with(setup);
    let p = sim.connect_in(dev(1, 1), "photos");
    let b = sim.connect(dev(2, 1));
    sim.send(p, dev(2, 1), 1, b"x");
    sim.run();
    assert_eq!(
        answer(&sim.take(p), 1),
        Some(Err(ErrorCode::RecipientUnreachable))
    );
    policy(
        &mut sim,
        b,
        50,
        PolicyChange::Networks(vec!["photos".into()]),
    );
    sim.send(p, dev(2, 1), 2, b"x");
    sim.run();
    assert_eq!(answer(&sim.take(p), 2), Some(Ok(1)));
    assert_eq!(ids(&sim.take(b)), vec![2]);
    // An unknown network is refused at HELLO.
    let x = sim.open(dev(3, 1));
    let token = sim.token(dev(3, 1), "unknown", "");
    sim.input(
        x,
        Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            token,
        }),
    );
    sim.run();
    assert_eq!(sim.closed(x).map(|c| c.0), Some(ErrorCode::BadToken));
}

#[test]
fn sealed_sends_need_the_access_key_and_carry_no_sender() {
    let mut sim = Sim::new();
    let a = sim.connect(dev(1, 1));
    let b = sim.connect(dev(2, 1));
    policy(
        &mut sim,
        b,
        50,
        PolicyChange::AccessKey(Bytes::from_static(b"secret")),
    );
    let sealed = |sim: &mut Sim, msg, key: &'static [u8]| {
        sim.input(
            a,
            Frame::SendSealed(SendSealed {
                msg_id: MessageId::from_u128(msg),
                to_account: 2,
                to_device: 0,
                ttl_secs: 0,
                flags: 0,
                access_key: Bytes::from_static(key),
                payload: Bytes::from_static(b"sealed"),
            }),
        );
        sim.run();
    };
    sealed(&mut sim, 1, b"wrong");
    assert_eq!(answer(&sim.take(a), 1), Some(Err(ErrorCode::BadAccessKey)));
    sealed(&mut sim, 2, b"secret");
    assert_eq!(answer(&sim.take(a), 2), Some(Ok(1)));
    let got = sim.take(b);
    let Some(Frame::Deliver(d)) = got.first() else {
        panic!("no delivery: {got:?}");
    };
    assert_eq!((d.meta.from_account, d.meta.from_device), (0, 0));
}

#[test]
fn the_device_rate_limit_refuses_with_a_retry_after_and_recovers() {
    let mut setup = Setup::default();
    setup.safety.per_device_per_sec = 2;
    setup.safety.per_device_burst = 2;
    let mut sim = Sim::with(setup);
    let a = sim.connect(dev(1, 1));
    sim.connect(dev(2, 1));
    for m in 1..=3 {
        sim.send(a, dev(2, 1), m, b"x");
    }
    sim.run();
    let frames = sim.take(a);
    assert_eq!(answer(&frames, 2), Some(Ok(1)));
    let refused = frames.iter().find_map(|f| match f {
        Frame::Error(e) if e.msg_id.as_u128() == 3 => Some(e.refusal.clone()),
        _ => None,
    });
    let refused = refused.expect("the third send is refused");
    assert_eq!(refused.code, ErrorCode::RateLimited);
    assert!(refused.retry_after_ms > 0);
    sim.advance(u64::from(refused.retry_after_ms));
    sim.send(a, dev(2, 1), 4, b"x");
    sim.run();
    assert_eq!(answer(&sim.take(a), 4), Some(Ok(1)));
}

#[test]
fn an_offline_device_with_a_push_token_is_woken_once_durable() {
    let mut sim = Sim::new();
    let a = sim.connect(dev(1, 1));
    let b = sim.connect(dev(2, 1));
    policy(
        &mut sim,
        b,
        50,
        PolicyChange::PushToken(Bytes::from_static(b"tok")),
    );
    sim.disconnect(b);
    sim.send_with(a, dev(2, 1), 1, flags::URGENT, 0, b"x");
    sim.run();
    assert_eq!(sim.wakeups, vec![(Bytes::from_static(b"tok"), true)]);
}

#[test]
fn a_big_fan_out_is_written_in_parts_and_later_sends_keep_their_order() {
    const MEMBERS: u64 = 9000; // more than one write takes (8192 entries)
    let mut sim = Sim::new();
    let a = sim.connect(dev(1, 1));
    // Every member, and one stranger, registered and offline.
    for account in (2..MEMBERS + 2).chain([50_000]) {
        let c = sim.connect(dev(account, 1));
        sim.disconnect(c);
    }
    let members: Vec<u64> = (2..MEMBERS + 2).collect();
    for (i, chunk) in members.chunks(4000).enumerate() {
        let req_id = MessageId::from_u128(100 + i as u128);
        let frame = if i == 0 {
            Frame::GroupCreate(GroupCreate {
                req_id,
                group: 9,
                members: chunk.to_vec(),
            })
        } else {
            Frame::GroupUpdate(GroupUpdate {
                req_id,
                group: 9,
                op: group_op::ADD_MEMBERS,
                accounts: chunk.to_vec(),
            })
        };
        sim.input(a, frame);
        sim.run();
        assert!(
            matches!(sim.take(a)[..], [Frame::GroupOk(_)]),
            "group change {i}"
        );
    }
    sim.run();
    let before = sim.store.entries_written();
    sim.auto_commit = false;
    sim.input(
        a,
        Frame::SendGroup(SendGroup {
            msg_id: MessageId::from_u128(1),
            group: 9,
            ttl_secs: 0,
            flags: 0,
            payload: Bytes::from_static(b"to everyone"),
        }),
    );
    sim.run();
    // Behind it: a stranger, a member of its first part, a member of its last part.
    sim.send(a, dev(50_000, 1), 2, b"x");
    sim.send(a, dev(2, 1), 3, b"x");
    sim.send(a, dev(MEMBERS + 1, 1), 4, b"x");
    sim.run();
    assert!(sim.commit(), "the first part");
    let first = sim.store.entries_written() - before;
    assert!((1..=8192).contains(&first), "first write: {first} entries");
    sim.run();
    assert_eq!(
        answer(&sim.take(a), 1),
        None,
        "answered once every part is durable"
    );
    assert!(
        sim.commit(),
        "the last part, with what was collected meanwhile"
    );
    sim.run();
    let frames = sim.take(a);
    assert_eq!(answer(&frames, 1), Some(Ok(MEMBERS as u32)));
    assert_eq!(
        answer(&frames, 2),
        Some(Ok(1)),
        "the stranger did not wait for the rest"
    );
    assert_eq!(answer(&frames, 3), Some(Ok(1)));
    assert_eq!(
        answer(&frames, 4),
        None,
        "queued behind the part holding its device"
    );
    assert!(sim.commit());
    sim.run();
    assert_eq!(answer(&sim.take(a), 4), Some(Ok(1)));
    assert!(!sim.commit());
    for account in [2, MEMBERS / 2, MEMBERS + 1] {
        assert_eq!(
            sim.store.queued(dev(account, 1)).len(),
            1 + usize::from(account == 2 || account == MEMBERS + 1)
        );
    }
    let last: Vec<u128> = sim
        .store
        .queued(dev(MEMBERS + 1, 1))
        .iter()
        .map(|e| e.envelope.msg_id.as_u128())
        .collect();
    assert_eq!(last, vec![1, 4], "in seq order");
}
