"""The differential test of zram: the model's device and the engine's, driven by the same operations.

Both devices follow one algorithm (zram_write_page, zram_free_page,
writeback, recompress_slot, in the same order of pool calls), each on its
own implementation's pool with the same handle tag, so after every
operation they must agree exactly: every slot (flags, size, handle), the
stats, the pool's object count and pages, its class rows (fullness counts
included) and the bytes read back.  Under the 6.1 preset the pools group and
compact as 6.1 did (``fullness="legacy"``, chain 4, the used-percentage rule).

The codec is zstd (or deflate): the engine and the model call the same
library with the same parameters, so the objects have the same sizes.  (Not
lz4: the model compresses through python-lz4's streaming call, the engine
with the kernel's one-shot ``LZ4_compress_fast``; a page may differ by a few
bytes, which tests/test_zram.py checks against each codec on its own.)
"""

from __future__ import annotations

import random

import pytest

from zram_pages import PAGE, any_page
from zsmalloc import engine, model
from zsmalloc.zram import KERNELS
from zsmalloc.zram import device as zram_model
from zsmalloc.zram import engine as zram_engine

TAG = 7
NPAGES = 48


def _pair(tmp_path, algorithm: str, kernel: str | None = None):
    devs = []
    shape = {}
    secondary = "deflate" if algorithm == "zstd" else "zstd"
    if kernel is not None:
        preset = KERNELS[kernel]
        shape = {
            "chain_size": preset.chain_size,
            "class_rule": preset.class_rule,
            "fullness": preset.fullness,
        }
        if not preset.recompress:  # 6.1: recompression came with 6.2; both devices refuse it
            secondary = None
    for impl, cls, name in ((model, zram_model.ZramDevice, "m"), (engine, zram_engine.ZramDevice, "e")):
        pool = impl.Pool(name="zram-diff", handle_tag=TAG, background_work=False, **shape)
        devs.append(
            cls(
                NPAGES * PAGE,
                algorithm=algorithm,
                recompress_algorithm=secondary,
                backing_file=tmp_path / f"{name}.img",
                backing_blocks=NPAGES // 2,
                pool=pool,
                kernel=kernel,
            )
        )
    return devs


def _state(dev) -> tuple:
    slots = tuple(dev.slot_info(i) for i in range(dev.nr_pages))
    pool = dev.pool
    rows = pool.class_stats()
    stats = dev.mm_stat(), dev.io_stat(), dev.bd_stat(), dev.recomp_stat()
    return slots, stats, len(pool), pool.total_pages, rows, pool.format_classes()


def _apply(dev, op: tuple) -> object:
    kind, *args = op
    try:
        if kind == "write":
            dev.write_page(*args)
        elif kind == "pwrite":
            dev.pwrite(*args)
        elif kind == "zeroes":
            dev.write_zeroes(*args)
        elif kind == "discard":
            dev.discard(*args)
        elif kind == "read":
            return dev.read_page(*args)
        elif kind == "pread":
            return dev.pread(*args)
        elif kind == "idle":
            return dev.mark_idle()
        elif kind == "writeback":
            return dev.writeback(args[0], max_pages=args[1])
        elif kind == "recompress":
            return dev.recompress(only_idle=args[0], max_pages=args[1])
        elif kind == "compact":
            return dev.compact()
        elif kind == "limit":
            dev.mem_limit = args[0]
    except Exception as exc:  # the same refusal from both: its type and errno
        return type(exc).__name__, getattr(exc, "errno", None)
    return None


def _ops(rng: random.Random, n: int):
    for _ in range(n):
        r = rng.random()
        i = rng.randrange(NPAGES)
        if r < 0.40:
            yield ("write", i, any_page(rng))
        elif r < 0.50:
            off = rng.randrange(NPAGES * PAGE)
            yield (
                "pwrite",
                off,
                rng.randbytes(min(rng.choice([1, 100, PAGE, 3 * PAGE]), NPAGES * PAGE - off)),
            )
        elif r < 0.55:
            off = rng.randrange(NPAGES * PAGE)
            yield ("zeroes", off, min(rng.choice([8, PAGE, 2 * PAGE + 9]), NPAGES * PAGE - off))
        elif r < 0.60:
            yield ("discard", i, rng.randint(0, min(3, NPAGES - i)))
        elif r < 0.75:
            yield ("read", i)
        elif r < 0.80:
            off = rng.randrange(NPAGES * PAGE)
            yield ("pread", off, min(rng.randint(0, 2 * PAGE), NPAGES * PAGE - off))
        elif r < 0.84:
            yield ("idle",)
        elif r < 0.88:
            yield ("writeback", rng.choice(["idle", "huge", "all", "incompressible"]), rng.choice([None, 2]))
        elif r < 0.92:
            yield ("recompress", rng.random() < 0.5, rng.choice([None, 3]))
        elif r < 0.95:
            yield ("compact",)
        elif r < 0.97:
            yield ("limit", rng.choice([0, 12 * PAGE, 40 * PAGE]))
        else:  # out of range: refused alike, and counted alike
            yield ("write", NPAGES + i, any_page(rng))


@pytest.mark.parametrize(
    ("algorithm", "kernel"),
    # zstd in this project's frame, and in the kernel's two (6.6's crypto API, 6.12's backend);
    # 6.1: the crypto API's frame on a pool grouped and compacted as 6.1's; lz4 under a preset
    # is lz4-kernel on both sides (without one, python-lz4's streaming call and the engine's
    # one-shot LZ4_compress_fast may choose other matches)
    [
        ("zstd", None),
        ("deflate", None),
        ("zstd", "6.6"),
        ("zstd", "6.12"),
        ("zstd", "6.1"),
        ("deflate", "6.1"),
        ("lz4", "6.12"),
        ("lz4", "6.1"),
        # 6.17: zstd through the loaded libzstd 1.5.7 on both sides, as primary and as the
        # recompression algorithm (tests/test_zram_zstd_library.py: when it is here)
        ("zstd", "6.17"),
        ("lz4", "6.17"),
    ],
)
@pytest.mark.parametrize("seed", range(3))
def test_the_engine_device_follows_the_model_step_by_step(tmp_path, algorithm, kernel, seed):
    m, e = _pair(tmp_path, algorithm, kernel)
    rng = random.Random(seed)
    try:
        for step, op in enumerate(_ops(rng, 300)):
            got_m, got_e = _apply(m, op), _apply(e, op)
            assert got_m == got_e, f"step {step} {op[0]}: the model gave {got_m!r}, the engine {got_e!r}"
            assert _state(m) == _state(e), f"step {step} {op[0]}: the devices differ"
        m.check()
        e.check()
    finally:
        for dev in (m, e):
            dev.close()
            dev.pool.close()
