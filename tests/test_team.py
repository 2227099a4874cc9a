"""The packed per-step GEMM (rnnlab.nn.packed), the spin barrier (rnnlab.nn.spin) and the loops
over time split over a team of threads by hidden units (rnnlab.nn.team, timeloop.settings).

What the parallel plans rely on: the packed GEMM is a GEMM (against NumPy), its every element is
summed the same way whichever panel computes it, so a team of any size gives the bits of one
thread; a failing member stops the others instead of leaving them waiting.
"""
from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest

pytest.importorskip("numba")

from numba import njit  # noqa: E402

from rnnlab.nn import cells, packed, spin, team, timeloop  # noqa: E402
from rnnlab.nn.recurrent import GRU, LSTM, RNN  # noqa: E402
from layer_outputs import layer_outputs  # noqa: E402

pytestmark = pytest.mark.skipif(not cells.numba_enabled(), reason="the numba kernels are off (RNNLAB_NO_NUMBA)")


@pytest.fixture(autouse=True)
def _keep_layout():
    """Tests that put another layout in force leave the module's as they found it."""
    before = packed.layout()
    yield
    packed.set_layout(before)


def _packed_product(a, W, transpose, segments, tile=0):
    """``a @ W^T`` (``transpose``) or ``a @ W`` by the packed GEMM with the tile ``packed.TILES[tile]``,
    panels cut from ``segments`` (each column outside every segment stays NaN)."""
    nr = packed.panel_width(a.dtype, tile)
    pcol, pw = packed.panels(segments, nr)
    K = W.shape[1] if transpose else W.shape[0]
    N = W.shape[0] if transpose else W.shape[1]
    P = np.empty((len(pcol), K, nr), a.dtype)
    packed.pack(W, transpose, pcol, pw, P, 0, len(pcol))
    c = np.full((a.shape[0], N), np.nan, a.dtype)
    packed.gemm(a, P, pcol, pw, c, 0, len(pcol), tile)
    return c


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M, K, N", [(1, 1, 1), (5, 3, 7), (7, 33, 129), (13, 64, 70), (32, 40, 160), (17, 520, 50)])
@pytest.mark.parametrize("transpose", [True, False])
def test_packed_gemm_is_a_gemm_with_either_tile_and_the_same_bits(dtype, M, K, N, transpose):
    rng = np.random.default_rng(M * 1000 + K * 10 + N)
    a = rng.standard_normal((M, K)).astype(dtype)
    W = rng.standard_normal((N, K) if transpose else (K, N)).astype(dtype)
    want = a.astype(np.float64) @ (W.T if transpose else W).astype(np.float64)
    got = _packed_product(a, W, transpose, [(0, N)])
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.sqrt(K))
    assert len(packed.TILES) == 2 and packed.panel_width(dtype, 0) != packed.panel_width(dtype, 1)
    np.testing.assert_array_equal(_packed_product(a, W, transpose, [(0, N)], tile=1), got)


def test_packed_gemm_on_strided_rows_and_column_blocks():
    """``a`` and ``c`` may be views with a row stride of their own; only the panels' columns are written."""
    rng = np.random.default_rng(3)
    base = rng.standard_normal((9, 50)).astype(np.float32)
    a = base[1:8, 5:45]  # (7, 40), row stride 50
    W = rng.standard_normal((40, 90)).astype(np.float32)
    got = _packed_product(a, W, False, [(10, 30), (60, 90)])
    want = a @ W
    np.testing.assert_allclose(got[:, 10:30], want[:, 10:30], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[:, 60:90], want[:, 60:90], rtol=1e-5, atol=1e-5)
    assert np.isnan(got[:, :10]).all() and np.isnan(got[:, 30:60]).all()


def test_each_element_has_the_same_bits_whatever_the_panels_and_rows():
    """The property a team relies on: cutting the columns into other panels, or the rows into
    other blocks, does not change a single bit."""
    rng = np.random.default_rng(4)
    a = rng.standard_normal((29, 77)).astype(np.float32)
    W = rng.standard_normal((150, 77)).astype(np.float32)
    whole = _packed_product(a, W, True, [(0, 150)])
    cut = _packed_product(a, W, True, [(0, 13), (13, 64), (64, 65), (65, 150)])
    np.testing.assert_array_equal(whole, cut)
    rows = np.concatenate([_packed_product(a[i:i + 5], W, True, [(0, 150)]) for i in range(0, 29, 5)])
    np.testing.assert_array_equal(whole, rows)


def test_the_blocks_of_k_change_no_bit():
    """Each element's sum is one chain over ``k`` (a block of ``k`` stores its partial sum in ``c``,
    the next block continues it, and ``add`` starts it from ``c``), so the block sizes
    (``kc`` of the per-step products and of the whole ones) change no bit."""
    rng = np.random.default_rng(11)
    M, K, N = 29, 600, 70
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    base = rng.standard_normal((M, N)).astype(np.float32)
    at = np.ascontiguousarray(a.T)  # a strided along k, its rows copied from the runs of at's rows
    tiles = {}  # tile -> (P, pcol, pw): b's panels for that tile
    for t in packed.LAYOUTS.values():
        nr_t = packed.panel_width(np.float32, t)
        pcol_t, pw_t = packed.panels([(0, N)], nr_t)
        tiles[t] = (np.empty((len(pcol_t), K, nr_t), np.float32), pcol_t, pw_t)
        packed.pack(b, False, pcol_t, pw_t, tiles[t][0], 0, len(pcol_t))
    P, pcol, pw = tiles[0]
    for add in (False, True):
        results, parts = [], []
        for kc in (packed.KC, 7, 64, 1024):  # 1024 > K: one block
            results.append(base.copy())
            packed.gemm(a, P, pcol, pw, results[-1], 0, len(pcol), 0, add, kc)
            for copy_a in (False, True):
                results.append(base.copy())
                packed._rows(a, P, pcol, pw, results[-1], 0, M, add, copy_a, 0, kc, np.empty((0, 0), np.float32))
            results.append(base.copy())
            packed._rows(at.T, P, pcol, pw, results[-1], 0, M, add, True, 0, kc, at)
            for t, (Pt, pcol_t, pw_t) in tiles.items():  # a team member's rows, from r0 on, either tile
                r0 = 2 * packed._MR[t]
                parts.append((r0, base.copy()))
                packed._rows(at.T, Pt, pcol_t, pw_t, parts[-1][1], r0, M, add, True, t, kc, at)
        for r in results[1:]:
            np.testing.assert_array_equal(r, results[0])
        for r0, part in parts:
            np.testing.assert_array_equal(part[r0:], results[0][r0:])
        np.testing.assert_allclose(results[0], (base if add else 0) + a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("transposed", [False, True])
def test_whole_matrix_products_split_by_rows_keep_their_bits(transposed):
    """``packed.matmul``: ``out (+)= a @ b`` for a row-major or transposed ``a`` and ``b`` given
    either way; a team of 2 or 3 gives the bits of one thread."""
    rng = np.random.default_rng(5)
    M, K, N = 77, 600, 70  # K over several blocks of k (packed.KC, packed.KC_ROWS), rows and columns over whole tiles
    a = rng.standard_normal((K, M)).astype(np.float32).T if transposed else \
        rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((N, K)).astype(np.float32).T  # the transpose of a C-ordered array
    base = rng.standard_normal((M, N)).astype(np.float32)
    one = packed.matmul(a, b, np.empty((M, N), np.float32))
    np.testing.assert_allclose(one, a.astype(np.float64) @ b.astype(np.float64), rtol=1e-4, atol=1e-4)
    added = packed.matmul(a, np.ascontiguousarray(b), base.copy(), add=True)
    np.testing.assert_allclose(added, base + one, rtol=1e-5, atol=1e-4)
    for size in (2, 3):
        np.testing.assert_array_equal(packed.matmul(a, b, np.empty((M, N), np.float32), team=size), one)
        np.testing.assert_array_equal(packed.matmul(a, b, base.copy(), add=True, team=size), added)
    with pytest.raises(ValueError, match="packed.matmul"):
        packed.matmul(a, b[:-1], np.empty((M, N), np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_tile_and_schedule_gives_the_same_bits(dtype, monkeypatch):
    """The whole products under every schedule (:func:`packed.candidates`: either tile, ``b`` read
    in place or packed, loop order, block of ``k``, the strips of a transposed ``a`` copied or not),
    whatever the layout in force: a C-ordered ``b`` whose columns fill whole
    vectors is read where it is, or packed first; another ``b`` is packed always; every element
    gets the same bits in all."""
    rng = np.random.default_rng(7)
    M, K, N = packed.MC * 8 + 29, 600, 5 * packed.lanes(dtype)  # two row blocks and two k-blocks, the last
    # of each partial, and a partial row tile; the last panel narrower than NR, for either tile
    a = rng.standard_normal((K, M)).astype(dtype).T  # strided along k, like dA^T
    b = rng.standard_normal((K, N)).astype(dtype)
    strided = np.empty((K, N + 1), dtype)[:, :N]  # the same values, not C-ordered: packed always
    strided[:] = b
    base = rng.standard_normal((M, N)).astype(dtype)
    packs = []
    real_pack = packed.pack
    monkeypatch.setattr(packed, "pack", lambda *args: packs.append(args[0].shape) or real_pack(*args))
    schedules = packed.candidates(True, True)
    assert len(schedules) == 24 and len(packed.candidates(False, True)) == 16
    assert {s[0] for s in schedules} == set(packed.LAYOUTS.values())
    assert packed.candidates(True, False) == [s for s in schedules if not s[1]]
    for add in (False, True):
        want = (base if add else 0) + a.astype(np.float64) @ b.astype(np.float64)
        results = []
        for name, sched in itertools.product(packed.LAYOUTS, schedules):
            packed.set_layout(name)  # restored by _keep_layout
            monkeypatch.setattr(packed, "SCHEDULE", sched)
            results.append(packed.matmul(a, b, base.copy(), add))
            assert packs == ([] if sched[1] else [(K, N)])
            packs.clear()
            results.append(packed.matmul(a, strided, base.copy(), add))
            assert packs.pop() == (K, N)
        for r in results[1:]:
            np.testing.assert_array_equal(r, results[0])
        np.testing.assert_allclose(results[0], want, rtol=1e-4, atol=1e-4 if dtype == np.float32 else 1e-10)


@pytest.mark.parametrize("add", [False, True])
def test_each_shape_runs_the_schedule_timed_fastest_on_its_first_product(add, monkeypatch):
    """On a shape's first product every candidate schedule runs once and those within
    :data:`packed.TUNE_CLOSE` of the fastest until :data:`packed.TUNE_ROUNDS` runs (``out``
    restored before each when adding, so the result is one product); the one with the best time
    is kept for that shape and is the only one its later products run; another shape (or team)
    is timed on its own, and the layout in force changes nothing (the tile is in the schedule)."""
    monkeypatch.setattr(packed, "_CHOSEN", {})
    ran, clock = [], [0.0]
    fast, close = (0, False, "panels", packed.KC_ROWS, False), (1, True, "rows", packed.KC, True)
    real = dict(packed.SCHEDULES)
    for order, fn in real.items():
        def timed(*args, order=order, fn=fn):
            sched = (args[-3], args[1] is b, order, args[-2], args[-4] and order == "rows")
            ran.append(sched)
            clock[0] += 1.0 if sched == fast else 1.1 if sched == close else 2.0
            fn(*args)
        monkeypatch.setitem(packed.SCHEDULES, order, timed)
    monkeypatch.setattr(packed.time, "perf_counter", lambda: clock[0])
    rng = np.random.default_rng(8)
    a = rng.standard_normal((300, 40)).astype(np.float32).T
    b = rng.standard_normal((300, 2 * packed.lanes(np.float32))).astype(np.float32)
    base = rng.standard_normal((40, b.shape[1])).astype(np.float32)
    want = (base if add else 0) + a.astype(np.float64) @ b
    got = packed.matmul(a, b, base.copy(), add)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    cands = packed.candidates(True, True)
    assert sorted(ran) == sorted(cands + [fast, close] * (packed.TUNE_ROUNDS - 1))
    k = packed.key(a, b)
    assert k == (64, 512, b.shape[1], True, True, "<f4", 1)  # M, K rounded up to powers of two
    assert packed.schedule(k) == fast and packed.chosen() == {k: fast}
    ran.clear()
    np.testing.assert_array_equal(packed.matmul(a, b, base.copy(), add), got)
    assert ran == [fast]
    packed.matmul(a[:33, 1:], b[1:], base[:33].copy(), add)  # 33 x 299 x N: the same powers of two
    assert len(ran) == 2 and len(packed.chosen()) == 1
    packed.set_layout(next(n for n, t in packed.LAYOUTS.items() if t != packed.TILE))  # restored by _keep_layout
    packed.matmul(a, b, base.copy(), add)
    assert len(ran) == 3 and len(packed.chosen()) == 1
    packed.matmul(np.ascontiguousarray(a), b, base.copy(), add)  # another shape: a row-major a
    assert len(ran) == 3 + 16 + (packed.TUNE_ROUNDS - 1) and len(packed.chosen()) == 2  # the others 2x slower


def test_the_layers_products_follow_the_loop_settings(monkeypatch):
    """``cells.matmul`` runs the packed kernel under packed settings and NumPy's GEMM otherwise
    (mixed dtypes always NumPy's)."""
    calls = []
    real = packed.matmul
    monkeypatch.setattr(packed, "matmul", lambda *a, **k: calls.append(a[4] if len(a) > 4 else 1) or real(*a, **k))
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((9, 5)).astype(np.float32), rng.standard_normal((5, 4)).astype(np.float32)
    out = np.empty((9, 4), np.float32)
    cells.matmul(np, a, b, out)
    assert calls == []
    with timeloop.settings("packed", 2):
        cells.matmul(np, a, b, out, add=True)
        cells.matmul(np, a.astype(np.float64), b, np.empty((9, 4)))
    assert calls == [2]


@pytest.mark.parametrize("H, n, q", [(128, 2, 16), (40, 2, 16), (40, 3, 16), (5, 4, 8), (1, 2, 8), (100, 3, 8)])
def test_unit_bounds_cover_every_unit_once(H, n, q):
    b = team.unit_bounds(H, n, q)
    assert b[0] == 0 and b[-1] == H and len(b) - 1 <= n
    assert all(lo < hi for lo, hi in zip(b[:-1], b[1:]))  # no empty member
    if H >= n * q:
        assert all(x % q == 0 for x in b[1:-1]) and len(b) - 1 == n


@njit(nogil=True)
def _count_together(sync, me, team_size, steps, seen):
    """Each member writes its step into ``seen[me]`` and, after the barrier, checks that every
    other member has written that step too; returns the number of violations."""
    bad = 0
    for s in range(1, steps + 1):
        seen[me] = s
        if not spin.arrive_and_wait(sync, me, team_size, s):
            return -1
        for q in range(team_size):
            if seen[q] < s:
                bad += 1
    return bad


@pytest.mark.parametrize("size", [2, 3])
def test_the_barrier_lets_no_member_past_a_step_before_all_finish_it(size):
    sync, seen = spin.new_sync(size), np.zeros(size, np.int64)
    _count_together(sync, 0, 1, 1, seen)  # compile before the threads start
    out = [None] * size

    def member(p):
        out[p] = _count_together(sync, p, size, 2000, seen)

    threads = [threading.Thread(target=member, args=(p,)) for p in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert out == [0] * size


def _run(layer_cls, dtype, gemm, size, *, bidir=False, lengths=None, bias=True, kw=None):
    """Forward and backward of a 2-layer stack under ``timeloop.settings(gemm, size)``."""
    rng = np.random.default_rng(1)
    layer = layer_cls(5, 40, num_layers=2, bidirectional=bidir, bias=bias, dtype=dtype,
                      rng=np.random.default_rng(0), **(kw or {}))
    T, B, LD = 7, 6, 2 * (2 if bidir else 1)
    x = rng.standard_normal((T, B, 5)).astype(dtype)
    h0 = rng.standard_normal((LD, B, 40)).astype(dtype)
    state = (h0, rng.standard_normal((LD, B, 40)).astype(dtype)) if layer_cls is LSTM else h0
    with timeloop.settings(gemm, size):
        y, state_n, cache = layer.forward(x, state, lengths=lengths)
        y = y.copy()
        dx, dstate0 = layer.backward(rng.standard_normal(y.shape).astype(dtype), None, cache)
    return layer_outputs(layer, y, dx, state_n, dstate0, cache)


CASES = [(RNN, {}), (RNN, {"nonlinearity": "relu"}), (LSTM, {}), (GRU, {})]


@pytest.mark.parametrize("layer_cls, kw", CASES, ids=["rnn", "rnn-relu", "lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bidir, lengths, bias", [(False, None, True), (True, np.array([7, 3, 0, 5, 7, 1]), True),
                                                  (False, np.array([2, 7, 7, 1, 4, 6]), False)])
def test_a_team_gives_the_bits_of_one_thread_and_the_blas_loop_to_rounding(layer_cls, kw, dtype, bidir, lengths,
                                                                           bias):
    args = dict(bidir=bidir, lengths=lengths, bias=bias, kw=kw)
    one = _run(layer_cls, dtype, "packed", 1, **args)
    for tile in range(len(packed.TILES)):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(packed, "TILE", tile)
            for size in (1, 2, 3) if tile else (2, 3):
                split = _run(layer_cls, dtype, "packed", size, **args)
                for name in one:
                    np.testing.assert_array_equal(split[name], one[name], err_msg=f"tile {tile}, team of {size}: {name}")
    if timeloop.loops_for(dtype) is not None:  # NumPy's OpenBLAS is there: the BLAS engine to rounding
        ref = _run(layer_cls, dtype, "blas", 1, **args)
        tol = 2e-5 if dtype == np.float32 else 1e-12
        for name in one:
            np.testing.assert_allclose(one[name], ref[name], rtol=tol, atol=tol, err_msg=name)


def test_the_packed_engine_runs_without_numpys_openblas(monkeypatch):
    from rnnlab.nn import blas

    monkeypatch.setattr(blas, "gemm_address", lambda dtype: None)
    monkeypatch.setattr(timeloop, "_LOOPS", {})
    assert timeloop.loops_for(np.float32) is None  # the BLAS engine: the Python loop runs
    with timeloop.settings("packed", 2):
        assert timeloop.loops_for(np.float32) is not None
    out = _run(LSTM, np.float32, "packed", 2)
    assert all(np.isfinite(v).all() for v in out.values())


def test_a_failing_member_stops_the_team_instead_of_hanging():
    """A member that raises sets the abort flag: the others stop waiting and the error reaches the
    caller (here the GEMM operands do not fit, which every member notices at its first step)."""
    loops = None
    T, B, H = 5, 4, 32
    A = np.zeros((T, B, 4 * H), np.float32)
    S, C = np.zeros((T + 1, B, H), np.float32), np.zeros((T + 1, B, H), np.float32)
    TC, tmp = np.zeros((T, B, H), np.float32), np.zeros((B, 4 * H), np.float32)
    errors = []

    def call():
        try:
            with timeloop.settings("packed", 2):
                timeloop.loops_for(np.float32).lstm_forward(A, S, C, TC, np.zeros((4 * H + 4, H + 1), np.float32),
                                                            None, None, False, tmp)
        except ValueError as e:
            errors.append(e)

    t = threading.Thread(target=call)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive() and loops is None
    assert errors and "mismatched" in str(errors[0])


def test_settings_are_per_thread_and_checked():
    with pytest.raises(ValueError):
        with timeloop.settings("fast", 1):
            pass
    seen = {}
    with timeloop.settings("packed", 3):
        t = threading.Thread(target=lambda: seen.setdefault("other", timeloop.current()))
        t.start()
        t.join()
        seen["here"] = timeloop.current()
    assert seen == {"here": ("packed", 3), "other": ("blas", 1)} and timeloop.current() == ("blas", 1)
