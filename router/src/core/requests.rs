//! Requests that are not sends: group changes and reads (`GROUP_CREATE`, `GROUP_UPDATE`,
//! `GROUP_GET`), settings (`POLICY_SET`), and abuse reports (`REPORT`). The core checks them and
//! the store decides or performs them (group rules live with the group's data, in one writer);
//! their outcome becomes the answer frame here.

use std::collections::HashMap;

use hearth_protocol::{
    group_op, reach, role, ErrorCode, Frame, GroupInfo, GroupOk, MessageId, PolicyChange, Refusal,
    Report, RequestOk,
};
use hearth_storage::{DeviceKey, GroupError, GroupOp, ListKind, Reach, Role};

use super::action::{Request, RequestOutcome};
use super::owner::sha256;
use super::view::View;
use crate::config::{Limits, Privacy};
use crate::safety::Safety;

/// Most networks an account may opt in to.
const MAX_NETWORKS: usize = 16;
/// Longest push token, in bytes.
const MAX_PUSH_TOKEN: usize = 512;
/// Longest delivery access key, in bytes.
const MAX_ACCESS_KEY: usize = 64;
/// Most (reporter, reported) pairs remembered; past it the oldest half is forgotten.
const MAX_REPORT_PAIRS: usize = 100_000;

/// Check a group or settings request from device `from` and turn it into what the store must
/// do; a refusal carries the id to answer.
pub(super) fn check(
    view: &dyn View,
    limits: &Limits,
    privacy: &Privacy,
    from: DeviceKey,
    frame: Frame,
) -> Result<(MessageId, Request), (MessageId, Refusal)> {
    let actor = from.account;
    let invalid = |id, msg: &'static str| Err((id, Refusal::new(ErrorCode::InvalidRequest, msg)));
    let zero_id = |id: MessageId| {
        (id == MessageId::NONE).then(|| {
            Refusal::new(
                ErrorCode::InvalidMessageId,
                "the request id must not be zero",
            )
        })
    };
    let max_size = limits.max_group_size;
    let (req_id, request) = match frame {
        Frame::GroupCreate(g) => {
            if let Some(r) = zero_id(g.req_id) {
                return Err((g.req_id, r));
            }
            if g.group == 0 {
                return invalid(g.req_id, "group 0 is reserved");
            }
            let request = Request::GroupCreate {
                group: g.group,
                creator: actor,
                members: g.members,
                max_size,
            };
            (g.req_id, request)
        }
        Frame::GroupUpdate(g) => {
            if let Some(r) = zero_id(g.req_id) {
                return Err((g.req_id, r));
            }
            if g.group == 0 {
                return invalid(g.req_id, "group 0 is reserved");
            }
            let op = match g.op {
                group_op::ADD_MEMBERS => GroupOp::AddMembers(g.accounts),
                group_op::REMOVE_MEMBERS => GroupOp::RemoveMembers(g.accounts),
                group_op::ADD_ADMINS => GroupOp::AddAdmins(g.accounts),
                group_op::REMOVE_ADMINS => GroupOp::RemoveAdmins(g.accounts),
                group_op::DELETE if g.accounts.is_empty() => GroupOp::Delete,
                group_op::DELETE => return invalid(g.req_id, "DELETE lists no accounts"),
                other => {
                    let msg = format!("unknown group operation {other}");
                    return Err((g.req_id, Refusal::new(ErrorCode::InvalidRequest, msg)));
                }
            };
            let request = Request::GroupUpdate {
                group: g.group,
                actor,
                op,
                max_size,
            };
            (g.req_id, request)
        }
        Frame::GroupGet(g) => {
            if let Some(r) = zero_id(g.req_id) {
                return Err((g.req_id, r));
            }
            if g.group == 0 {
                return invalid(g.req_id, "group 0 is reserved");
            }
            let cap = (limits.max_envelope_bytes / 16).clamp(1, 16384) as u32;
            let request = Request::GroupGet {
                group: g.group,
                actor,
                offset: g.offset,
                limit: g.limit.min(cap),
            };
            (g.req_id, request)
        }
        Frame::PolicySet(p) => {
            let id = p.req_id;
            if let Some(r) = zero_id(id) {
                return Err((id, r));
            }
            let request = match p.change {
                PolicyChange::Reach(mode) => {
                    let reach = match mode {
                        reach::EVERYONE => Reach::Everyone,
                        reach::CONTACTS => Reach::Contacts,
                        reach::NOBODY => Reach::Nobody,
                        _ => return invalid(id, "unknown reachability mode"),
                    };
                    Request::SetReach {
                        account: actor,
                        reach,
                    }
                }
                PolicyChange::Allow { accounts, .. } | PolicyChange::Block { accounts, .. }
                    if accounts.contains(&actor) =>
                {
                    return invalid(id, "an account cannot list itself");
                }
                PolicyChange::Allow { add, accounts } => Request::UpdateList {
                    account: actor,
                    kind: ListKind::Allow,
                    add,
                    accounts,
                    newly_blocked: Vec::new(),
                },
                PolicyChange::Block { add, accounts } => {
                    let mut newly_blocked = Vec::new();
                    if add {
                        for &a in &accounts {
                            if !view.listed(actor, ListKind::Block, a)
                                && !newly_blocked.contains(&a)
                            {
                                newly_blocked.push(a);
                            }
                        }
                    }
                    Request::UpdateList {
                        account: actor,
                        kind: ListKind::Block,
                        add,
                        accounts,
                        newly_blocked,
                    }
                }
                PolicyChange::Networks(names) => {
                    if names.len() > MAX_NETWORKS {
                        return invalid(id, "at most 16 networks");
                    }
                    if let Some(n) = names.iter().find(|n| !privacy.networks.contains(n)) {
                        let msg = format!("unknown network {n:?}");
                        return Err((id, Refusal::new(ErrorCode::InvalidRequest, msg)));
                    }
                    Request::SetNetworks {
                        account: actor,
                        names,
                    }
                }
                PolicyChange::AccessKey(key) => {
                    if key.len() > MAX_ACCESS_KEY {
                        return invalid(id, "the access key is longer than 64 bytes");
                    }
                    Request::SetAccessKey {
                        account: actor,
                        hash: (!key.is_empty()).then(|| sha256(&key)),
                    }
                }
                PolicyChange::PushToken(token) => {
                    if token.len() > MAX_PUSH_TOKEN {
                        return invalid(id, "the push token is longer than 512 bytes");
                    }
                    Request::SetPushToken {
                        device: from,
                        token: (!token.is_empty()).then_some(token),
                    }
                }
            };
            (id, request)
        }
        other => unreachable!("not a request: 0x{:02x}", other.type_byte()),
    };
    Ok((req_id, request))
}

/// The answer frame of a performed request (and the abuse signal of new blocks).
pub(super) fn answer(
    safety: &Safety,
    req_id: MessageId,
    request: Request,
    outcome: RequestOutcome,
    now_ms: u64,
) -> Frame {
    match outcome {
        RequestOutcome::Group(Ok(st)) => Frame::GroupOk(GroupOk {
            req_id,
            group: st.group,
            version: st.version,
            members: st.members,
        }),
        RequestOutcome::Group(Err(e)) => group_refusal(e).answer(req_id),
        RequestOutcome::Page(Ok(None)) => {
            Refusal::new(ErrorCode::NoSuchGroup, "no such group").answer(req_id)
        }
        RequestOutcome::Page(Ok(Some((members, (st, page))))) => {
            let Request::GroupGet { actor, offset, .. } = request else {
                unreachable!("a page answers GROUP_GET");
            };
            if members.binary_search(&actor).is_err() {
                return Refusal::new(ErrorCode::NotAMember, "only members may read a group")
                    .answer(req_id);
            }
            Frame::GroupInfo(GroupInfo {
                req_id,
                group: st.group,
                version: st.version,
                creator: st.creator,
                total: st.members,
                offset,
                members: page
                    .into_iter()
                    .map(|(a, r)| {
                        let role = match r {
                            Role::Admin => role::ADMIN,
                            Role::Member => role::MEMBER,
                        };
                        (a, role)
                    })
                    .collect(),
            })
        }
        RequestOutcome::Page(Err(e)) | RequestOutcome::Done(Err(e)) => {
            tracing::error!(error = %e, "a request failed in the store");
            Refusal::internal().answer(req_id)
        }
        RequestOutcome::Done(Ok(())) => {
            if let Request::UpdateList { newly_blocked, .. } = request {
                for a in newly_blocked {
                    safety.note_block(a, now_ms);
                }
            }
            Frame::Ok(RequestOk { req_id })
        }
    }
}

/// Why a group change was refused.
fn group_refusal(e: GroupError) -> Refusal {
    match e {
        GroupError::NoSuchGroup => Refusal::new(ErrorCode::NoSuchGroup, "no such group"),
        GroupError::Exists => Refusal::new(ErrorCode::GroupExists, "the group already exists"),
        GroupError::NotMember => Refusal::new(ErrorCode::NotAMember, "not a member of the group"),
        GroupError::NotAdmin => Refusal::new(ErrorCode::NotAdmin, "only admins may do that"),
        GroupError::TooLarge => {
            Refusal::new(ErrorCode::GroupTooLarge, "the group would be too large")
        }
        GroupError::Invalid(why) => Refusal::new(ErrorCode::InvalidRequest, why),
        GroupError::Storage(e) => {
            tracing::error!(error = %e, "group update failed");
            Refusal::internal()
        }
    }
}

/// Who reported whom and when, so one reporter counts once per retention window.
#[derive(Debug)]
pub(super) struct Reports {
    seen: HashMap<(u64, u64), u64>,
    window_ms: u64,
}

impl Reports {
    pub(super) fn new(window_ms: u64) -> Reports {
        Reports {
            seen: HashMap::new(),
            window_ms,
        }
    }

    /// Handle `REPORT` from `reporter`: count it against the reported account (an abuse
    /// signal), once per reporter and reported account within the retention window.
    pub(super) fn report(
        &mut self,
        safety: &Safety,
        reporter: u64,
        r: Report,
        now_ms: u64,
    ) -> Frame {
        if r.req_id == MessageId::NONE {
            return Refusal::new(
                ErrorCode::InvalidMessageId,
                "the request id must not be zero",
            )
            .answer(r.req_id);
        }
        if r.account != reporter && self.first(reporter, r.account, now_ms) {
            safety.note_report(r.account, now_ms);
        }
        Frame::Ok(RequestOk { req_id: r.req_id })
    }

    fn first(&mut self, reporter: u64, reported: u64, now_ms: u64) -> bool {
        if self.seen.len() >= MAX_REPORT_PAIRS {
            let mut ages: Vec<u64> = self.seen.values().copied().collect();
            let (_, median, _) = ages.select_nth_unstable(self.seen.len() / 2);
            let cut = *median;
            self.seen.retain(|_, at| *at > cut);
        }
        match self.seen.get(&(reporter, reported)) {
            Some(at) if now_ms.saturating_sub(*at) < self.window_ms => false,
            _ => {
                self.seen.insert((reporter, reported), now_ms);
                true
            }
        }
    }

    /// Forget what is older than the window.
    pub(super) fn expire(&mut self, now_ms: u64) {
        let window = self.window_ms;
        self.seen
            .retain(|_, at| now_ms.saturating_sub(*at) < window);
    }

    /// Forget every pair naming `account` (erasure).
    pub(super) fn forget(&mut self, account: u64) {
        self.seen.retain(|(a, b), _| *a != account && *b != account);
    }
}
