//! `zsmalloc._engine.Zone`: the core's buddy allocator (`zsmalloc_core::mm::zone`)
//! with the Python API of its model, `zsmalloc.mm.zone.Zone`, so that
//! `tests/test_zone_differential.py` can drive both with the same calls.
//!
//! This layer checks the arguments as the model does (an order within
//! 0..10, a pfn inside the zone, a migratetype named "unmovable", "movable"
//! or "reclaimable", marks >= 0), with the model's messages, so that the
//! core only ever sees values it can index with.  Refusals raise
//! `zsmalloc.errors.ZoneError`, a failed `check()` CorruptionError, and the
//! results are the model's dataclasses (`Watermarks`, `ZoneEvents`,
//! `ContigPageInfo`).  Every call is short: the GIL is kept.

use std::sync::atomic::AtomicBool;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

use zsmalloc_core::mm::zone::{
    MigrateType, Watermarks, Zone, ZoneError, MAX_PAGE_ORDER, MAX_ZONE_PAGES, MIGRATE_TYPES,
};

use super::{guard, python_error, zs_error};

const MODEL: &str = "zsmalloc.mm.zone";

static ZONE_ERROR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn zone_error(py: Python<'_>, msg: String) -> PyErr {
    python_error(py, &ZONE_ERROR, "zsmalloc.errors", "ZoneError", msg)
}

/// The Python name of a migratetype: "unmovable", "movable", "reclaimable".
pub(crate) fn mt_name(mt: MigrateType) -> String {
    mt.name().to_ascii_lowercase()
}

pub(crate) fn mt_arg(mt: &Bound<'_, PyAny>) -> PyResult<MigrateType> {
    let name = mt.extract::<String>().unwrap_or_default();
    match MIGRATE_TYPES.into_iter().find(|&m| mt_name(m) == name) {
        Some(m) => Ok(m),
        None => Err(zone_error(
            mt.py(),
            format!("migratetype must be unmovable, movable or reclaimable, not {}", mt.repr()?),
        )),
    }
}

pub(crate) fn order_arg(py: Python<'_>, order: i64) -> PyResult<usize> {
    if !(0..=MAX_PAGE_ORDER as i64).contains(&order) {
        return Err(zone_error(py, format!("order {order} is outside 0..{MAX_PAGE_ORDER}")));
    }
    Ok(order as usize)
}

pub(crate) fn count_arg(py: Python<'_>, name: &str, value: i64) -> PyResult<usize> {
    if value < 0 {
        return Err(zone_error(py, format!("{name} must be >= 0, not {value}")));
    }
    Ok(value as usize)
}

/// A zone's buddy allocator: free lists per order and migratetype,
/// pageblocks, fallback with claiming, watermarks and their boost,
/// compaction deferral.
#[pyclass(module = "zsmalloc._engine", name = "Zone")]
pub struct PyZone {
    inner: Zone,
    poisoned: AtomicBool,
}

impl PyZone {
    /// A copy of a zoned Memory's zone, for its queries (`Memory.zone_snapshot`).
    pub(crate) fn snapshot(inner: Zone) -> PyZone {
        PyZone { inner, poisoned: AtomicBool::new(false) }
    }

    fn pfn_arg(&self, py: Python<'_>, pfn: i64) -> PyResult<u32> {
        let n = self.inner.nr_pages();
        if pfn < 0 || pfn as u64 >= n as u64 {
            return Err(zone_error(py, format!("pfn {pfn} is outside the zone (0..{})", n - 1)));
        }
        Ok(pfn as u32)
    }
}

#[pymethods]
impl PyZone {
    #[new]
    fn new(py: Python<'_>, nr_pages: i64) -> PyResult<Self> {
        // a negative size gets the core's message for a size out of range, as in the model
        let inner = usize::try_from(nr_pages)
            .map_err(|_| ZoneError(format!("a zone needs 1..={MAX_ZONE_PAGES} pages, not {nr_pages}")))
            .and_then(Zone::new)
            .map_err(|e| zone_error(py, e.0))?;
        Ok(PyZone { inner, poisoned: AtomicBool::new(false) })
    }

    #[getter]
    fn nr_pages(&self) -> usize {
        self.inner.nr_pages()
    }

    #[getter]
    fn nr_free_pages(&self) -> usize {
        self.inner.nr_free_pages()
    }

    #[getter]
    fn nr_pageblocks(&self) -> usize {
        self.inner.nr_pageblocks()
    }

    #[getter]
    fn watermarks<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let w = self.inner.watermarks();
        py.import(MODEL)?.getattr("Watermarks")?.call1((w.min, w.low, w.high))
    }

    fn set_watermarks(&mut self, py: Python<'_>, watermarks: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut marks = [0; 3];
        for (mark, name) in marks.iter_mut().zip(["min", "low", "high"]) {
            *mark = count_arg(py, name, watermarks.getattr(name)?.extract()?)?;
        }
        self.inner.set_watermarks(Watermarks { min: marks[0], low: marks[1], high: marks[2] });
        Ok(())
    }

    #[getter]
    fn watermark_boost(&self) -> usize {
        self.inner.watermark_boost()
    }

    #[getter]
    fn watermark_boosted(&self) -> bool {
        self.inner.watermark_boosted()
    }

    fn take_boosted_watermark(&mut self) -> bool {
        self.inner.take_boosted_watermark()
    }

    fn lower_watermark_boost(&mut self, py: Python<'_>, pages: i64) -> PyResult<()> {
        self.inner.lower_watermark_boost(count_arg(py, "pages", pages)?);
        Ok(())
    }

    #[getter]
    fn watermark_boost_factor(&self) -> usize {
        self.inner.watermark_boost_factor()
    }

    fn set_watermark_boost_factor(&mut self, py: Python<'_>, factor: i64) -> PyResult<()> {
        self.inner.set_watermark_boost_factor(count_arg(py, "factor", factor)?);
        Ok(())
    }

    #[getter]
    fn events<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let e = self.inner.events();
        py.import(MODEL)?.getattr("ZoneEvents")?.call1((
            e.alloc_fallback,
            e.blocks_claimed,
            e.alloc_fail,
            e.watermark_boosts,
        ))
    }

    fn pageblock_migratetype(&self, py: Python<'_>, pfn: i64) -> PyResult<String> {
        Ok(mt_name(self.inner.pageblock_migratetype(self.pfn_arg(py, pfn)?)))
    }

    fn buddy_order(&self, py: Python<'_>, pfn: i64) -> PyResult<Option<usize>> {
        Ok(self.inner.buddy_order(self.pfn_arg(py, pfn)?))
    }

    fn allocated_block(&self, py: Python<'_>, pfn: i64) -> PyResult<Option<(usize, String)>> {
        Ok(self.inner.allocated_block(self.pfn_arg(py, pfn)?).map(|(order, mt)| (order, mt_name(mt))))
    }

    fn nr_free(&self, py: Python<'_>, order: i64, mt: &Bound<'_, PyAny>) -> PyResult<usize> {
        let order = order_arg(py, order)?;
        Ok(self.inner.nr_free(order, mt_arg(mt)?))
    }

    fn free_list(&self, py: Python<'_>, order: i64, mt: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
        let order = order_arg(py, order)?;
        Ok(self.inner.free_list(order, mt_arg(mt)?))
    }

    fn compact_defer_state(&self) -> (u32, u32, usize) {
        self.inner.compact_defer_state()
    }

    fn pageblock_counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (mt, n) in MIGRATE_TYPES.into_iter().zip(self.inner.pageblock_counts()) {
            d.set_item(mt_name(mt), n)?;
        }
        Ok(d)
    }

    fn pageblock_types(&self) -> Vec<String> {
        self.inner.pageblock_types().into_iter().map(mt_name).collect()
    }

    fn zone_watermark_ok(&self, py: Python<'_>, order: i64, mark: i64) -> PyResult<bool> {
        let order = order_arg(py, order)?;
        Ok(self.inner.zone_watermark_ok(order, count_arg(py, "mark", mark)?))
    }

    fn alloc_pages(&mut self, py: Python<'_>, order: i64, mt: &Bound<'_, PyAny>, mark: i64) -> PyResult<u32> {
        let order = order_arg(py, order)?;
        let mt = mt_arg(mt)?;
        let mark = count_arg(py, "mark", mark)?;
        let zone = &mut self.inner;
        guard(py, &[&self.poisoned], "alloc_pages", || {
            zone.alloc_pages(order, mt, mark).map_err(|e| zone_error(py, e.0))
        })
    }

    fn free_pages(&mut self, py: Python<'_>, pfn: i64, order: i64) -> PyResult<()> {
        let pfn = self.pfn_arg(py, pfn)?;
        let order = order_arg(py, order)?;
        let zone = &mut self.inner;
        guard(py, &[&self.poisoned], "free_pages", || {
            zone.free_pages(pfn, order).map_err(|e| zone_error(py, e.0))
        })
    }

    fn isolate_free_page(&mut self, py: Python<'_>, pfn: i64) -> PyResult<Option<usize>> {
        let pfn = self.pfn_arg(py, pfn)?;
        let zone = &mut self.inner;
        guard(py, &[&self.poisoned], "isolate_free_page", || {
            // the pages are pfn .. pfn + 2^order, as the model documents
            let mut pages = Vec::new();
            Ok(zone.isolate_free_page(pfn, &mut pages))
        })
    }

    fn suitable_page_free(&self, py: Python<'_>, order: i64, mt: &Bound<'_, PyAny>) -> PyResult<bool> {
        let order = order_arg(py, order)?;
        Ok(self.inner.suitable_page_free(order, mt_arg(mt)?))
    }

    fn compaction_deferred(&mut self, py: Python<'_>, order: i64) -> PyResult<bool> {
        Ok(self.inner.compaction_deferred(order_arg(py, order)?))
    }

    fn defer_compaction(&mut self, py: Python<'_>, order: i64) -> PyResult<()> {
        self.inner.defer_compaction(order_arg(py, order)?);
        Ok(())
    }

    fn compaction_defer_reset(&mut self, py: Python<'_>, order: i64, alloc_success: bool) -> PyResult<()> {
        self.inner.compaction_defer_reset(order_arg(py, order)?, alloc_success);
        Ok(())
    }

    fn contig_page_info<'py>(&self, py: Python<'py>, suitable_order: i64) -> PyResult<Bound<'py, PyAny>> {
        let info = self.inner.contig_page_info(order_arg(py, suitable_order)?);
        py.import(MODEL)?.getattr("ContigPageInfo")?.call1((
            info.free_pages,
            info.free_blocks_total,
            info.free_blocks_suitable,
        ))
    }

    fn fragmentation_index(&self, py: Python<'_>, order: i64) -> PyResult<i64> {
        Ok(self.inner.fragmentation_index(order_arg(py, order)?))
    }

    fn unusable_free_index(&self, py: Python<'_>, order: i64) -> PyResult<i64> {
        Ok(self.inner.unusable_free_index(order_arg(py, order)?))
    }

    /// The whole-zone consistency check: CorruptionError on the first fault.
    fn check(&self, py: Python<'_>) -> PyResult<()> {
        guard(py, &[&self.poisoned], "check", || self.inner.check().map_err(|e| zs_error(py, 6, e.0)))
    }
}
