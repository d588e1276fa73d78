//! Fullness grouping and compaction before 6.4: a pool made with
//! [`Fullness::Legacy`].  The model's counterpart, with the kernel's
//! pseudo-code, is `zsmalloc/pool/legacy.py`.
//!
//! mm/zsmalloc.c from 4.8 to 6.3, read against 6.1 (6.1.158): four groups,
//! ZS_EMPTY, ZS_ALMOST_EMPTY (`0 < inuse <= 3 * N / 4`), ZS_ALMOST_FULL and
//! ZS_FULL, on the first four lists of a class; `insert_zspage` puts a
//! zspage after the head of its list when the head holds more objects (see
//! `Pool::insert_zspage`); `find_get_zspage` looks below ZS_FULL.  Its
//! `__zs_compact` drains one source, picked from almost empty first, into as
//! many destinations as it takes, picked from almost full first.  As in the
//! model, the source's zspage lock is only tried (the kernel waits for it),
//! and the kernel's early stop when the pool lock is contended is not
//! modelled.

use crate::sync::Ordering::Relaxed;

use super::zsmalloc::{ClassState, Pool, PoolError, SizeClass, NO_ZSPAGE};

pub const ZS_EMPTY: usize = 0;
pub const ZS_ALMOST_EMPTY: usize = 1;
pub const ZS_ALMOST_FULL: usize = 2;
pub const ZS_FULL: usize = 3;
/// `fullness_threshold_frac`: almost empty up to 3/4 in use.
const FULLNESS_THRESHOLD_FRAC: usize = 4;

/// How a pool groups its zspages by fullness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fullness {
    /// 6.4 and later: twelve groups, by tenths of use
    Ratio,
    /// 4.8 to 6.3: empty, almost empty, almost full, full
    Legacy,
}

impl Fullness {
    pub fn name(self) -> &'static str {
        match self {
            Fullness::Ratio => "ratio",
            Fullness::Legacy => "legacy",
        }
    }

    pub fn from_name(name: &str) -> Option<Fullness> {
        match name {
            "ratio" => Some(Fullness::Ratio),
            "legacy" => Some(Fullness::Legacy),
            _ => None,
        }
    }
}

/// `get_fullness_group` before 6.4.
pub fn get_fullness_group(inuse: usize, objs_per_zspage: usize) -> usize {
    if inuse == 0 {
        ZS_EMPTY
    } else if inuse == objs_per_zspage {
        ZS_FULL
    } else if inuse <= 3 * objs_per_zspage / FULLNESS_THRESHOLD_FRAC {
        ZS_ALMOST_EMPTY
    } else {
        ZS_ALMOST_FULL
    }
}

/// `isolate_zspage`: the head of almost empty, else of almost full, for a
/// source; the other way round for a destination.  Off its list.
fn isolate_zspage(pool: &Pool, st: &mut ClassState, source: bool) -> Option<u32> {
    let groups = if source { [ZS_ALMOST_EMPTY, ZS_ALMOST_FULL] } else { [ZS_ALMOST_FULL, ZS_ALMOST_EMPTY] };
    let zid = groups.iter().map(|&fg| st.head[fg]).find(|&z| z != NO_ZSPAGE)?;
    pool.remove_zspage(st, zid);
    Some(zid)
}

/// `migrate_zspage`: src's objects, in index order, into dst; (objects
/// moved, whether dst filled with one still to move).  Scanning src from its
/// first page again finds the object the kernel's `zs_compact_control` would
/// resume at: an isolated, write-locked src only loses objects.
fn migrate_zspage(pool: &Pool, cls: &SizeClass, src: u32, dst: u32) -> (u64, bool) {
    let n = cls.spec.objs_per_zspage;
    let (mut moved, mut dst_full) = (0, false);
    pool.for_each_obj(cls, src, |slot| {
        // zspage_full: -ENOMEM
        dst_full = pool.zs(dst).inuse.load(Relaxed) as usize == n;
        if !dst_full {
            pool.migrate_obj(cls, src, dst, slot);
            moved += 1;
        }
        !dst_full
    });
    (moved, dst_full)
}

/// `__zs_compact` of 6.1 for one class: (pages freed, objects moved).
pub(super) fn __zs_compact(pool: &Pool, cls: &SizeClass) -> Result<(u64, u64), PoolError> {
    let _guard = pool.lock.write();
    let mut st = cls.state.lock();
    let (mut freed, mut moved) = (0, 0);
    let mut locked = false;
    let mut src = isolate_zspage(pool, &mut st, true);
    while let Some(s) = src {
        locked = pool.zspage_write_trylock(s);
        if !locked || pool.zs_can_compact(cls, &st) == 0 {
            break;
        }
        let mut dst = isolate_zspage(pool, &mut st, false);
        while let Some(d) = dst {
            let (n, dst_full) = migrate_zspage(pool, cls, s, d);
            moved += n;
            if !dst_full {
                break;
            }
            pool.putback_zspage(cls, &mut st, d);
            dst = isolate_zspage(pool, &mut st, false);
        }
        let Some(d) = dst else {
            break;
        };
        pool.putback_zspage(cls, &mut st, d);
        pool.zspage_write_unlock(s);
        locked = false;
        if pool.putback_zspage(cls, &mut st, s) == ZS_EMPTY {
            pool.free_zspage(cls, &mut st, s)?;
            freed += cls.spec.pages_per_zspage as u64;
        }
        src = isolate_zspage(pool, &mut st, true);
    }
    if let Some(s) = src {
        pool.putback_zspage(cls, &mut st, s);
        if locked {
            pool.zspage_write_unlock(s);
        }
    }
    Ok((freed, moved))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_quarter_mark() {
        // 13 objects: almost empty up to 9 (3 * 13 / 4), almost full from 10
        let groups: Vec<usize> = (0..=13).map(|i| get_fullness_group(i, 13)).collect();
        assert_eq!(groups, [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 3]);
        assert_eq!(get_fullness_group(1, 1), ZS_FULL);
        assert_eq!(Fullness::from_name("legacy").map(Fullness::name), Some("legacy"));
        assert_eq!(Fullness::from_name("tenths"), None);
    }
}
