//! The ingress stage: what the node a sender is connected to checks before a send goes to the
//! owner of its target's slot: the envelope itself (id, size, flags, TTL), the sender's own
//! rate limit and the sender's abuse counters. Its product is a `Routed` value.

use hearth_protocol::{
    flags, ErrorCode, MessageId, Refusal, Send, SendGroup, SendMulti, SendSealed,
};
use hearth_storage::StoredEnvelope;

use super::routed::{Origin, Routed, Target};
use super::Cx;
use bytes::Bytes;

/// The fields every kind of send shares.
struct Envelope {
    msg_id: MessageId,
    ttl_secs: u32,
    flags: u8,
    payload: Bytes,
}

impl Cx<'_> {
    /// Check the parts every kind of send shares and build the envelope to store.
    fn envelope(
        &self,
        origin: &Origin,
        e: Envelope,
        now_ms: u64,
    ) -> Result<StoredEnvelope, Refusal> {
        let l = self.limits;
        if e.msg_id == MessageId::NONE {
            return Err(Refusal::new(
                ErrorCode::InvalidMessageId,
                "the message id must not be zero",
            ));
        }
        if e.payload.len() > l.max_envelope_bytes {
            let msg = format!(
                "envelope of {} bytes exceeds the {}-byte limit",
                e.payload.len(),
                l.max_envelope_bytes
            );
            return Err(Refusal::new(ErrorCode::EnvelopeTooLarge, msg));
        }
        if e.flags & !flags::KNOWN != 0 {
            let msg = format!("unknown flag bits 0x{:02x}", e.flags);
            return Err(Refusal::new(ErrorCode::InvalidSend, msg));
        }
        let ttl = match e.ttl_secs {
            0 => l.default_ttl_secs,
            t => t.min(l.max_ttl_secs),
        };
        self.safety
            .check_sender((origin.device.account, origin.device.device), now_ms)
            .map_err(|r| self.limited(r))?;
        Ok(StoredEnvelope {
            msg_id: e.msg_id,
            from_account: origin.device.account,
            from_device: origin.device.device,
            accepted_at_ms: now_ms,
            expires_at_ms: now_ms + u64::from(ttl) * 1000,
            flags: e.flags,
            payload: e.payload,
        })
    }

    fn routed(&self, origin: &Origin, env: StoredEnvelope, target: Target) -> Routed {
        Routed {
            origin: origin.clone(),
            epoch: self.slots.epoch(),
            env,
            target,
        }
    }

    /// `SEND`.
    pub(super) fn ingress_send(
        &self,
        origin: &Origin,
        s: Send,
        now_ms: u64,
    ) -> Result<Routed, Refusal> {
        let e = Envelope {
            msg_id: s.msg_id,
            ttl_secs: s.ttl_secs,
            flags: s.flags,
            payload: s.payload,
        };
        let env = self.envelope(origin, e, now_ms)?;
        self.safety
            .note_sent(origin.device.account, &[s.to_account], now_ms);
        let target = Target::Account {
            account: s.to_account,
            device: s.to_device,
        };
        Ok(self.routed(origin, env, target))
    }

    /// `SEND_SEALED`: the envelope carries no sender, and no sender↔recipient counter is kept.
    pub(super) fn ingress_sealed(
        &self,
        origin: &Origin,
        s: SendSealed,
        now_ms: u64,
    ) -> Result<Routed, Refusal> {
        let e = Envelope {
            msg_id: s.msg_id,
            ttl_secs: s.ttl_secs,
            flags: s.flags,
            payload: s.payload,
        };
        let mut env = self.envelope(origin, e, now_ms)?;
        (env.from_account, env.from_device) = (0, 0);
        let target = Target::Sealed {
            account: s.to_account,
            device: s.to_device,
            access_key: s.access_key,
        };
        Ok(self.routed(origin, env, target))
    }

    /// `SEND_GROUP`: the group's owner resolves the members.
    pub(super) fn ingress_group(
        &self,
        origin: &Origin,
        s: SendGroup,
        now_ms: u64,
    ) -> Result<Routed, Refusal> {
        let e = Envelope {
            msg_id: s.msg_id,
            ttl_secs: s.ttl_secs,
            flags: s.flags,
            payload: s.payload,
        };
        let env = self.envelope(origin, e, now_ms)?;
        Ok(self.routed(origin, env, Target::Group { group: s.group }))
    }

    /// `SEND_MULTI`: split by the owner of each recipient's slot (one value per owner).
    pub(super) fn ingress_multi(
        &self,
        origin: &Origin,
        s: SendMulti,
        now_ms: u64,
    ) -> Result<Vec<Routed>, Refusal> {
        let l = self.limits;
        if s.recipients.len() > l.max_multi_recipients {
            let msg = format!(
                "{} recipients exceed the limit of {}",
                s.recipients.len(),
                l.max_multi_recipients
            );
            return Err(Refusal::new(ErrorCode::TooManyRecipients, msg));
        }
        if s.recipients
            .iter()
            .any(|r| r.header.len() > l.max_header_bytes)
        {
            let msg = format!("a recipient header exceeds {} bytes", l.max_header_bytes);
            return Err(Refusal::new(ErrorCode::TooManyRecipients, msg));
        }
        let e = Envelope {
            msg_id: s.msg_id,
            ttl_secs: s.ttl_secs,
            flags: s.flags,
            payload: s.payload,
        };
        let env = self.envelope(origin, e, now_ms)?;
        let accounts: Vec<u64> = s.recipients.iter().map(|r| r.account).collect();
        self.safety
            .note_sent(origin.device.account, &accounts, now_ms);
        let mut parts: Vec<(u32, Vec<_>)> = Vec::new();
        for r in s.recipients {
            let node = self.slots.owner_of(r.account);
            match parts.iter_mut().find(|(n, _)| *n == node) {
                Some((_, list)) => list.push(r),
                None => parts.push((node, vec![r])),
            }
        }
        if parts.is_empty() {
            parts.push((self.slots.local(), Vec::new()));
        }
        Ok(parts
            .into_iter()
            .map(|(_, recipients)| self.routed(origin, env.clone(), Target::Multi { recipients }))
            .collect())
    }
}
