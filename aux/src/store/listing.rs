//! Reading the store without changing it: the inventory (shard headers in ring
//! order, page by page) and the snapshot walk (wire frames, a segment at a time).

use shardcache_common::ring::key_point;

use super::index::tag_of;
use super::record::{ExpiryForm, RecordView};
use super::segments;
use super::{Inner, InventoryEntry};

impl Inner {
    pub(super) fn inventory(
        &self,
        after: Option<(u64, &str)>,
        limit: usize,
        now_ms: u64,
    ) -> Vec<InventoryEntry> {
        let start_tag = after.map_or(0, |(point, _)| tag_of(point));
        let mut page: Vec<InventoryEntry> = Vec::new();
        let mut last_tag = 0;
        self.index.scan_from(start_tag, |tag, location| {
            // Every entry of the last tag taken must be seen before sorting.
            if page.len() >= limit && tag > last_tag {
                return false;
            }
            let Ok(view) = self.view(location) else {
                return true;
            };
            let key = view.key_str();
            let point = key_point(key);
            let after_cursor = after.is_none_or(|cursor| (point, key) > cursor);
            if after_cursor && !view.is_expired(now_ms) {
                page.push(inventory_entry(&view, point));
                last_tag = tag;
            }
            true
        });
        page.sort_unstable_by(|a, b| (a.point, &a.key).cmp(&(b.point, &b.key)));
        page.truncate(limit);
        page
    }

    pub(super) fn snapshot_chunk(
        &self,
        after_seq: u64,
        now_ms: u64,
    ) -> Option<(u64, Vec<u8>, usize)> {
        let (id, segment) = self
            .segments
            .ids()
            .map(|id| (id, self.segments.get_segment(id).expect("listed")))
            .find(|(_, segment)| segment.seq > after_seq)?;
        let mut out = Vec::with_capacity(segment.live_bytes + segment.live_records as usize * 48);
        let mut count = 0;
        let mut offset = 0;
        while offset < segment.data.len() {
            let location = segments::location(id, offset);
            let Ok(view) = self.view(location) else {
                break;
            };
            offset += view.len;
            let record = &segment.data[offset - view.len..offset];
            let live = self.live_position(&view, location).is_some();
            if !live || view.is_expired(now_ms) || view.verify(record).is_err() {
                continue;
            }
            out.extend_from_slice(&(view.frame_len() as u32).to_be_bytes());
            view.encode_frame(ExpiryForm::Deadline, &mut out);
            count += 1;
        }
        Some((segment.seq, out, count))
    }
}

fn inventory_entry(view: &RecordView<'_>, point: u64) -> InventoryEntry {
    InventoryEntry {
        key: view.key_str().to_owned(),
        point,
        version: view.version(),
        shard_index: view.shape.shard_index,
        data_shards: view.shape.data_shards,
        parity_shards: view.shape.parity_shards,
        tombstone: view.is_tombstone(),
        expiry_ms: view.expiry_ms,
    }
}
