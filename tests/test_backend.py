"""The backend switch: ``zsmalloc.backend`` and ``ZSMALLOC_BACKEND`` choose what the public names are."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import zsmalloc
from zsmalloc import engine, model


def probe(value: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ZSMALLOC_BACKEND"}
    if value is not None:
        env["ZSMALLOC_BACKEND"] = value
    code = (
        "import zsmalloc, zsmalloc.engine as e, zsmalloc.model as m; "
        "impl = {'engine': e, 'model': m}[zsmalloc.backend]; "
        "assert zsmalloc.Pool is impl.Pool and zsmalloc.Memory is impl.Memory; "
        "print(zsmalloc.backend)"
    )
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("value", ["engine", "model"])
def test_the_variable_chooses_the_implementation(value):
    out = probe(value)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == value


def test_the_default_is_named():
    out = probe(None)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in zsmalloc.BACKENDS


def test_an_unknown_backend_is_refused_by_name():
    out = probe("fortran")
    assert out.returncode != 0
    assert "ZSMALLOC_BACKEND must be one of" in out.stderr


def test_both_implementations_share_the_errors_and_the_api():
    for impl in (model, engine):
        with impl.Pool(name="api") as pool:
            h = pool.malloc(10)
            with pytest.raises(zsmalloc.InvalidHandleError):
                pool.free(h + 2)
            with pytest.raises(zsmalloc.InvalidSizeError):
                pool.malloc(4097)
            pool.free(h)
    for impl in (model, engine):
        with impl.Pool(name="api") as pool:
            missing = [name for name in POOL_API if not hasattr(pool, name)]
            assert missing == [], f"{impl.__name__}.Pool lacks {missing}"
        mem = impl.Memory(capacity=16)
        missing = [name for name in MEMORY_API if not hasattr(mem, name)]
        assert missing == [], f"{impl.__name__}.Memory lacks {missing}"
        mem.close()


#: the user's API (DESIGN.md), not the model's kernel-named internals
POOL_API = (
    "malloc",
    "write",
    "read",
    "read_into",
    "map",
    "free",
    "handle_size",
    "locate",
    "zspage_pfns",
    "compact",
    "shrinker_count",
    "shrinker_scan",
    "flush_deferred",
    "trim",
    "close",
    "check",
    "class_stats",
    "stats",
    "format_classes",
    "class_index",
    "total_pages",
    "pages_allocated",
    "huge_class_size",
    "pages_compacted",
    "objs_compacted",
    "nr_compactions",
    "nr_deferred_frees",
    "memory",
    "name",
    "chain_size",
    "class_rule",
    "max_pages",
    "migration",
    "auto_compact_pages",
    "background_work",
    "pending_work",
    "run_pending_work",
    "worker_running",
)
MEMORY_API = (
    "alloc_page",
    "alloc_pages",
    "alloc_page_in",
    "free_page",
    "get_page",
    "put_page",
    "trylock_page",
    "lock_page",
    "unlock_page",
    "wait_on_page_locked",
    "trylock_pages",
    "page_locked",
    "page_movable",
    "page_isolated",
    "page_in_use",
    "used_pfns",
    "inject_failures",
    "clear_failures",
    "exclude_range",
    "unexclude_range",
    "drain_pages",
    "shrink_arena",
    "frame",
    "stats",
    "close",
    "register_movable_ops",
    "unregister_movable_ops",
    "set_page_movable",
    "clear_page_movable",
    "set_pages_movable",
    "reset_page",
    "isolate_movable_page",
    "putback_movable_page",
    "migrate_pages",
    "move_pages",
    "movable_pfns",
    "evacuate",
    "compact",
    "capacity",
    "hwm",
    "nr_used",
    "nr_pcp",
    "nr_alloc",
    "nr_free",
    "nr_alloc_fail",
    "nr_drained",
    "nr_used_max",
    "vmstat",
    "pcp_high",
    "pcp_batch",
    "sleep_on_page_lock",
)


def test_the_library_imports_nothing_of_the_command_line():
    """``pip install zsmalloc`` brings lz4 and zstandard only: the pool, zram and the tools must
    not need the CLI's extra (click, rich, psutil, matplotlib)."""
    code = (
        "import sys, zsmalloc, zsmalloc.zram, zsmalloc.protocheck, zsmalloc.stress, zsmalloc.replay; "
        "heavy = {'click', 'rich', 'psutil', 'matplotlib'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
