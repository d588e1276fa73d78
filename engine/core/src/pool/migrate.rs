//! zsmalloc's movable-page callbacks (`zs_page_isolate`, `zs_page_migrate`,
//! `zs_page_putback`): two protocols, and the broken one the 2016 review
//! caught.  The model's counterpart is `zsmalloc/pool/migrate.py`.
//!
//! - `mainline` (5.17 and later, as in 6.17): isolate accepts a page that
//!   still belongs to a zspage; migrate takes the pool lock (write), the
//!   class lock, trylocks the zspage (busy: -EAGAIN while an object is
//!   mapped), copies the page, points the handle of every allocated object
//!   that starts in it at the new page and replaces the page in the chain.
//!   The zspage stays on its list, so zs_free may destroy it while a page
//!   is isolated; the VM's reference keeps the frame, the callbacks tolerate
//!   the destroyed page.
//! - `2016` (the design merged in 4.8): isolate refuses an empty zspage; the
//!   first isolated page takes the zspage off its fullness list, and the
//!   zspage counts its isolated pages; migrate refuses (busy) while an object
//!   starting in the page is pinned by a mapping, or while any object of the
//!   zspage is mapped (4.8's per-zspage migrate rwlock); the last isolated page to
//!   leave puts the zspage back, an empty one to the deferred free; zs_free
//!   never destroys an isolated zspage.
//! - `2016-v3` (deliberately broken, for the checkers): the 2016 protocol
//!   as reviewed in v3, where zs_free destroys an isolated zspage and the
//!   isolated page keeps its stale descriptor, so the putback that follows
//!   works on a zspage that no longer exists (Chulmin Kim, April 2016).
//!
//! Lock order: page lock (held by the VM) -> pool lock -> class lock ->
//! zspage lock.

use crate::mm::migrate::{MigrateMode, MovableOps, EAGAIN, MIGRATEPAGE_SUCCESS};
use crate::mm::{Memory, PG_MOVABLE};
use crate::sync::Ordering::Relaxed;

use super::size_class::ZS_SIZE_CLASSES;
use super::zsmalloc::{ClassState, Pool, SizeClass, LOC_MASK, MAX_OBJS_PER_PAGE, OBJ_INDEX_BITS};

/// The movable-page protocol of a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Mainline,
    Seed2016,
    BrokenV3,
}

impl Protocol {
    pub const NAMES: [&'static str; 3] = ["mainline", "2016", "2016-v3"];

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    pub fn from_name(name: &str) -> Option<Protocol> {
        match name {
            "mainline" => Some(Protocol::Mainline),
            "2016" => Some(Protocol::Seed2016),
            "2016-v3" => Some(Protocol::BrokenV3),
            _ => None,
        }
    }

    /// zs_free may destroy a zspage that has isolated pages.
    pub fn free_destroys_isolated(self) -> bool {
        self != Protocol::Seed2016
    }

    /// An isolated page keeps its descriptor when its zspage is destroyed (the v3 bug).
    pub fn keeps_isolated_descriptor(self) -> bool {
        self == Protocol::BrokenV3
    }

    fn isolates_zspages(self) -> bool {
        self != Protocol::Mainline
    }
}

impl Pool {
    /// Does the page still belong to a zspage of this pool?
    /// Whether `pfn` is one of this pool's pages, marked movable.
    pub fn page_is_ours(&self, mem: &Memory, pfn: u32) -> bool {
        let d = mem.desc(pfn);
        d.flags.load(Relaxed) & PG_MOVABLE != 0 && d.movable_ops.load(Relaxed) == self.ops_id
    }

    /// The class of the zspage a page descriptor names.  A destroyed
    /// zspage's id (only the 2016-v3 putback reads one) has no class; the
    /// model then reads the last class slot (index -1), and so does this.
    fn class_named_by(&self, zid: u32) -> &SizeClass {
        self.class_of_zspage_or(zid, ZS_SIZE_CLASSES - 1)
    }

    /// `replace_sub_page` after the copy: point the handles of the page's
    /// objects at `dst`, put `dst` in the chain where `src` was, make it
    /// movable, and take the pool's reference on it.
    fn move_page(&self, cls: &SizeClass, zid: u32, dst: u32, src: u32, objs: &[(u32, u16)]) {
        let mem = &*self.mem;
        mem.copy_page(dst, src);
        for &(slot, idx) in objs {
            let e = self.entry(slot as usize);
            let packed = e.obj.load(Relaxed);
            let obj = ((dst as u64) << OBJ_INDEX_BITS) | idx as u64;
            e.obj.store(obj | (packed & !LOC_MASK), Relaxed); // record_obj
        }
        let mut chain = self.zspage_pages(zid);
        for pfn in chain.as_mut_slice() {
            if *pfn == src {
                *pfn = dst;
            }
        }
        self.create_page_chain(cls, zid, chain.as_slice());
        mem.set_page_movable(dst, self.ops_id);
        let _ = mem.get_page(dst); // in use: the VM allocated it and holds it locked
    }

    /// The objects that start in `pfn`, a page of zspage `zid`, or None if
    /// the page is no longer in its chain.
    fn objs_of_page(
        &self,
        cls: &SizeClass,
        zid: u32,
        pfn: u32,
        out: &mut [(u32, u16); MAX_OBJS_PER_PAGE],
    ) -> Option<usize> {
        let k = self.zspage_pages(zid).as_slice().iter().position(|&p| p == pfn)?;
        Some(self.objs_in_page(cls, k, pfn, out))
    }

    fn release_old_page(&self, mem: &Memory, src: u32) {
        mem.reset_page(src);
        let _ = mem.put_page(src); // the pool's reference; the VM drops its own
    }

    /// One isolated page left; the last one puts the zspage back
    /// (`putback_zspage_deferred`).
    fn dec_isolation(&self, cls: &SizeClass, st: &mut ClassState, zid: u32) {
        let z = self.zs(zid);
        let left = z.isolated.load(Relaxed) - 1;
        z.isolated.store(left, Relaxed);
        if left == 0 && self.putback_zspage(cls, st, zid) == 0 {
            self.kick_deferred_free();
        }
    }
}

impl MovableOps for Pool {
    fn isolate(&self, mem: &Memory, pfn: u32, _mode: MigrateMode) -> bool {
        // the page is locked, so its zspage cannot be destroyed now:
        // __free_zspage needs every page lock of the zspage
        if !self.page_is_ours(mem, pfn) {
            return false;
        }
        if !self.config.migration.isolates_zspages() {
            return true;
        }
        let zid = mem.desc(pfn).private.load(Relaxed);
        let cls = self.class_named_by(zid);
        let mut st = cls.state.lock();
        let z = self.zs(zid);
        if z.inuse.load(Relaxed) == 0 {
            return false; // an empty zspage is about to be freed
        }
        if z.isolated.load(Relaxed) == 0 {
            self.remove_zspage(&mut st, zid); // no allocation, no compaction may pick it now
        }
        z.isolated.store(z.isolated.load(Relaxed) + 1, Relaxed);
        true
    }

    fn migrate(&self, mem: &Memory, dst: u32, src: u32, _mode: MigrateMode) -> i32 {
        if !self.page_is_ours(mem, src) {
            return MIGRATEPAGE_SUCCESS; // destroyed while isolated: nothing to move
        }
        {
            let _pool = self.lock.write();
            let zid = mem.desc(src).private.load(Relaxed);
            let cls = self.class_named_by(zid);
            let mut st = cls.state.lock();
            let mut objs = [(0u32, 0u16); MAX_OBJS_PER_PAGE];
            let Some(n) = self.objs_of_page(cls, zid, src, &mut objs) else {
                return EAGAIN; // a stale descriptor (2016-v3): the page is in no chain
            };
            if self.config.migration.isolates_zspages() {
                // trypin_tag on every object that starts in the page: a mapped one keeps it here
                let pinned = self.pinned.lock();
                if objs[..n].iter().any(|(slot, _)| pinned.contains_key(slot)) {
                    return EAGAIN;
                }
                drop(pinned);
                // migrate_write_lock: 4.8's per-zspage migrate rwlock, held for
                // reading across every mapping, so that no page of the zspage
                // moves under a mapped object (the second page of one that
                // spans two pages included; the pins cover only objects that
                // start in this page)
                if !self.zspage_write_trylock(zid) {
                    return EAGAIN;
                }
                self.move_page(cls, zid, dst, src, &objs[..n]);
                self.zspage_write_unlock(zid);
                self.dec_isolation(cls, &mut st, zid);
            } else {
                if !self.zspage_write_trylock(zid) {
                    return EAGAIN;
                }
                self.move_page(cls, zid, dst, src, &objs[..n]);
                self.zspage_write_unlock(zid);
            }
        }
        self.release_old_page(mem, src);
        MIGRATEPAGE_SUCCESS
    }

    fn putback(&self, mem: &Memory, pfn: u32) {
        if !self.config.migration.isolates_zspages() {
            return;
        }
        let zid = mem.desc(pfn).private.load(Relaxed);
        let cls = self.class_named_by(zid);
        let mut st = cls.state.lock();
        self.dec_isolation(cls, &mut st, zid);
    }
}
