//! Requests that change what reaches an account (`POLICY_SET`), reports of abuse (`REPORT`),
//! and sealed sends (`SEND_SEALED`).

use std::sync::Arc;

use bytes::Bytes;
use hearth_protocol::{self as wire, reach, ErrorCode, Frame, MessageId, PolicyChange, Refusal};
use hearth_storage::{DeviceKey, ListKind, Reach};
use tokio::sync::oneshot;

use crate::core::{Recipients, Router, SendReply};
use crate::policy::Origin;

/// Most networks an account may opt in to.
const MAX_NETWORKS: usize = 16;
/// Longest push token, in bytes.
const MAX_PUSH_TOKEN: usize = 512;
/// Longest delivery access key, in bytes.
const MAX_ACCESS_KEY: usize = 64;

/// The dedup identity of sealed sends: no sender is recorded with them.
const SEALED: DeviceKey = DeviceKey {
    account: 0,
    device: 0,
};

impl Router {
    /// Handle `POLICY_SET` from `origin`'s account (and, for push tokens, its device).
    pub fn policy_set(
        self: &Arc<Self>,
        origin: &Origin,
        req_id: MessageId,
        change: PolicyChange,
        now_ms: u64,
    ) -> SendReply {
        let invalid =
            |msg: &'static str| self.refuse(req_id, Refusal::new(ErrorCode::InvalidRequest, msg));
        let account = origin.key.account;
        let device = origin.key;
        let store = self.store.clone();
        let (tx, rx) = oneshot::channel();
        let answer = move |r: Result<(), hearth_storage::StorageError>| match r {
            Ok(()) => Frame::Ok(wire::RequestOk { req_id }),
            Err(e) => {
                tracing::error!(error = %e, "policy update failed");
                Refusal::internal().answer(req_id)
            }
        };
        match change {
            PolicyChange::Reach(mode) => {
                let r = match mode {
                    reach::EVERYONE => Reach::Everyone,
                    reach::CONTACTS => Reach::Contacts,
                    reach::NOBODY => Reach::Nobody,
                    _ => return invalid("unknown reachability mode"),
                };
                tokio::spawn(async move {
                    let _ = tx.send(answer(store.set_reach(account, r).await));
                });
            }
            PolicyChange::Allow { accounts, .. } | PolicyChange::Block { accounts, .. }
                if accounts.contains(&account) =>
            {
                return invalid("an account cannot list itself");
            }
            PolicyChange::Allow { add, accounts } => {
                tokio::spawn(async move {
                    let r = store
                        .update_list(account, ListKind::Allow, add, &accounts)
                        .await;
                    let _ = tx.send(answer(r.map(|_| ())));
                });
            }
            PolicyChange::Block { add, accounts } => {
                let router = self.clone();
                tokio::spawn(async move {
                    let before: Vec<bool> = accounts
                        .iter()
                        .map(|a| store.list_contains(account, ListKind::Block, *a))
                        .collect();
                    let r = store
                        .update_list(account, ListKind::Block, add, &accounts)
                        .await;
                    if add && r.is_ok() {
                        for (a, was) in accounts.iter().zip(before) {
                            if !was {
                                router.safety.note_block(*a, now_ms);
                            }
                        }
                    }
                    let _ = tx.send(answer(r.map(|_| ())));
                });
            }
            PolicyChange::Networks(names) => {
                if names.len() > MAX_NETWORKS {
                    return invalid("at most 16 networks");
                }
                if let Some(n) = names.iter().find(|n| !self.privacy.networks.contains(n)) {
                    let msg = format!("unknown network {n:?}");
                    return self.refuse(req_id, Refusal::new(ErrorCode::InvalidRequest, msg));
                }
                tokio::spawn(async move {
                    let _ = tx.send(answer(store.set_networks(account, names).await));
                });
            }
            PolicyChange::AccessKey(key) => {
                if key.len() > MAX_ACCESS_KEY {
                    return invalid("the access key is longer than 64 bytes");
                }
                let hash = (!key.is_empty()).then(|| sha256(&key));
                tokio::spawn(async move {
                    let _ = tx.send(answer(store.set_access_key_hash(account, hash).await));
                });
            }
            PolicyChange::PushToken(token) => {
                if token.len() > MAX_PUSH_TOKEN {
                    return invalid("the push token is longer than 512 bytes");
                }
                let token = (!token.is_empty()).then_some(token);
                tokio::spawn(async move {
                    let _ = tx.send(answer(store.set_push_token(device, token).await));
                });
            }
        }
        SendReply::Later(rx)
    }

    /// Handle `REPORT`: count it against the reported account (an abuse signal), once per
    /// reporter and reported account within the retention window.
    pub fn report(
        &self,
        origin: &Origin,
        req_id: MessageId,
        account: u64,
        now_ms: u64,
    ) -> SendReply {
        if account != origin.key.account && self.first_report(origin.key.account, account, now_ms) {
            self.safety.note_report(account, now_ms);
        }
        SendReply::Now(Frame::Ok(wire::RequestOk { req_id }))
    }

    /// Handle `SEND_SEALED`: authorised by the recipient's delivery access key, delivered without
    /// the sender's identity, and recorded without it.
    #[allow(clippy::too_many_arguments)]
    pub fn send_sealed(
        self: &Arc<Self>,
        origin: &Origin,
        msg_id: MessageId,
        to_account: u64,
        to_device: u32,
        ttl_secs: u32,
        flags: u8,
        access_key: Bytes,
        payload: Bytes,
        now_ms: u64,
    ) -> SendReply {
        let mut env = match self.envelope(origin.key, msg_id, ttl_secs, flags, payload, now_ms) {
            Ok(env) => env,
            Err(r) => return self.refuse(msg_id, r),
        };
        (env.from_account, env.from_device) = (0, 0);
        let devices = match self.addressed(to_account, to_device, origin.key) {
            Ok(d) => d,
            Err(r) => return self.refuse(msg_id, r),
        };
        let record = match self.store.account(to_account) {
            Ok(r) => r,
            Err(e) => return self.storage_failure(msg_id, &e),
        };
        if record.as_ref().is_some_and(|r| r.reach == Reach::Nobody) {
            let msg = "the recipient accepts no envelopes".to_string();
            return self.refuse(msg_id, Refusal::new(ErrorCode::RecipientUnreachable, msg));
        }
        // Every attempt that gets this far counts, whether or not its key matches.
        if let Err(r) = self.safety.check_sealed(to_account) {
            return self.limited(msg_id, r);
        }
        let hash = record.and_then(|r| r.access_key_hash);
        if !hash.is_some_and(|h| constant_time_eq(&h, &sha256(&access_key))) {
            let msg = "the delivery access key does not match".to_string();
            return self.refuse(msg_id, Refusal::new(ErrorCode::BadAccessKey, msg));
        }
        let sender = (origin.key.account, origin.key.device);
        if let Err(r) = self
            .safety
            .check_send(sender, &[], env.payload.len() as u64, now_ms)
        {
            return self.limited(msg_id, r);
        }
        self.deliver(SEALED, env, Recipients::Inline(devices))
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Constant-time comparison of two hashes.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
