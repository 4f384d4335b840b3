//! Accounts, their lists and push tokens: public types, key layouts and value encodings of the
//! `accounts`, `lists`, `push` and `memberships` column families (integers big-endian).
//!
//! - `accounts`:    slot u16 | account u64 -> [`encode_record`]
//! - `lists`:       slot u16 | account u64 | kind u8 (1 allow, 2 block) | other u64 -> empty
//! - `push`:        slot u16 | account u64 | device u32 -> token bytes
//! - `memberships`: slot(account) u16 | account u64 | group u64 -> empty (the reverse of
//!   `members`, written in the same batches)

use std::collections::HashSet;

use crate::error::StorageError;
use crate::keys;
use crate::types::DeviceKey;

/// Longest network or zone name, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Most networks an account may opt in to.
pub const MAX_NETWORKS: usize = 255;
/// Longest push token, in bytes.
pub const MAX_PUSH_TOKEN: usize = 512;

/// Who may reach an account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Reach {
    /// Anyone not blocked (the default).
    #[default]
    Everyone,
    /// Only the accounts of its allow list (and not blocked).
    Contacts,
    /// Nobody.
    Nobody,
}

impl Reach {
    /// The wire value: 0 everyone, 1 contacts only, 2 nobody.
    pub fn to_u8(self) -> u8 {
        match self {
            Reach::Everyone => 0,
            Reach::Contacts => 1,
            Reach::Nobody => 2,
        }
    }

    /// The mode of a wire value.
    pub fn from_u8(v: u8) -> Option<Reach> {
        match v {
            0 => Some(Reach::Everyone),
            1 => Some(Reach::Contacts),
            2 => Some(Reach::Nobody),
            _ => None,
        }
    }
}

/// One of an account's lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ListKind {
    /// Contacts (the accounts that may reach it under [`Reach::Contacts`]).
    Allow,
    /// Blocked accounts.
    Block,
}

impl ListKind {
    /// The wire value: 1 allow, 2 block.
    pub fn to_u8(self) -> u8 {
        match self {
            ListKind::Allow => 1,
            ListKind::Block => 2,
        }
    }

    /// The kind of a wire value.
    pub fn from_u8(v: u8) -> Option<ListKind> {
        match v {
            1 => Some(ListKind::Allow),
            2 => Some(ListKind::Block),
            _ => None,
        }
    }
}

/// What the node keeps of an account's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountRecord {
    /// The network (app) of the token that registered its first device.
    pub network: String,
    /// Its residency zone.
    pub zone: String,
    /// When the record was created, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Who may reach it.
    pub reach: Reach,
    /// Other networks it accepts envelopes from, sorted, unique (its own is always allowed).
    pub networks: Vec<String>,
    /// SHA-256 of its delivery access key (None: sealed sends to it are refused).
    pub access_key_hash: Option<[u8; 32]>,
}

/// What [`crate::Store::purge_account`] erased.
///
/// Entries of OTHER accounts' allow and block lists that name the purged account are not
/// erased: they are those accounts' data ("I block X"), and erasing them would let an account
/// escape the blocks against it by being purged and coming back under the same id. Envelopes
/// the purged account sent that wait in other accounts' queues (inline, or shared payloads
/// still referenced by other queues) also stay: they belong to their recipients and go when
/// acknowledged or expired, like any envelope.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Devices removed.
    pub devices: u64,
    /// Queue entries of its devices deleted.
    pub envelopes: u64,
    /// Groups it left (created by another account).
    pub groups_left: u64,
    /// Groups it created, deleted.
    pub groups_deleted: u64,
    /// Entries of its own allow and block lists deleted.
    pub list_entries: u64,
    /// Dedup records of its sends deleted.
    pub dedup_records: u64,
    /// Push tokens of its devices deleted.
    pub push_tokens: u64,
    /// Whether it had an account record.
    pub account_record: bool,
}

/// An account's lists, in memory.
#[derive(Clone, Debug, Default)]
pub(crate) struct AccountLists {
    pub allow: HashSet<u64>,
    pub block: HashSet<u64>,
}

impl AccountLists {
    pub(crate) fn get(&self, kind: ListKind) -> &HashSet<u64> {
        match kind {
            ListKind::Allow => &self.allow,
            ListKind::Block => &self.block,
        }
    }

    pub(crate) fn get_mut(&mut self, kind: ListKind) -> &mut HashSet<u64> {
        match kind {
            ListKind::Allow => &mut self.allow,
            ListKind::Block => &mut self.block,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.block.is_empty()
    }
}

/// Length of a list key.
pub(crate) const LIST_KEY_LEN: usize = 2 + 8 + 1 + 8;
/// Length of a memberships key.
pub(crate) const MEMBERSHIP_KEY_LEN: usize = 2 + 8 + 8;

/// The key of an account record (also the prefix of its lists, push tokens and memberships).
pub(crate) fn account_key(account: u64) -> [u8; 10] {
    keys::account_prefix(account)
}

/// The account of a key that starts with an account prefix.
pub(crate) fn decode_account(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.get(2..10)?.try_into().ok()?))
}

pub(crate) fn list_key(account: u64, kind: ListKind, other: u64) -> [u8; LIST_KEY_LEN] {
    let mut k = [0u8; LIST_KEY_LEN];
    k[..10].copy_from_slice(&keys::account_prefix(account));
    k[10] = kind.to_u8();
    k[11..].copy_from_slice(&other.to_be_bytes());
    k
}

/// (account, kind, other) of a list key.
pub(crate) fn decode_list_key(k: &[u8]) -> Option<(u64, ListKind, u64)> {
    if k.len() != LIST_KEY_LEN {
        return None;
    }
    let other = u64::from_be_bytes(k[11..].try_into().ok()?);
    Some((decode_account(k)?, ListKind::from_u8(k[10])?, other))
}

pub(crate) fn push_key(device: DeviceKey) -> keys::DevicePrefix {
    keys::device_prefix(device)
}

pub(crate) fn membership_key(account: u64, group: u64) -> [u8; MEMBERSHIP_KEY_LEN] {
    let mut k = [0u8; MEMBERSHIP_KEY_LEN];
    k[..10].copy_from_slice(&keys::account_prefix(account));
    k[10..].copy_from_slice(&group.to_be_bytes());
    k
}

/// (account, group) of a memberships key.
pub(crate) fn decode_membership_key(k: &[u8]) -> Option<(u64, u64)> {
    if k.len() != MEMBERSHIP_KEY_LEN {
        return None;
    }
    let group = u64::from_be_bytes(k[10..].try_into().ok()?);
    Some((decode_account(k)?, group))
}

/// Format version of an account record.
const RECORD_VERSION: u8 = 1;

/// Refuses names the record cannot hold.
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), StorageError> {
    if name.len() > MAX_NAME_LEN {
        return Err(StorageError::Invalid(format!(
            "{what} name of {} bytes (at most {MAX_NAME_LEN})",
            name.len()
        )));
    }
    Ok(())
}

/// Sorts and dedups a network list and checks its bounds.
pub(crate) fn normalize_networks(mut networks: Vec<String>) -> Result<Vec<String>, StorageError> {
    networks.sort_unstable();
    networks.dedup();
    if networks.len() > MAX_NETWORKS {
        return Err(StorageError::Invalid(format!(
            "{} networks (at most {MAX_NETWORKS})",
            networks.len()
        )));
    }
    for n in &networks {
        check_name("network", n)?;
    }
    Ok(networks)
}

/// version u8 | created_at_ms u64 | reach u8 | has_hash u8 | hash [32] if has_hash |
/// network (len u8 | bytes) | zone (len u8 | bytes) | count u8 | count x (len u8 | bytes).
/// Names must have been checked ([`check_name`], [`normalize_networks`]).
pub(crate) fn encode_record(r: &AccountRecord) -> Vec<u8> {
    let names: usize = r.networks.iter().map(|n| 1 + n.len()).sum();
    let mut v = Vec::with_capacity(12 + 32 + 3 + r.network.len() + r.zone.len() + names);
    v.push(RECORD_VERSION);
    v.extend_from_slice(&r.created_at_ms.to_be_bytes());
    v.push(r.reach.to_u8());
    match &r.access_key_hash {
        Some(h) => {
            v.push(1);
            v.extend_from_slice(h);
        }
        None => v.push(0),
    }
    let mut name = |s: &str| {
        v.push(u8::try_from(s.len()).expect("names are checked"));
        v.extend_from_slice(s.as_bytes());
    };
    name(&r.network);
    name(&r.zone);
    v.push(u8::try_from(r.networks.len()).expect("networks are checked"));
    for n in &r.networks {
        v.push(u8::try_from(n.len()).expect("names are checked"));
        v.extend_from_slice(n.as_bytes());
    }
    v
}

/// Reads an account record.
pub(crate) fn decode_record(v: &[u8]) -> Result<AccountRecord, StorageError> {
    let corrupt = || StorageError::Corrupt(format!("account record of {} bytes", v.len()));
    let mut r = Reader { v, at: 0 };
    if r.bytes(1).ok_or_else(corrupt)? != [RECORD_VERSION] {
        return Err(corrupt());
    }
    let created_at_ms = u64::from_be_bytes(r.array().ok_or_else(corrupt)?);
    let reach = Reach::from_u8(r.u8().ok_or_else(corrupt)?).ok_or_else(corrupt)?;
    let access_key_hash = match r.u8().ok_or_else(corrupt)? {
        0 => None,
        1 => Some(r.array().ok_or_else(corrupt)?),
        _ => return Err(corrupt()),
    };
    let network = r.name().ok_or_else(corrupt)?;
    let zone = r.name().ok_or_else(corrupt)?;
    let count = r.u8().ok_or_else(corrupt)?;
    let networks = (0..count)
        .map(|_| r.name().ok_or_else(corrupt))
        .collect::<Result<Vec<_>, _>>()?;
    if r.at != v.len() {
        return Err(corrupt());
    }
    Ok(AccountRecord {
        network,
        zone,
        created_at_ms,
        reach,
        networks,
        access_key_hash,
    })
}

struct Reader<'a> {
    v: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.v.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(out)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.bytes(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N)?.try_into().ok()
    }

    fn name(&mut self) -> Option<String> {
        let len = self.u8()? as usize;
        String::from_utf8(self.bytes(len)?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AccountRecord {
        AccountRecord {
            network: "chat".into(),
            zone: "eu".into(),
            created_at_ms: 1_700_000_000_000,
            reach: Reach::Contacts,
            networks: vec!["photos".into(), "social".into()],
            access_key_hash: Some([7; 32]),
        }
    }

    #[test]
    fn record_roundtrip() {
        let r = record();
        let v = encode_record(&r);
        assert_eq!(decode_record(&v).unwrap(), r);
        for cut in 0..v.len() {
            assert!(decode_record(&v[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = v.clone();
        long.push(0);
        assert!(decode_record(&long).is_err());
        let plain = AccountRecord {
            networks: vec![],
            access_key_hash: None,
            reach: Reach::Everyone,
            ..r
        };
        assert_eq!(decode_record(&encode_record(&plain)).unwrap(), plain);
    }

    #[test]
    fn wire_values_roundtrip() {
        for r in [Reach::Everyone, Reach::Contacts, Reach::Nobody] {
            assert_eq!(Reach::from_u8(r.to_u8()), Some(r));
        }
        assert_eq!(Reach::from_u8(3), None);
        for k in [ListKind::Allow, ListKind::Block] {
            assert_eq!(ListKind::from_u8(k.to_u8()), Some(k));
        }
        assert_eq!(ListKind::from_u8(0), None);
    }

    #[test]
    fn keys_roundtrip_and_group_by_account() {
        let a = 0x0102_0304_0506_0708;
        let k = list_key(a, ListKind::Block, 9);
        assert_eq!(decode_list_key(&k), Some((a, ListKind::Block, 9)));
        assert!(k.starts_with(&account_key(a)));
        assert!(list_key(a, ListKind::Allow, u64::MAX) < list_key(a, ListKind::Block, 0));
        let m = membership_key(a, 77);
        assert_eq!(decode_membership_key(&m), Some((a, 77)));
        assert!(m.starts_with(&account_key(a)));
        assert!(push_key(DeviceKey::new(a, 3)).starts_with(&account_key(a)));
        assert_eq!(decode_account(&account_key(a)), Some(a));
    }

    #[test]
    fn names_and_networks_are_bounded() {
        assert!(check_name("zone", &"z".repeat(MAX_NAME_LEN)).is_ok());
        assert!(check_name("zone", &"z".repeat(MAX_NAME_LEN + 1)).is_err());
        let n = normalize_networks(vec!["b".into(), "a".into(), "b".into()]).unwrap();
        assert_eq!(n, ["a", "b"]);
        let many: Vec<String> = (0..=MAX_NETWORKS).map(|i| i.to_string()).collect();
        assert!(normalize_networks(many).is_err());
    }
}
