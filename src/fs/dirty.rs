//! Dirty data of one file: written but not yet chunked and committed.
//!
//! A sorted map of non-overlapping byte ranges. A sequential writer appends to the last range
//! in place, so streaming a file costs one copy into this buffer and nothing more.

use std::collections::BTreeMap;

#[derive(Default, Debug)]
pub struct DirtyMap {
    ranges: BTreeMap<u64, Vec<u8>>,
    bytes: usize,
}

impl DirtyMap {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Records `data` at `offset`, replacing any dirty bytes it overlaps.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        // Fast path: appending to the range that ends exactly here, with nothing after it.
        if self.ranges.range(offset..).next().is_none()
            && let Some((&start, buf)) = self.ranges.range_mut(..=offset).next_back()
            && start + buf.len() as u64 == offset
        {
            buf.extend_from_slice(data);
            self.bytes += data.len();
            return;
        }
        // General case: merge every range that overlaps or touches [offset, end].
        let mut new_start = offset;
        let mut merged: Vec<(u64, Vec<u8>)> = Vec::new();
        if let Some((&s, buf)) = self.ranges.range(..offset).next_back()
            && s + buf.len() as u64 >= offset
        {
            new_start = s;
        }
        let keys: Vec<u64> = self
            .ranges
            .range(new_start..=end)
            .map(|(&k, _)| k)
            .collect();
        for k in keys {
            if let Some(v) = self.ranges.remove(&k) {
                self.bytes -= v.len();
                merged.push((k, v));
            }
        }
        let mut new_end = end;
        for (k, v) in &merged {
            new_end = new_end.max(k + v.len() as u64);
        }
        let mut buf = vec![0u8; (new_end - new_start) as usize];
        for (k, v) in &merged {
            let at = (k - new_start) as usize;
            buf[at..at + v.len()].copy_from_slice(v);
        }
        let at = (offset - new_start) as usize;
        buf[at..at + data.len()].copy_from_slice(data);
        self.bytes += buf.len();
        self.ranges.insert(new_start, buf);
    }

    /// Copies dirty bytes overlapping `[offset, offset + out.len())` into `out`.
    pub fn overlay(&self, offset: u64, out: &mut [u8]) {
        let end = offset + out.len() as u64;
        let first = self
            .ranges
            .range(..=offset)
            .next_back()
            .map(|(&k, _)| k)
            .unwrap_or(offset);
        for (&k, v) in self.ranges.range(first..end) {
            let r_end = k + v.len() as u64;
            let s = k.max(offset);
            let e = r_end.min(end);
            if s < e {
                out[(s - offset) as usize..(e - offset) as usize]
                    .copy_from_slice(&v[(s - k) as usize..(e - k) as usize]);
            }
        }
    }

    /// Drops dirty bytes at or beyond `size`.
    pub fn truncate(&mut self, size: u64) {
        let beyond: Vec<u64> = self.ranges.range(size..).map(|(&k, _)| k).collect();
        for k in beyond {
            if let Some(v) = self.ranges.remove(&k) {
                self.bytes -= v.len();
            }
        }
        if let Some((&k, v)) = self.ranges.range_mut(..size).next_back()
            && k + v.len() as u64 > size
        {
            let keep = (size - k) as usize;
            self.bytes -= v.len() - keep;
            v.truncate(keep);
        }
    }

    /// Removes and returns all ranges, in offset order.
    pub fn take(&mut self) -> Vec<(u64, Vec<u8>)> {
        self.bytes = 0;
        std::mem::take(&mut self.ranges).into_iter().collect()
    }

    /// Puts back ranges taken with [`DirtyMap::take`] (after a failed write-back). Data
    /// written since the take wins over the restored bytes.
    pub fn restore(&mut self, ranges: Vec<(u64, Vec<u8>)>) {
        let newer = self.take();
        for (k, v) in ranges {
            self.write(k, &v);
        }
        for (k, v) in newer {
            self.write(k, &v);
        }
    }

    /// Ranges as (start, end) pairs.
    pub fn spans(&self) -> Vec<(u64, u64)> {
        self.ranges
            .iter()
            .map(|(&k, v)| (k, k + v.len() as u64))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(d: &DirtyMap, off: u64, len: usize) -> Vec<u8> {
        let mut b = vec![b'.'; len];
        d.overlay(off, &mut b);
        b
    }

    #[test]
    fn overlapping_writes_merge_and_newest_wins() {
        let mut d = DirtyMap::default();
        d.write(10, b"aaaa");
        d.write(20, b"bbbb");
        d.write(12, b"XXXXXXXXXX"); // 12..22 bridges both
        assert_eq!(read(&d, 8, 18), b"..aaXXXXXXXXXXbb..".to_vec());
        assert_eq!(d.spans(), vec![(10, 24)]);
        assert_eq!(d.bytes(), 14);
    }

    #[test]
    fn append_extends_in_place() {
        let mut d = DirtyMap::default();
        d.write(0, b"ab");
        d.write(2, b"cd");
        assert_eq!(d.spans(), vec![(0, 4)]);
        assert_eq!(read(&d, 0, 4), b"abcd".to_vec());
    }

    #[test]
    fn truncate_cuts_ranges() {
        let mut d = DirtyMap::default();
        d.write(0, b"abcdef");
        d.write(100, b"zz");
        d.truncate(3);
        assert_eq!(d.spans(), vec![(0, 3)]);
        assert_eq!(d.bytes(), 3);
    }

    #[test]
    fn restore_keeps_newer_data() {
        let mut d = DirtyMap::default();
        d.write(0, b"old!");
        let taken = d.take();
        d.write(1, b"N");
        d.restore(taken);
        assert_eq!(read(&d, 0, 4), b"oNd!".to_vec());
    }
}
