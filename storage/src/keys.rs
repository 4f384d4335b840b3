//! Key layouts and value encodings of the column families (all integers big-endian).
//!
//! - `queues`:  slot u16 | account u64 | device u32 | seq u64 -> an inline envelope (tag 1, see
//!   [`encode_inline`]), an inline envelope with its send's dedup identity (tag 3, see
//!   [`encode_inline`]), an inline envelope whose identity a purge took out (tag 4, see
//!   [`stripped`]) or a pointer to a shared payload (tag 2, see [`encode_pointer`])
//! - `devices`: slot u16 | account u64 | device u32 -> registered_at_ms u64 | seq ceiling u64
//!   (every seq handed out is below it; the exact next seq after a clean shutdown)
//! - `dedup`:   slot u16 | account u64 | device u32 | msg_id [16] (the sender)
//!   -> accepted_at_ms u64 | recipients u32 | expires_at_ms u64: only sends stored nowhere
//!   (no queue entry written); the others' identity is in their envelope's value
//! - `expiry`:  no longer written (emptied at open: an index of older versions)
//! - `groups`:  slot(group) u16 | group u64 -> creator u64 | version u64 | created_at_ms u64 |
//!   member_count u32
//! - `members`: slot(group) u16 | group u64 | account u64 -> role u8 (1 member, 2 admin)
//! - `payloads`: payload_id u64 -> refs u32 (pointers written) | an envelope marked like an
//!   inline queue value (tag 1, 3 or 4 first)
//! - `accounts`, `lists`, `push`, `memberships`: see the `account` module
//!
//! Queue values start with a tag byte. Inline envelopes always started with their format
//! version, 1, so that byte is their tag and data written before pointers existed reads as is;
//! pointers take tag 2. Tag 3 puts the send's dedup identity before the envelope: tag | sender
//! account u64 | sender device u32 | recipients u32 (the message id is the envelope's). Tag 4
//! marks a value written a second time (a purge took its identity out): such a key is deleted
//! with Delete, never SingleDelete (which allows one put per key).

use bytes::Bytes;
use hearth_protocol::MessageId;

use crate::error::StorageError;
use crate::types::{DedupRecord, DeviceKey, StoredEnvelope};

/// A send's dedup identity: the sending device (as the caller names it) and the message id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct DedupId {
    pub account: u64,
    pub device: u32,
    pub msg: [u8; 16],
}

impl DedupId {
    pub(crate) fn new(sender: DeviceKey, msg: MessageId) -> DedupId {
        DedupId {
            account: sender.account,
            device: sender.device,
            msg: msg.0,
        }
    }

    /// Its key in the `dedup` column family.
    pub(crate) fn key(&self) -> [u8; DEDUP_KEY_LEN] {
        dedup_key(
            DeviceKey::new(self.account, self.device),
            MessageId(self.msg),
        )
    }

    /// The identity of a `dedup` key.
    pub(crate) fn from_key(k: &[u8]) -> Option<DedupId> {
        if k.len() != DEDUP_KEY_LEN {
            return None;
        }
        let d = decode_device(k)?;
        Some(DedupId::new(d, MessageId(k[DEVICE_LEN..].try_into().ok()?)))
    }
}

/// Length of a device prefix (slot | account | device).
pub(crate) const DEVICE_LEN: usize = 2 + 8 + 4;
/// Length of a queue key.
pub(crate) const QUEUE_KEY_LEN: usize = DEVICE_LEN + 8;
/// Length of a dedup key.
pub(crate) const DEDUP_KEY_LEN: usize = DEVICE_LEN + 16;

/// A queue key.
pub(crate) type QueueKey = [u8; QUEUE_KEY_LEN];
/// A device prefix, also the key of the device record.
pub(crate) type DevicePrefix = [u8; DEVICE_LEN];

/// Format version of a stored envelope, also the tag of an inline queue value.
const ENVELOPE_VERSION: u8 = 1;
/// Tag of a queue value that points to a shared payload.
const POINTER_TAG: u8 = 2;
/// Tag of an envelope preceded by its send's dedup identity.
const REMEMBERED_TAG: u8 = 3;
/// Tag of an envelope whose value was written a second time (its identity taken out).
const STRIPPED_TAG: u8 = 4;
/// Bytes of the identity before a remembered envelope: tag | account u64 | device u32 |
/// recipients u32.
const IDENTITY_LEN: usize = 1 + 8 + 4 + 4;
/// Bytes of a pointer before its header: tag | payload_id u64 | expires_at_ms u64 |
/// payload_len u32 | group u64.
pub(crate) const POINTER_HEADER_LEN: usize = 1 + 8 + 8 + 4 + 8;
/// Length of a group key.
pub(crate) const GROUP_KEY_LEN: usize = 2 + 8;
/// Length of a member key.
pub(crate) const MEMBER_KEY_LEN: usize = GROUP_KEY_LEN + 8;
/// Length of a group record.
const GROUP_RECORD_LEN: usize = 8 + 8 + 8 + 4;
/// Bytes of a stored envelope before its payload.
pub(crate) const ENVELOPE_HEADER_LEN: usize = 1 + 16 + 8 + 4 + 8 + 8 + 1;
/// Offset of `expires_at_ms` in a stored envelope.
const EXPIRES_OFFSET: usize = 1 + 16 + 8 + 4 + 8;

pub(crate) fn device_prefix(key: DeviceKey) -> DevicePrefix {
    let mut k = [0u8; DEVICE_LEN];
    k[..2].copy_from_slice(&key.slot().to_be_bytes());
    k[2..10].copy_from_slice(&key.account.to_be_bytes());
    k[10..14].copy_from_slice(&key.device.to_be_bytes());
    k
}

pub(crate) fn account_prefix(account: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[..2].copy_from_slice(&hearth_protocol::slot_of(account).to_be_bytes());
    k[2..].copy_from_slice(&account.to_be_bytes());
    k
}

/// The device of a key that starts with a device prefix.
pub(crate) fn decode_device(k: &[u8]) -> Option<DeviceKey> {
    let account = u64::from_be_bytes(k.get(2..10)?.try_into().ok()?);
    let device = u32::from_be_bytes(k.get(10..14)?.try_into().ok()?);
    Some(DeviceKey { account, device })
}

pub(crate) fn queue_key(key: DeviceKey, seq: u64) -> QueueKey {
    let mut k = [0u8; QUEUE_KEY_LEN];
    k[..DEVICE_LEN].copy_from_slice(&device_prefix(key));
    k[DEVICE_LEN..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub(crate) fn decode_queue_key(k: &[u8]) -> Option<(DeviceKey, u64)> {
    if k.len() != QUEUE_KEY_LEN {
        return None;
    }
    let seq = u64::from_be_bytes(k[DEVICE_LEN..].try_into().ok()?);
    Some((decode_device(k)?, seq))
}

pub(crate) fn dedup_key(sender: DeviceKey, msg_id: MessageId) -> [u8; DEDUP_KEY_LEN] {
    let mut k = [0u8; DEDUP_KEY_LEN];
    k[..DEVICE_LEN].copy_from_slice(&device_prefix(sender));
    k[DEVICE_LEN..].copy_from_slice(&msg_id.0);
    k
}

/// The smallest key greater than every key starting with `prefix` (None: no such key).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Value of a device record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DeviceRecord {
    pub registered_at_ms: u64,
    pub next_seq: u64,
}

impl DeviceRecord {
    pub(crate) fn encode(&self) -> [u8; 16] {
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&self.registered_at_ms.to_be_bytes());
        v[8..].copy_from_slice(&self.next_seq.to_be_bytes());
        v
    }

    pub(crate) fn decode(v: &[u8]) -> Result<DeviceRecord, StorageError> {
        if v.len() != 16 {
            return Err(StorageError::Corrupt(format!(
                "device record of {} bytes",
                v.len()
            )));
        }
        Ok(DeviceRecord {
            registered_at_ms: u64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
            next_seq: u64::from_be_bytes(v[8..].try_into().expect("8 bytes")),
        })
    }
}

pub(crate) fn encode_dedup(rec: DedupRecord, expires_at_ms: u64) -> [u8; 20] {
    let mut v = [0u8; 20];
    v[..8].copy_from_slice(&rec.accepted_at_ms.to_be_bytes());
    v[8..12].copy_from_slice(&rec.recipients.to_be_bytes());
    v[12..].copy_from_slice(&expires_at_ms.to_be_bytes());
    v
}

/// Decodes a dedup value into the record and its expiry.
pub(crate) fn decode_dedup(v: &[u8]) -> Result<(DedupRecord, u64), StorageError> {
    if v.len() != 20 {
        return Err(StorageError::Corrupt(format!(
            "dedup record of {} bytes",
            v.len()
        )));
    }
    let rec = DedupRecord {
        accepted_at_ms: u64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
        recipients: u32::from_be_bytes(v[8..12].try_into().expect("4 bytes")),
    };
    Ok((
        rec,
        u64::from_be_bytes(v[12..].try_into().expect("8 bytes")),
    ))
}

/// An inline queue value: the envelope (tag 1) or, with `identity` (the sender and the
/// recipients of its dedup record), the identity then the envelope (tag 3).
pub(crate) fn encode_inline(env: &StoredEnvelope, identity: Option<(DeviceKey, u32)>) -> Vec<u8> {
    let mut v = Vec::with_capacity(IDENTITY_LEN + ENVELOPE_HEADER_LEN + env.payload.len());
    encode_marked_into(env, identity, &mut v);
    v
}

fn encode_marked_into(env: &StoredEnvelope, identity: Option<(DeviceKey, u32)>, v: &mut Vec<u8>) {
    if let Some((sender, recipients)) = identity {
        v.push(REMEMBERED_TAG);
        v.extend_from_slice(&sender.account.to_be_bytes());
        v.extend_from_slice(&sender.device.to_be_bytes());
        v.extend_from_slice(&recipients.to_be_bytes());
    }
    encode_envelope_into(env, v);
}

/// version u8 | msg_id [16] | from_account u64 | from_device u32 | accepted_at_ms u64 |
/// expires_at_ms u64 | flags u8 | payload.
fn encode_envelope_into(env: &StoredEnvelope, v: &mut Vec<u8>) {
    v.push(ENVELOPE_VERSION);
    v.extend_from_slice(&env.msg_id.0);
    v.extend_from_slice(&env.from_account.to_be_bytes());
    v.extend_from_slice(&env.from_device.to_be_bytes());
    v.extend_from_slice(&env.accepted_at_ms.to_be_bytes());
    v.extend_from_slice(&env.expires_at_ms.to_be_bytes());
    v.push(env.flags);
    v.extend_from_slice(&env.payload);
}

fn check_envelope(v: &[u8]) -> Result<(), StorageError> {
    if v.len() < ENVELOPE_HEADER_LEN || v[0] != ENVELOPE_VERSION {
        return Err(StorageError::Corrupt(format!(
            "queue entry of {} bytes, version {:?}",
            v.len(),
            v.first()
        )));
    }
    Ok(())
}

pub(crate) fn decode_envelope(v: &[u8]) -> Result<StoredEnvelope, StorageError> {
    check_envelope(v)?;
    let u64_at = |i: usize| u64::from_be_bytes(v[i..i + 8].try_into().expect("8 bytes"));
    Ok(StoredEnvelope {
        msg_id: MessageId(v[1..17].try_into().expect("16 bytes")),
        from_account: u64_at(17),
        from_device: u32::from_be_bytes(v[25..29].try_into().expect("4 bytes")),
        accepted_at_ms: u64_at(29),
        expires_at_ms: u64_at(EXPIRES_OFFSET),
        flags: v[45],
        payload: Bytes::copy_from_slice(&v[ENVELOPE_HEADER_LEN..]),
    })
}

/// What precedes an envelope in an inline queue value or a payload value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mark {
    /// Nothing (tag 1: the envelope's own version byte).
    Plain,
    /// The send's dedup identity and record (tag 3).
    Remembered(DedupId, DedupRecord),
    /// Written a second time, its identity taken out (tag 4): delete it with Delete.
    Stripped,
}

/// Splits a marked envelope (an inline queue value, or a payload value after its refs) into
/// its mark and the encoded envelope (checked).
pub(crate) fn split_marked(v: &[u8]) -> Result<(Mark, &[u8]), StorageError> {
    let corrupt = || StorageError::Corrupt(format!("marked envelope of {} bytes", v.len()));
    let (mark, env) = match v.first() {
        Some(&REMEMBERED_TAG) => {
            let env = v.get(IDENTITY_LEN..).ok_or_else(corrupt)?;
            check_envelope(env)?;
            let account = u64::from_be_bytes(v[1..9].try_into().expect("8 bytes"));
            let device = u32::from_be_bytes(v[9..13].try_into().expect("4 bytes"));
            let recipients = u32::from_be_bytes(v[13..17].try_into().expect("4 bytes"));
            let id = DedupId {
                account,
                device,
                msg: env[1..17].try_into().expect("16 bytes"),
            };
            let rec = DedupRecord {
                accepted_at_ms: u64::from_be_bytes(env[29..37].try_into().expect("8 bytes")),
                recipients,
            };
            (Mark::Remembered(id, rec), env)
        }
        Some(&STRIPPED_TAG) => (Mark::Stripped, &v[1..]),
        _ => (Mark::Plain, v),
    };
    check_envelope(env)?;
    Ok((mark, env))
}

/// The value to write over a marked envelope to take its identity out (tag 4).
pub(crate) fn stripped(env: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + env.len());
    v.push(STRIPPED_TAG);
    v.extend_from_slice(env);
    v
}

/// What the writer needs to know of a queue entry: the bytes it counts against its queue,
/// its expiry, for a pointer the shared payload it holds a reference to, for an inline entry
/// the dedup identity it carries, and how its key is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EntryMeta {
    /// Payload bytes (plus the header for a pointer).
    pub bytes: u64,
    pub expires_at_ms: u64,
    /// The payload id of a pointer.
    pub payload: Option<u64>,
    /// The dedup identity an inline entry carries (a pointer's is its payload's).
    pub dedup: Option<DedupId>,
    /// The value was written twice: delete the key with Delete, not SingleDelete.
    pub overwritten: bool,
}

/// The meta data of a queue value of any kind.
pub(crate) fn entry_meta(v: &[u8]) -> Result<EntryMeta, StorageError> {
    if v.first() == Some(&POINTER_TAG) {
        let p = decode_pointer_fixed(v)?;
        return Ok(EntryMeta {
            bytes: u64::from(p.payload_len) + (v.len() - POINTER_HEADER_LEN) as u64,
            expires_at_ms: p.expires_at_ms,
            payload: Some(p.payload_id),
            dedup: None,
            overwritten: false,
        });
    }
    let (mark, env) = split_marked(v)?;
    Ok(EntryMeta {
        bytes: (env.len() - ENVELOPE_HEADER_LEN) as u64,
        expires_at_ms: u64::from_be_bytes(
            env[EXPIRES_OFFSET..EXPIRES_OFFSET + 8]
                .try_into()
                .expect("8 bytes"),
        ),
        payload: None,
        dedup: match mark {
            Mark::Remembered(id, _) => Some(id),
            _ => None,
        },
        overwritten: mark == Mark::Stripped,
    })
}

/// The fixed part of a pointer value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pointer {
    pub payload_id: u64,
    pub expires_at_ms: u64,
    pub payload_len: u32,
    pub group: u64,
}

/// Appends a pointer value (without its header) to `out`:
/// tag 2 | payload_id u64 | expires_at_ms u64 | payload_len u32 | group u64 (then the header).
pub(crate) fn encode_pointer(p: &Pointer, out: &mut Vec<u8>) {
    out.push(POINTER_TAG);
    out.extend_from_slice(&p.payload_id.to_be_bytes());
    out.extend_from_slice(&p.expires_at_ms.to_be_bytes());
    out.extend_from_slice(&p.payload_len.to_be_bytes());
    out.extend_from_slice(&p.group.to_be_bytes());
}

fn decode_pointer_fixed(v: &[u8]) -> Result<Pointer, StorageError> {
    if v.len() < POINTER_HEADER_LEN || v[0] != POINTER_TAG {
        return Err(StorageError::Corrupt(format!(
            "pointer entry of {} bytes",
            v.len()
        )));
    }
    let u64_at = |i: usize| u64::from_be_bytes(v[i..i + 8].try_into().expect("8 bytes"));
    Ok(Pointer {
        payload_id: u64_at(1),
        expires_at_ms: u64_at(9),
        payload_len: u32::from_be_bytes(v[17..21].try_into().expect("4 bytes")),
        group: u64_at(21),
    })
}

/// A decoded queue value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum QueueValue {
    Inline(StoredEnvelope),
    Pointer { pointer: Pointer, header: Bytes },
}

pub(crate) fn decode_queue_value(v: &[u8]) -> Result<QueueValue, StorageError> {
    if v.first() == Some(&POINTER_TAG) {
        let pointer = decode_pointer_fixed(v)?;
        let header = Bytes::copy_from_slice(&v[POINTER_HEADER_LEN..]);
        return Ok(QueueValue::Pointer { pointer, header });
    }
    decode_envelope(split_marked(v)?.1).map(QueueValue::Inline)
}

/// The key of a shared payload.
pub(crate) fn payload_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

pub(crate) fn decode_payload_key(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.try_into().ok()?))
}

/// refs u32 | the envelope, marked like an inline value (see [`encode_inline`]).
pub(crate) fn encode_payload(
    refs: u32,
    env: &StoredEnvelope,
    identity: Option<(DeviceKey, u32)>,
) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + IDENTITY_LEN + ENVELOPE_HEADER_LEN + env.payload.len());
    v.extend_from_slice(&refs.to_be_bytes());
    encode_marked_into(env, identity, &mut v);
    v
}

/// Splits a payload value into its refs field and marked envelope.
pub(crate) fn split_payload(v: &[u8]) -> Result<(u32, Mark, &[u8]), StorageError> {
    let refs = v
        .get(..4)
        .ok_or_else(|| StorageError::Corrupt("payload record".into()))?;
    let refs = u32::from_be_bytes(refs.try_into().expect("4 bytes"));
    let (mark, env) = split_marked(&v[4..])?;
    Ok((refs, mark, env))
}

/// Decodes a payload value into its refs field and envelope.
pub(crate) fn decode_payload(v: &[u8]) -> Result<(u32, StoredEnvelope), StorageError> {
    let (refs, _, env) = split_payload(v)?;
    Ok((refs, decode_envelope(env)?))
}

/// The value to write over a payload value to take its identity out.
pub(crate) fn stripped_payload(refs: u32, env: &[u8]) -> Vec<u8> {
    let mut v = refs.to_be_bytes().to_vec();
    v.extend_from_slice(&stripped(env));
    v
}

/// slot(group) | group.
pub(crate) fn group_key(group: u64) -> [u8; GROUP_KEY_LEN] {
    account_prefix(group)
}

pub(crate) fn member_key(group: u64, account: u64) -> [u8; MEMBER_KEY_LEN] {
    let mut k = [0u8; MEMBER_KEY_LEN];
    k[..GROUP_KEY_LEN].copy_from_slice(&group_key(group));
    k[GROUP_KEY_LEN..].copy_from_slice(&account.to_be_bytes());
    k
}

/// The account of a member key.
pub(crate) fn decode_member_key(k: &[u8]) -> Option<u64> {
    if k.len() != MEMBER_KEY_LEN {
        return None;
    }
    Some(u64::from_be_bytes(k[GROUP_KEY_LEN..].try_into().ok()?))
}

/// The persisted part of a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GroupRecord {
    pub creator: u64,
    pub version: u64,
    pub created_at_ms: u64,
    pub member_count: u32,
}

impl GroupRecord {
    pub(crate) fn encode(&self) -> [u8; GROUP_RECORD_LEN] {
        let mut v = [0u8; GROUP_RECORD_LEN];
        v[..8].copy_from_slice(&self.creator.to_be_bytes());
        v[8..16].copy_from_slice(&self.version.to_be_bytes());
        v[16..24].copy_from_slice(&self.created_at_ms.to_be_bytes());
        v[24..].copy_from_slice(&self.member_count.to_be_bytes());
        v
    }

    pub(crate) fn decode(v: &[u8]) -> Result<GroupRecord, StorageError> {
        if v.len() != GROUP_RECORD_LEN {
            return Err(StorageError::Corrupt(format!(
                "group record of {} bytes",
                v.len()
            )));
        }
        let u64_at = |i: usize| u64::from_be_bytes(v[i..i + 8].try_into().expect("8 bytes"));
        Ok(GroupRecord {
            creator: u64_at(0),
            version: u64_at(8),
            created_at_ms: u64_at(16),
            member_count: u32::from_be_bytes(v[24..].try_into().expect("4 bytes")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_roundtrip() {
        let env = StoredEnvelope {
            msg_id: MessageId::from_u128(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10),
            from_account: u64::MAX - 3,
            from_device: 77,
            accepted_at_ms: 1_700_000_000_123,
            expires_at_ms: 1_700_000_999_000,
            flags: 0x80,
            payload: Bytes::from_static(b"ciphertext"),
        };
        let v = encode_inline(&env, None);
        assert_eq!(v.len(), ENVELOPE_HEADER_LEN + 10);
        assert_eq!(decode_envelope(&v).unwrap(), env);
        let meta = entry_meta(&v).unwrap();
        let plain = EntryMeta {
            bytes: 10,
            expires_at_ms: env.expires_at_ms,
            payload: None,
            dedup: None,
            overwritten: false,
        };
        assert_eq!(meta, plain);
        assert!(decode_envelope(&v[..ENVELOPE_HEADER_LEN - 1]).is_err());
        assert_eq!(
            decode_queue_value(&v).unwrap(),
            QueueValue::Inline(env.clone())
        );

        // With the send's identity: the same envelope, the same bytes counted.
        let sender = DeviceKey::new(9, 3);
        let r = encode_inline(&env, Some((sender, 5)));
        assert_eq!(r.len(), IDENTITY_LEN + v.len());
        let id = DedupId::new(sender, env.msg_id);
        let rec = DedupRecord {
            accepted_at_ms: env.accepted_at_ms,
            recipients: 5,
        };
        assert_eq!(
            split_marked(&r).unwrap(),
            (Mark::Remembered(id, rec), &v[..])
        );
        assert_eq!(
            entry_meta(&r).unwrap(),
            EntryMeta {
                dedup: Some(id),
                ..plain
            }
        );
        assert_eq!(
            decode_queue_value(&r).unwrap(),
            QueueValue::Inline(env.clone())
        );
        assert!(split_marked(&r[..IDENTITY_LEN + 3]).is_err());
        // Taken out again.
        let s = stripped(split_marked(&r).unwrap().1);
        assert_eq!(split_marked(&s).unwrap(), (Mark::Stripped, &v[..]));
        assert_eq!(
            entry_meta(&s).unwrap(),
            EntryMeta {
                overwritten: true,
                ..plain
            }
        );
        assert_eq!(
            decode_queue_value(&s).unwrap(),
            QueueValue::Inline(env.clone())
        );
        assert_eq!(DedupId::from_key(&id.key()), Some(id));
        assert_eq!(id.key(), dedup_key(sender, env.msg_id));

        let p = encode_payload(7, &env, None);
        assert_eq!(decode_payload(&p).unwrap(), (7, env.clone()));
        assert!(decode_payload(&p[..3]).is_err());
        let p = encode_payload(7, &env, Some((sender, 5)));
        assert_eq!(decode_payload(&p).unwrap(), (7, env.clone()));
        let (refs, mark, bytes) = split_payload(&p).unwrap();
        assert_eq!((refs, mark, bytes), (7, Mark::Remembered(id, rec), &v[..]));
        let s = stripped_payload(refs, bytes);
        assert_eq!(split_payload(&s).unwrap(), (7, Mark::Stripped, &v[..]));
        assert_eq!(decode_payload(&s).unwrap(), (7, env));
    }

    #[test]
    fn pointer_roundtrip_and_tags_differ() {
        let pointer = Pointer {
            payload_id: 0x0102_0304_0506_0708,
            expires_at_ms: 1_700_000_999_000,
            payload_len: 1000,
            group: u64::MAX - 1,
        };
        let mut v = Vec::new();
        encode_pointer(&pointer, &mut v);
        assert_eq!(v.len(), POINTER_HEADER_LEN);
        v.extend_from_slice(b"hdr");
        assert_eq!(
            entry_meta(&v).unwrap(),
            EntryMeta {
                bytes: 1003,
                expires_at_ms: pointer.expires_at_ms,
                payload: Some(pointer.payload_id),
                dedup: None,
                overwritten: false,
            }
        );
        assert_eq!(
            decode_queue_value(&v).unwrap(),
            QueueValue::Pointer {
                pointer,
                header: Bytes::from_static(b"hdr")
            }
        );
        assert!(entry_meta(&v[..POINTER_HEADER_LEN - 1]).is_err());
        // Neither kind decodes as the other.
        assert!(decode_envelope(&v).is_err());
        assert_ne!(POINTER_TAG, ENVELOPE_VERSION);
        for tag in [REMEMBERED_TAG, STRIPPED_TAG] {
            assert!(![POINTER_TAG, ENVELOPE_VERSION].contains(&tag));
        }
        assert!(entry_meta(&[3; 60]).is_err());
    }

    #[test]
    fn group_keys_and_records() {
        let g = 0xdead_beef;
        let k = member_key(g, 5);
        assert!(k.starts_with(&group_key(g)));
        assert!(member_key(g, 5) < member_key(g, 256));
        assert_eq!(decode_member_key(&k), Some(5));
        assert_eq!(
            &group_key(g)[..2],
            &hearth_protocol::slot_of(g).to_be_bytes()
        );
        let rec = GroupRecord {
            creator: 9,
            version: 3,
            created_at_ms: 1_700_000_000_000,
            member_count: 100_000,
        };
        assert_eq!(GroupRecord::decode(&rec.encode()).unwrap(), rec);
        assert!(GroupRecord::decode(&[0; 27]).is_err());
        assert_eq!(decode_payload_key(&payload_key(77)), Some(77));
    }

    #[test]
    fn keys_sort_by_device_then_seq() {
        let d = DeviceKey::new(42, 7);
        let a = queue_key(d, 255);
        let b = queue_key(d, 256);
        assert!(a < b);
        assert_eq!(decode_queue_key(&b), Some((d, 256)));
        assert!(a.starts_with(&device_prefix(d)));
        assert!(a.starts_with(&account_prefix(42)));
        let end = prefix_end(&device_prefix(d)).unwrap();
        assert!(queue_key(d, u64::MAX).as_slice() < end.as_slice());
        assert!(queue_key(DeviceKey::new(42, 8), 0).as_slice() >= end.as_slice());
        assert_eq!(prefix_end(&[1, 0xff, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff]), None);
    }
}
