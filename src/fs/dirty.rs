//! Dirty data of one file: written but not yet chunked and committed.
//!
//! A sorted map of non-overlapping byte ranges (adjacent ranges may stay separate). A
//! sequential writer appends to the last range in place, up to a segment, so streaming a
//! file costs one copy into this buffer and nothing more.

use std::collections::BTreeMap;

/// Largest buffer an append grows in place. Fixed-size segments are reused after write-back
/// frees them, instead of fresh (slow to first touch) memory for one growing buffer per file.
const SEGMENT: usize = 4 << 20;

/// Segments written back and kept for the next appends (at most `POOL_SEGMENTS`, 32 MiB): the
/// allocator would hand freed 4 MiB buffers back to the kernel (glibc trims and unmaps
/// them), and every new one then cost a page fault and a page clear per 4 KiB (8 % of the
/// daemon's CPU in a streaming write, perf), more in a VM whose balloon reports free pages.
static POOL: parking_lot::Mutex<Vec<Vec<u8>>> = parking_lot::Mutex::new(Vec::new());
const POOL_SEGMENTS: usize = 8;

/// An empty buffer with room for a segment, from the pool when it has one.
fn segment() -> Vec<u8> {
    POOL.lock()
        .pop()
        .unwrap_or_else(|| Vec::with_capacity(SEGMENT))
}

/// Gives the segments among written-back ranges to the pool (the rest is freed).
pub fn recycle(ranges: Vec<(u64, Vec<u8>)>) {
    let mut pool = POOL.lock();
    for (_, mut v) in ranges {
        if v.capacity() == SEGMENT && pool.len() < POOL_SEGMENTS {
            v.clear();
            pool.push(v);
        }
    }
}

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
        let nothing_inside = self.ranges.range(offset..end).next().is_none();
        let left = self
            .ranges
            .range_mut(..offset)
            .next_back()
            .map(|(&s, b)| (s, b));
        if nothing_inside {
            match left {
                // Fast path: an append to the range ending here, while it has room.
                Some((s, buf))
                    if s + buf.len() as u64 == offset
                        && buf.len() + data.len() <= SEGMENT.max(buf.capacity()) =>
                {
                    buf.extend_from_slice(data);
                    self.bytes += data.len();
                    return;
                }
                Some((s, buf)) if s + buf.len() as u64 > offset => {}
                _ => {
                    // Touches nothing: a new range. A writer appending past every range
                    // probably goes on, so give it a whole segment to grow into.
                    let appending = self.ranges.range(end..).next().is_none();
                    let mut v = if appending && data.len() <= SEGMENT {
                        segment()
                    } else {
                        Vec::with_capacity(data.len())
                    };
                    v.extend_from_slice(data);
                    self.bytes += v.len();
                    self.ranges.insert(offset, v);
                    return;
                }
            }
        }
        // General case: merge every range that overlaps [offset, end) into one buffer.
        let mut new_start = offset;
        if let Some((&s, buf)) = self.ranges.range(..offset).next_back()
            && s + buf.len() as u64 > offset
        {
            new_start = s;
        }
        let keys: Vec<u64> = self.ranges.range(new_start..end).map(|(&k, _)| k).collect();
        let mut merged: Vec<(u64, Vec<u8>)> = Vec::new();
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

    /// Records only the parts of `data` that no dirty range covers (older data going back
    /// under newer writes).
    fn write_under(&mut self, offset: u64, data: &[u8]) {
        let end = offset + data.len() as u64;
        let covered: Vec<(u64, u64)> = self
            .spans()
            .into_iter()
            .filter(|&(s, e)| s < end && e > offset)
            .collect();
        let mut p = offset;
        for (s, e) in covered {
            if s > p {
                self.write(p, &data[(p - offset) as usize..(s - offset) as usize]);
            }
            p = p.max(e);
        }
        if p < end {
            self.write(p, &data[(p - offset) as usize..]);
        }
    }

    /// Copies of the dirty bytes inside `[from, to)`, as sorted ranges.
    pub fn copy_range(&self, from: u64, to: u64) -> Vec<(u64, Vec<u8>)> {
        let first = self
            .ranges
            .range(..=from)
            .next_back()
            .map(|(&k, _)| k)
            .unwrap_or(from);
        let mut out = Vec::new();
        for (&k, v) in self.ranges.range(first..to) {
            let s = k.max(from);
            let e = (k + v.len() as u64).min(to);
            if s < e {
                out.push((s, v[(s - k) as usize..(e - k) as usize].to_vec()));
            }
        }
        out
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
        for (k, v) in ranges {
            self.write_under(k, &v);
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
        for (k, v) in d.copy_range(off, off + len as u64) {
            let at = (k - off) as usize;
            b[at..at + v.len()].copy_from_slice(&v);
        }
        b
    }

    #[test]
    fn overlapping_writes_merge_and_newest_wins() {
        let mut d = DirtyMap::default();
        d.write(10, b"aaaa");
        d.write(20, b"bbbb");
        d.write(12, b"XXXXXXXXXX"); // 12..22 overlaps both
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
    fn a_recycled_segment_holds_only_the_new_bytes() {
        let mut d = DirtyMap::default();
        d.write(0, &[7u8; 3000]);
        recycle(d.take());
        // Whichever segment comes next (this one, or another test's), it starts empty.
        let mut e = DirtyMap::default();
        e.write(10, b"new");
        e.write(13, b"er");
        assert_eq!(e.spans(), vec![(10, 15)]);
        assert_eq!(read(&e, 10, 5), b"newer".to_vec());
        assert_eq!(e.bytes(), 5);
        recycle(e.take());
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
