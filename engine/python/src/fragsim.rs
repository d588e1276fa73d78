//! The fragmentation simulation (`zsmalloc_core::fragsim`) for
//! `zsmalloc.fragsim`: one run of one mode per call.  The GIL is released
//! for the run and taken back once a tick, to report progress and to
//! notice Ctrl-C.  Python validates the scenario's types and shapes; the
//! core refuses values out of range.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use zsmalloc_core::fragsim::{self, BlockMap, Interval, Level, Mode, Request, Scenario};
use zsmalloc_core::mm::zone::{MigrateType, MIGRATE_TYPES};

/// (share, churn)
type LevelArg = (f64, f64);
/// (order, migratetype, per_tick, lifetime, direct_compaction)
type RequestArg = (usize, String, f64, usize, bool);

fn migratetype_arg(name: &str) -> PyResult<MigrateType> {
    MIGRATE_TYPES.into_iter().find(|m| m.name().eq_ignore_ascii_case(name)).ok_or_else(|| {
        PyValueError::new_err(format!("migratetype must be unmovable, movable or reclaimable, not {name:?}"))
    })
}

fn interval_dict<'py>(py: Python<'py>, iv: &Interval) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("tick", iv.tick)?;
    d.set_item("requests", iv.requests.to_vec())?;
    d.set_item("served", iv.served.to_vec())?;
    d.set_item("compact_stall", iv.compact_stall)?;
    d.set_item("compact_success", iv.compact_success)?;
    d.set_item("compact_fail", iv.compact_fail)?;
    d.set_item("compact_deferred", iv.compact_deferred)?;
    d.set_item("kcompactd_runs", iv.kcompactd_runs)?;
    d.set_item("pages_migrated", iv.pages_migrated)?;
    d.set_item("zspages_migrated", iv.zspages_migrated)?;
    d.set_item("migrate_scanned", iv.migrate_scanned)?;
    d.set_item("free_scanned", iv.free_scanned)?;
    d.set_item("order0_failed", iv.order0_failed)?;
    d.set_item("reclaimed", iv.reclaimed)?;
    d.set_item("alloc_fallbacks", iv.alloc_fallbacks)?;
    d.set_item("blocks_claimed", iv.blocks_claimed)?;
    d.set_item("watermark_boosts", iv.watermark_boosts)?;
    d.set_item("boosts_reclaimed", iv.boosts_reclaimed)?;
    d.set_item("free_pages", iv.free_pages)?;
    d.set_item("pool_pages", iv.pool_pages)?;
    d.set_item("anon_pages", iv.anon_pages)?;
    d.set_item("kernel_pages", iv.kernel_pages)?;
    d.set_item("reclaimable_pages", iv.reclaimable_pages)?;
    d.set_item("cache_pages", iv.cache_pages)?;
    d.set_item("held_blocks_pages", iv.held_blocks_pages)?;
    d.set_item("unusable_index", iv.unusable_index.to_vec())?;
    d.set_item("fragmentation_index", iv.fragmentation_index.to_vec())?;
    let free = PyDict::new(py);
    for mt in MIGRATE_TYPES {
        free.set_item(mt.name(), iv.free_blocks[mt as usize].to_vec())?;
    }
    d.set_item("free_blocks", free)?;
    let blocks = PyDict::new(py);
    for mt in MIGRATE_TYPES {
        blocks.set_item(mt.name(), iv.pageblocks[mt as usize])?;
    }
    d.set_item("pageblocks", blocks)?;
    Ok(d)
}

fn map_dict<'py>(py: Python<'py>, m: &BlockMap) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("tick", m.tick)?;
    d.set_item("migratetype", PyBytes::new(py, &m.migratetype))?;
    d.set_item("free", m.free.clone())?;
    d.set_item("foreign", m.foreign.clone())?;
    Ok(d)
}

/// One run of `mode` ("mainline", "2016", "placed", "unmovable") on the
/// scenario the keyword arguments give; `progress(tick)` after each tick.
#[pyfunction]
#[pyo3(signature = (
    mode, sizes, *, zone_pages, seed, zram, anon, kernel, reclaimable, requests, page_cache,
    fill_ticks, churn_ticks, pool_compact_every, report_every, maps_at, chain_size,
    watermark_boost_factor, progress=None
))]
#[allow(clippy::too_many_arguments)]
pub fn fragsim_run<'py>(
    py: Python<'py>,
    mode: &str,
    sizes: Vec<u16>,
    zone_pages: usize,
    seed: u64,
    zram: LevelArg,
    anon: LevelArg,
    kernel: LevelArg,
    reclaimable: LevelArg,
    requests: Vec<RequestArg>,
    page_cache: bool,
    fill_ticks: usize,
    churn_ticks: usize,
    pool_compact_every: usize,
    report_every: usize,
    maps_at: Vec<usize>,
    chain_size: usize,
    watermark_boost_factor: usize,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let mode = Mode::from_name(mode).ok_or_else(|| {
        PyValueError::new_err(format!("mode must be one of {:?}, not {mode:?}", Mode::NAMES))
    })?;
    let level = |(share, churn): LevelArg| Level { share, churn };
    let requests = requests
        .into_iter()
        .map(|(order, mt, per_tick, lifetime, direct_compaction)| {
            Ok(Request { order, migratetype: migratetype_arg(&mt)?, per_tick, lifetime, direct_compaction })
        })
        .collect::<PyResult<Vec<_>>>()?;
    let sc = Scenario {
        zone_pages,
        seed,
        zram: level(zram),
        anon: level(anon),
        kernel: level(kernel),
        reclaimable: level(reclaimable),
        requests,
        page_cache,
        fill_ticks,
        churn_ticks,
        pool_compact_every,
        report_every,
        maps_at,
        chain_size,
        watermark_boost_factor,
    };
    let mut stopped: Option<PyErr> = None;
    let result = py.detach(|| {
        fragsim::run(&sc, mode, &sizes, &mut |tick| {
            Python::attach(|py| {
                let step = py.check_signals().and_then(|()| match &progress {
                    Some(p) => p.call1(py, (tick,)).map(drop),
                    None => Ok(()),
                });
                match step {
                    Ok(()) => true,
                    Err(e) => {
                        stopped = Some(e);
                        false
                    }
                }
            })
        })
    });
    if let Some(e) = stopped {
        return Err(e);
    }
    // (an interrupted run has set `stopped`: its error is the callback's)
    let out = result.map_err(PyValueError::new_err)?;
    let d = PyDict::new(py);
    let intervals = PyList::empty(py);
    for iv in &out.intervals {
        intervals.append(interval_dict(py, iv)?)?;
    }
    d.set_item("intervals", intervals)?;
    let maps = PyList::empty(py);
    for m in &out.maps {
        maps.append(map_dict(py, m)?)?;
    }
    d.set_item("maps", maps)?;
    d.set_item("objects_checked", out.objects_checked)?;
    Ok(d)
}
