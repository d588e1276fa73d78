"""zsmalloc.Store: the mapping protocol (zict's own conformance helpers), values of every kind and
size, compression, lifetime and pickling, on both implementations of the pool (issue 12, part 1)."""

from __future__ import annotations

import contextlib
import doctest
import gc
import os
import pickle
import random
import threading
import weakref
from types import ModuleType

import lz4.block
import numpy
import pytest
import zict
from zict.tests import utils_test

import zsmalloc.store
from zsmalloc import PoolClosedError, PoolFullError, Store, _engine
from zsmalloc.store import COMPRESSIONS, LZ4_BLOCK, TAIL_PIECES, EngineStore, _pieces, decompress


@pytest.fixture(params=COMPRESSIONS)
def store(request: pytest.FixtureRequest, impl: ModuleType):
    with Store(request.param, pool=impl.Pool(name="store-test")) as s:
        yield s
        s.pool.check()


def test_zict_mapping_conformance(store: Store) -> None:
    utils_test.check_mapping(store)
    utils_test.check_bad_value_types(store)


def test_zict_thread_safety(store: Store) -> None:
    utils_test.check_different_keys_threadsafe(store)
    utils_test.check_same_key_threadsafe(store)
    assert len(store) == 0 and len(store.pool) == 0  # every replaced value given back


def test_threads_with_large_values_batches_and_compaction(impl: ModuleType) -> None:
    # values past the engine's DETACH_BYTES: the table lock is held with the GIL released
    big = {i: (bytes([i]) * 1000 + os.urandom(200)) * 100 for i in range(20)}
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        r = random.Random(seed)
        try:
            for _ in range(500):
                op, k = r.random(), r.randrange(20)
                with contextlib.suppress(KeyError):
                    if op < 0.3:
                        store[k] = big[k]
                    elif op < 0.5:
                        assert store[k] == big[k]
                    elif op < 0.6:
                        del store[k]
                    elif op < 0.8:
                        store.set_many({j: big[j] for j in r.sample(range(20), 4)})
                    elif op < 0.99:
                        keys = list(store)[:3]
                        assert store.get_many(keys) == [big[j] for j in keys]
                    else:
                        store.compact()
                assert len(store) <= 20 and isinstance(k in store, bool)
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    with Store(pool=impl.Pool()) as store:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors and not any(t.is_alive() for t in threads)
        assert store.nbytes == sum(len(big[k]) for k in store)
        store.pool.check()
        store.clear()
        assert len(store.pool) == 0


def test_zict_closing(impl: ModuleType) -> None:
    store: Store = Store(pool=impl.Pool())
    store["a"] = b"1"
    utils_test.check_closing(store)
    with pytest.raises(PoolClosedError):
        store["a"]
    with pytest.raises(PoolClosedError):
        store["b"] = b"2"


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096 + 5, LZ4_BLOCK, LZ4_BLOCK + 1, 1 << 20])
def test_values_of_any_size_and_kind(store: Store, size: int) -> None:
    rng = numpy.random.default_rng(size)
    random = rng.integers(0, 256, size, dtype=numpy.uint8)
    text = (b"zsmalloc stores compressed pages " * (size // 33 + 1))[:size]
    values = {
        "bytes": bytes(random),
        "bytearray": bytearray(text),
        "memoryview": memoryview(bytes(random))[: size // 2],
        "numpy": random.reshape(-1) if size else random,
        "zeros": bytes(size),
        "same": b"\xab" * size,
    }
    for key, value in values.items():
        store[(key, size)] = value
    for key, value in values.items():
        got = store[(key, size)]
        assert type(got) is bytes and got == bytes(memoryview(value).cast("B")), key
        buf = bytearray(size + 3)
        assert store.get_into((key, size), buf) == len(got)
        assert bytes(buf[: len(got)]) == got
    assert store.nbytes == sum(len(memoryview(v).cast("B")) for v in values.values())


def test_same_filled_values_take_no_pool_object(store: Store) -> None:
    store["z"] = bytes(1 << 20)
    store["f"] = b"\xff" * 5000
    assert store.pool.total_pages == 0 and len(store.pool) == 0
    assert store.compressed_nbytes == 0 and store.nbytes == (1 << 20) + 5000


def test_incompressible_values_are_kept_as_they_are(store: Store) -> None:
    data = os.urandom(10_000)
    store["r"] = data
    assert store.compressed_nbytes == 10_000  # a payload no smaller than the value is not kept
    assert store["r"] == data


def test_compressible_values_shrink(store: Store) -> None:
    store["t"] = b"abcdefgh" * 10_000
    if store.compression == "none":
        assert store.compressed_nbytes == 80_000
    else:
        assert store.compressed_nbytes < 2_000
        assert store.memory_used < 80_000


def test_replacing_and_deleting_give_the_objects_back(store: Store) -> None:
    for i in range(50):
        store["k"] = os.urandom(5000 + i)
    assert len(store.pool) == len(list(_pieces(5049)))  # one value: a 4096-byte chunk and its tail's pieces
    store.update({i: os.urandom(3000) for i in range(20)})
    assert store.pop(3) is not None and 3 not in store
    key, _ = store.popitem()
    assert key not in store
    assert store.setdefault("new", b"v") == b"v" and store.setdefault("new", b"w") == b"v"
    store.clear()
    assert len(store) == 0 and len(store.pool) == 0 and store.nbytes == store.compressed_nbytes == 0


def test_a_set_that_fails_keeps_the_old_value_and_leaks_nothing(impl: ModuleType) -> None:
    with Store("none", pool=impl.Pool(max_pages=8)) as store:
        store["k"] = b"old" * 1000
        objects = len(store.pool)
        with pytest.raises(PoolFullError):
            store["k"] = os.urandom(100_000)
        assert store["k"] == b"old" * 1000
        assert len(store.pool) == objects
        with pytest.raises(TypeError):
            store["k"] = 42  # type: ignore[assignment]
        with pytest.raises(TypeError):
            store[[1]] = b"unhashable key"  # type: ignore[index]
        assert store["k"] == b"old" * 1000 and len(store) == 1
        store.pool.check()


def test_pickling_carries_the_contents(store: Store) -> None:
    store.update({"a": b"1" * 10_000, ("t", 2): os.urandom(7000), 3: b""})
    again = pickle.loads(pickle.dumps(store))
    try:
        assert again == store == dict(store.items())
        assert again.compression == store.compression
    finally:
        again.close()


def test_a_shared_pool_outlives_the_store(impl: ModuleType) -> None:
    with impl.Pool() as pool:
        other = pool.malloc(100)
        store: Store = Store(pool=pool)
        store["a"] = os.urandom(9000)
        store.close()
        assert len(pool) == 1 and pool.handle_size(other) == 100
        pool.check()


def test_a_tail_is_cut_into_pieces_that_fill_their_pages(impl: ModuleType) -> None:
    assert TAIL_PIECES == (2040, 1016, 504, 248, 120, 56, 24)
    assert list(_pieces(4096 + 2040 + 130)) == [(4096, 4096), (2040, 2040), (120, 120), (24, 10)]
    assert list(_pieces(1000)) == [(1000, 1000)] and list(_pieces(8192)) == [(4096, 4096)] * 2
    rng = numpy.random.default_rng(5)
    sizes = [4096 * int(rng.integers(1, 5)) + int(rng.integers(1, 4096)) for _ in range(300)]
    values = [rng.integers(0, 256, n, dtype=numpy.uint8).tobytes() for n in sizes]
    with Store("none", pool=impl.Pool()) as s:
        s.update(enumerate(values))
        for i, n in enumerate(sizes):  # the objects are the pieces, in order
            handles = s._entry(i)[3] if isinstance(s, EngineStore) else s._index[i].handles
            assert [s.pool.handle_size(h) for h in handles] == [size for size, _ in _pieces(n)]
        # the tails' classes fill their pages: a few pages of waste, not one class's zspage per tail
        assert s.memory_used <= s.compressed_nbytes * 1.005 + 8 * 4096
        assert all(s[i] == v and s.get_compressed(i) == ("raw", len(v), v) for i, v in enumerate(values))


def test_a_store_in_a_cycle_through_its_keys_is_collected(impl: ModuleType) -> None:
    class Key:
        def __init__(self, store: Store) -> None:
            self.store = store

    s: Store = Store(pool=impl.Pool())
    s[Key(s)] = os.urandom(5000)
    ref = weakref.ref(s)
    del s
    gc.collect()
    assert ref() is None


def test_get_into_a_buffer_too_small_is_refused(store: Store) -> None:
    store["a"] = b"x" * 100
    with pytest.raises(ValueError):
        store.get_into("a", bytearray(99))


def test_get_compressed_gives_the_stored_payload(store: Store) -> None:
    import lz4.block
    import zstandard

    text = b"the payload as the pool holds it " * 300  # several chunks, once compressed or not
    store.update({"text": text, "noise": os.urandom(5000), "same": b"\x07" * 9000})
    kind, n, payload = store.get_compressed("text")
    assert (kind, n) == (store.compression if store.compression != "none" else "raw", len(text))
    if kind == "lz4":
        assert lz4.block.decompress(payload, uncompressed_size=n) == text
    elif kind == "zstd":
        assert zstandard.ZstdDecompressor().decompress(payload) == text
    else:
        assert payload == text
    assert store.get_compressed("noise") == ("raw", 5000, store["noise"])
    assert store.get_compressed("same") == ("same", 9000, bytearray(b"\x07"))
    with pytest.raises(KeyError):
        store.get_compressed("missing")


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_the_model_and_the_engine_store_the_same_payloads(compression: str) -> None:
    from zsmalloc import engine, model

    rng = random.Random(12)
    words = [b"zspage ", b"handle ", b"class ", b"migrate ", b"isolate ", b"putback "]
    text = b"".join(rng.choice(words) for _ in range(160_000))
    values = {
        n: text[:n]
        for n in (100, 4096, LZ4_BLOCK - 1, LZ4_BLOCK, LZ4_BLOCK + 1, 3 * LZ4_BLOCK + 17, len(text))
    }
    values["noise"] = os.urandom(3 * LZ4_BLOCK)  # blocks that do not pay: kept raw
    with Store(compression, pool=model.Pool()) as ours, Store(compression, pool=engine.Pool()) as theirs:
        assert type(ours) is Store and type(theirs) is EngineStore
        ours.update(values)
        theirs.update(values)
        for key, value in values.items():
            payload = ours.get_compressed(key)
            assert theirs.get_compressed(key) == payload, key
            assert decompress(*payload) == value and theirs[key] == ours[key] == value, key
        assert ours.compressed_nbytes == theirs.compressed_nbytes
        assert ours.get_compressed("noise")[0] == "raw"
        if compression == "lz4":
            payload = ours.get_compressed(3 * LZ4_BLOCK + 17)[2]
            first = int.from_bytes(payload[:4], "little")  # the first block's length, then the block
            block = payload[4 : 4 + first]
            assert lz4.block.decompress(block, uncompressed_size=LZ4_BLOCK) == text[:LZ4_BLOCK]
        ours.pool.check()
        theirs.pool.check()


@pytest.mark.parametrize("damage", ["length", "block", "trailing"])
def test_a_damaged_lz4_payload_is_an_error(damage: str) -> None:
    value = b"".join(b"block %d " % (i % 977) for i in range(40_000))
    payload = bytearray(zsmalloc.store._lz4_compress(memoryview(value)))
    assert decompress("lz4", len(value), payload) == value
    if damage == "length":
        payload[:4] = (len(payload)).to_bytes(4, "little")
    elif damage == "block":
        payload[4:40] = bytes(36)
    else:
        payload += b"\x00"
    with pytest.raises(ValueError):
        decompress("lz4", len(value), payload)


def test_batch_calls(store: Store) -> None:
    store.set_many({i: bytes([i]) * (i + 1) * 100 for i in range(1, 30)})
    assert store.get_many([3, 1]) == [b"\x03" * 400, b"\x01" * 200]
    with pytest.raises(KeyError):
        store.get_many([1, 99])


def test_compact_keeps_every_value(store: Store) -> None:
    values = {i: os.urandom(1500) + bytes(1500) for i in range(400)}
    store.update(values)
    for i in range(0, 400, 2):
        del store[i]
    store.compact()
    assert all(store[i] == values[i] for i in range(1, 400, 2))


def test_as_a_zict_layer(impl: ModuleType) -> None:
    with Store(pool=impl.Pool()) as slow:
        buffer = zict.Buffer(fast={}, slow=slow, n=10_000, weight=lambda k, v: len(v))
        for i in range(50):
            buffer[i] = bytes([i]) * 1000
        assert len(slow) >= 40 and all(buffer[i] == bytes([i]) * 1000 for i in range(50))
        lru = zict.LRU(5, slow)
        lru["x"] = b"y" * 10
        assert lru["x"] == b"y" * 10


def test_an_unknown_compression_is_refused() -> None:
    with pytest.raises(ValueError, match="compression must be one of"):
        Store("brotli")


def test_the_docstring_examples() -> None:
    assert doctest.testmod(zsmalloc.store).failed == 0


def test_the_pool_is_true_knows_its_handles_and_refuses_pickling(impl: ModuleType) -> None:
    with impl.Pool() as pool:
        assert pool and len(pool) == 0
        h = pool.malloc(10)
        assert h in pool and numpy.int64(h) in pool
        assert h + 2 not in pool and "h" not in pool and None not in pool
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(pool)
        pool.free(h)
        assert h not in pool


def test_set_many_stores_all_or_nothing(impl):
    with Store(pool=impl.Pool()) as s:
        s.set_many([("a", b"first " * 100)])
        with pytest.raises(TypeError):
            s.set_many([("a", b"second " * 100), ("b", bytes(range(256)) * 40), ("c", 5)])
        assert dict(s) == {"a": b"first " * 100}
        s.set_many({"a": b"third", "b": bytes(10_000), "c": bytes(range(256)) * 4000})
        assert s.get_many(["c", "a", "b"]) == [bytes(range(256)) * 4000, b"third", bytes(10_000)]
        s.pool.check()
        s.clear()
        assert len(s.pool) == 0  # nothing of the failed batch was left behind


@pytest.mark.engine_only
def test_the_engine_keeps_each_entry_in_its_index(impl):
    text = b"a value that compresses, a value that compresses " * 100
    with Store(pool=impl.Pool()) as s:
        assert type(s).__mro__[1] is _engine.StoreIndex  # the index and the hot path are the engine's
        s["k"], s["big"], s["z"] = text, os.urandom(3 * 4096 + 5), bytes(7)
        kind, nbytes, stored, handles, fill = s._entry("k")
        assert (kind, nbytes, len(handles), fill) == ("lz4", len(text), 1, 0)
        assert s.pool.handle_size(handles[0]) == stored == s.get_compressed("k")[2].__len__()
        kind, nbytes, stored, handles, _ = s._entry("big")
        assert (kind, stored, [s.pool.handle_size(h) for h in handles]) == ("raw", nbytes, [4096] * 3 + [24])
        assert s._entry("z") == ("same", 7, 0, (), 0)
        with pytest.raises(KeyError):
            s._entry("missing")


@pytest.mark.engine_only
def test_the_engine_index_survives_churn_and_colliding_hashes(impl):
    class Collide:  # every key in one probe chain, equal by value
        def __init__(self, n: int) -> None:
            self.n = n

        def __hash__(self) -> int:
            return 7

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Collide) and other.n == self.n

    with Store("none", pool=impl.Pool()) as s:
        want: dict[object, bytes] = {}
        for i in range(3000):
            key: object = Collide(i % 40) if i % 3 == 0 else i % 700
            want[key] = s[key] = b"%d" % i
            if i % 5 == 0:
                victim = next(iter(want))
                del s[victim], want[victim]
        s.compact()
        assert list(s) == list(want) and dict(s.items()) == want and len(s) == len(want)
        assert s.nbytes == sum(map(len, want.values()))


@pytest.mark.engine_only
def test_a_key_that_uses_the_store_in_its_eq_gets_an_error_not_a_hang(impl):
    with Store(pool=impl.Pool()) as s:

        class Nosy:
            def __hash__(self) -> int:
                return 1

            def __eq__(self, other: object) -> bool:
                return len(s) > 0

        s[Nosy()] = b"a"
        with pytest.raises(RuntimeError, match="used by a key"):
            s[Nosy()]
        assert len(s) == 1
