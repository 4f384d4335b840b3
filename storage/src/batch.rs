//! A write batch that can also hold SingleDelete records.
//!
//! rocksdb 0.24 does not expose `WriteBatch::single_delete_cf` (0.25 does, but needs a newer
//! librocksdb-sys). RocksDB's batch format is its WAL record format, stable across versions:
//! a 12-byte header (sequence u64 LE, count u32 LE) then records; a column-family SingleDelete
//! record is tag `0x08`, varint32 column family id, varint32 key length, key. We append those
//! records to the bytes of the ordinary batch and rebuild it with `WriteBatch::from_data`.
//! SingleDeletes go after every other record of the batch, which is correct here because a
//! queue key is put once and single-deleted once, after its put.

use rocksdb::{ColumnFamily, WriteBatch, WriteBatchIteratorCf};

/// Tag of a column-family SingleDelete record (`kTypeColumnFamilySingleDeletion`).
const TAG_CF_SINGLE_DELETION: u8 = 0x08;
/// Tag of a default column family SingleDelete record (`kTypeSingleDeletion`).
const TAG_SINGLE_DELETION: u8 = 0x07;
/// Bytes of the batch header.
const HEADER_LEN: usize = 12;

/// The id RocksDB gave a column family, read back from a batch holding one put into it.
pub(crate) fn column_family_id(cf: &ColumnFamily) -> u32 {
    struct Probe(Option<u32>);
    impl WriteBatchIteratorCf for Probe {
        fn put_cf(&mut self, cf_id: u32, _: &[u8], _: &[u8]) {
            self.0 = Some(cf_id);
        }
        fn delete_cf(&mut self, _: u32, _: &[u8]) {}
        fn merge_cf(&mut self, _: u32, _: &[u8], _: &[u8]) {}
    }
    let mut wb = WriteBatch::default();
    wb.put_cf(cf, b"k", b"v");
    let mut probe = Probe(None);
    wb.iterate_cf(&mut probe);
    probe.0.expect("a put into a column family reports its id")
}

/// A `WriteBatch` plus SingleDelete records to append when it is written.
#[derive(Default)]
pub(crate) struct Batch {
    /// Puts and deletes.
    pub wb: WriteBatch,
    single_deletes: Vec<u8>,
    single_count: u32,
}

impl Batch {
    /// Adds a SingleDelete of `key` in the column family with id `cf_id`.
    pub(crate) fn single_delete(&mut self, cf_id: u32, key: &[u8]) {
        if cf_id == 0 {
            self.single_deletes.push(TAG_SINGLE_DELETION);
        } else {
            self.single_deletes.push(TAG_CF_SINGLE_DELETION);
            put_varint32(&mut self.single_deletes, cf_id);
        }
        put_varint32(
            &mut self.single_deletes,
            u32::try_from(key.len()).expect("short key"),
        );
        self.single_deletes.extend_from_slice(key);
        self.single_count += 1;
    }

    /// Operations in the batch.
    pub(crate) fn len(&self) -> usize {
        self.wb.len() + self.single_count as usize
    }

    /// The batch to write.
    pub(crate) fn finish(self) -> WriteBatch {
        if self.single_count == 0 {
            return self.wb;
        }
        let mut data = Vec::with_capacity(self.wb.size_in_bytes() + self.single_deletes.len());
        data.extend_from_slice(self.wb.data());
        assert!(
            data.len() >= HEADER_LEN,
            "a write batch starts with its header"
        );
        let count = u32::from_le_bytes(data[8..HEADER_LEN].try_into().expect("4 bytes"));
        data[8..HEADER_LEN].copy_from_slice(&(count + self.single_count).to_le_bytes());
        data.extend_from_slice(&self.single_deletes);
        WriteBatch::from_data(&data)
    }
}

fn put_varint32(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rocksdb::{ColumnFamilyDescriptor, Options, DB};

    #[test]
    fn varint() {
        let mut v = Vec::new();
        put_varint32(&mut v, 5);
        put_varint32(&mut v, 300);
        assert_eq!(v, [5, 0xac, 0x02]);
    }

    fn open(path: &std::path::Path) -> DB {
        let mut o = Options::default();
        o.create_if_missing(true);
        o.create_missing_column_families(true);
        let cfs = ["a", "b"].map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        DB::open_cf_descriptors(&o, path, cfs).unwrap()
    }

    fn keys(db: &DB, cf: &str) -> Vec<Vec<u8>> {
        let cf = db.cf_handle(cf).unwrap();
        db.iterator_cf(cf, rocksdb::IteratorMode::Start)
            .map(|r| r.unwrap().0.to_vec())
            .collect()
    }

    #[test]
    fn single_deletes_apply_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open(dir.path());
            let (a, b) = (db.cf_handle("a").unwrap(), db.cf_handle("b").unwrap());
            let (ida, idb) = (column_family_id(a), column_family_id(b));
            assert_ne!(ida, idb);
            assert_ne!(ida, 0);
            let mut batch = Batch::default();
            for k in [b"k1", b"k2", b"k3"] {
                batch.wb.put_cf(a, k, b"x");
                batch.wb.put_cf(b, k, b"y");
            }
            db.write(batch.finish()).unwrap();
            let mut batch = Batch::default();
            batch.single_delete(ida, b"k1");
            batch.wb.put_cf(a, b"k4", b"x");
            batch.single_delete(idb, b"k3");
            // A put and its single delete in the same batch.
            batch.wb.put_cf(b, b"k5", b"y");
            batch.single_delete(idb, b"k5");
            assert_eq!(batch.len(), 5);
            db.write(batch.finish()).unwrap();
            assert_eq!(
                keys(&db, "a"),
                [b"k2".to_vec(), b"k3".to_vec(), b"k4".to_vec()]
            );
            assert_eq!(keys(&db, "b"), [b"k1".to_vec(), b"k2".to_vec()]);
        }
        // Reopening replays the WAL, which holds the hand-built records.
        let db = open(dir.path());
        assert_eq!(
            keys(&db, "a"),
            [b"k2".to_vec(), b"k3".to_vec(), b"k4".to_vec()]
        );
        assert_eq!(keys(&db, "b"), [b"k1".to_vec(), b"k2".to_vec()]);
        // And compaction meets the single deletes too.
        for cf in ["a", "b"] {
            db.compact_range_cf(db.cf_handle(cf).unwrap(), None::<&[u8]>, None::<&[u8]>);
        }
        assert_eq!(keys(&db, "b"), [b"k1".to_vec(), b"k2".to_vec()]);
    }
}
