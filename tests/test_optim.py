"""Optimizers, clipping and schedules against torch.optim / torch.nn.utils in float64.

Each trajectory test runs rnnlab and torch side by side on the same closed-loop problem: the
gradient of every parameter is a fixed quadratic pull towards a target plus a fixed per-step
noise term, computed (by the same NumPy function) from each side's own current parameters.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rnnlab import optim  # noqa: E402
from rnnlab.errors import RnnlabError  # noqa: E402
from rnnlab.nn.module import Module  # noqa: E402

SHAPES = {"rnn.W_hh_l0": (4, 4), "rnn.b_h_l0": (4,), "head.W": (3, 4)}
STEPS = 20
REL_TOL = 1e-10


def _problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    init = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    target = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    curvature = {k: rng.uniform(0.2, 2.0, size=s) for k, s in SHAPES.items()}
    noise = [{k: 0.5 * rng.normal(size=s) for k, s in SHAPES.items()} for _ in range(2 * STEPS)]
    return init, target, curvature, noise


INIT, TARGET, CURVATURE, NOISE = _problem()


def gradient(params: dict, t: int) -> dict:
    """d/dθ of ½ Σ c (θ - target)² plus the step-t noise (t counts from 0)."""
    return {k: CURVATURE[k] * (np.asarray(p) - TARGET[k]) + NOISE[t][k] for k, p in params.items()}


def fresh_params(dtype=np.float64):
    params = {k: v.astype(dtype, copy=True) for k, v in INIT.items()}
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    return params, grads


def rel_diff(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


TORCH_CLASSES = {
    "sgd": lambda: torch.optim.SGD,
    "adagrad": lambda: torch.optim.Adagrad,
    "rmsprop": lambda: torch.optim.RMSprop,
    "adam": lambda: torch.optim.Adam,
    "adamw": lambda: torch.optim.AdamW,
}

CONFIGS = [
    ("sgd", dict(lr=0.1)),
    ("sgd", dict(lr=0.05, momentum=0.9)),
    ("sgd", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("sgd", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.02)),
    ("adagrad", dict(lr=0.1)),
    ("adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=0.01, initial_accumulator_value=0.1, eps=1e-6)),
    ("rmsprop", dict(lr=0.01)),
    ("rmsprop", dict(lr=0.01, alpha=0.9, momentum=0.9)),
    ("rmsprop", dict(lr=0.01, centered=True, weight_decay=0.01)),
    ("rmsprop", dict(lr=0.005, alpha=0.95, eps=1e-6, momentum=0.5, centered=True)),
    ("rmsprop", dict(lr=0.01, alpha=0.3, centered=True)),  # lerp weight >= 0.5 branch
    ("adam", dict(lr=0.01)),
    ("adam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.05)),
    ("adam", dict(lr=0.01, amsgrad=True, eps=1e-6)),
    ("adamw", dict(lr=0.01)),
    ("adamw", dict(lr=0.01, weight_decay=0.1, amsgrad=True, betas=(0.5, 0.9))),  # lerp weight 0.5
]
CONFIG_IDS = [f"{n}-" + "-".join(f"{k}={v}" for k, v in kw.items()) for n, kw in CONFIGS]


def make_ours(name, kw, dtype=np.float64):
    params, grads = fresh_params(dtype)
    return optim.make_optimizer(name, params, grads, **kw)


def make_torch(name, kw):
    tparams = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in INIT.items()}
    topt = TORCH_CLASSES[name]()(list(tparams.values()), foreach=False, **kw)
    return tparams, topt


def max_norm_at(t: int) -> float:
    """Alternate between a bound that always clips and one that never does."""
    return 1.0 if t % 2 else 100.0


def our_step(opt, t, clip=None):
    """One training step: fresh gradients into opt.grads (in place), optional clipping, update."""
    for k, g in gradient(opt.params, t).items():
        opt.grads[k][...] = g
    norm = None
    if clip == "norm":
        norm = optim.clip_grad_norm(opt.grads, max_norm=max_norm_at(t))
    elif clip == "value":
        optim.clip_grad_value(opt.grads, 0.3)
    opt.step()
    return norm


def torch_step(tparams, topt, t, clip=None):
    grads = gradient({k: p.detach().numpy() for k, p in tparams.items()}, t)
    for k, p in tparams.items():
        p.grad = torch.tensor(grads[k])
    norm = None
    if clip == "norm":
        norm = float(torch.nn.utils.clip_grad_norm_(list(tparams.values()), max_norm=max_norm_at(t), foreach=False))
    elif clip == "value":
        torch.nn.utils.clip_grad_value_(list(tparams.values()), 0.3, foreach=False)
    topt.step()
    return norm


# -- trajectories against torch ------------------------------------------------------------------
@pytest.mark.parametrize("clip", [None, "norm", "value"])
@pytest.mark.parametrize("name,kw", CONFIGS, ids=CONFIG_IDS)
def test_trajectory_matches_torch(name, kw, clip):
    ours = make_ours(name, kw)
    tparams, topt = make_torch(name, kw)
    clipped = 0
    for t in range(STEPS):
        n_ours = our_step(ours, t, clip)
        n_torch = torch_step(tparams, topt, t, clip)
        if clip == "norm":
            assert n_ours == pytest.approx(n_torch, rel=1e-12)
            clipped += n_torch > max_norm_at(t)
        for k, p in ours.params.items():
            d = rel_diff(p, tparams[k].detach().numpy())
            assert d <= REL_TOL, f"step {t + 1}, {k}: relative difference {d:.3g}"
    assert ours.step_count == STEPS
    if clip == "norm":
        assert 0 < clipped < STEPS  # the test exercises both branches


@pytest.mark.parametrize("name,kw", [("adam", dict(lr=0.05)), ("adamw", dict(lr=0.05, weight_decay=0.1)),
                                      ("sgd", dict(lr=0.1, momentum=0.9))])
def test_trajectory_with_schedule_matches_torch(name, kw):
    ours = make_ours(name, kw)
    sched = optim.StepLR(ours, step_size=3, gamma=0.5)
    tparams, topt = make_torch(name, kw)
    tsched = torch.optim.lr_scheduler.StepLR(topt, step_size=3, gamma=0.5)
    for t in range(STEPS):
        our_step(ours, t)
        sched.step()
        torch_step(tparams, topt, t)
        tsched.step()
        assert ours.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-14)
        for k, p in ours.params.items():
            assert rel_diff(p, tparams[k].detach().numpy()) <= REL_TOL


# -- clipping -------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm_type", [1.0, 2.0, 3.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    grads = {k: g.copy() for k, g in gradient(INIT, 0).items()}
    tensors = [torch.tensor(g, requires_grad=False) for g in grads.values()]
    params = [torch.zeros_like(t, requires_grad=True) for t in tensors]
    for p, g in zip(params, tensors):
        p.grad = g.clone()
    total_t = float(torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type))
    before = {k: g.copy() for k, g in grads.items()}
    total = optim.clip_grad_norm(grads, max_norm, norm_type=norm_type)
    assert isinstance(total, float)
    assert total == pytest.approx(total_t, rel=1e-12)
    for (k, g), p in zip(grads.items(), params):
        assert rel_diff(g, p.grad.numpy()) <= 1e-12
    if max_norm > total:
        for k in grads:
            np.testing.assert_array_equal(grads[k], before[k])


def test_clip_grad_norm_reports_nonfinite_and_handles_empty():
    grads = {"a": np.array([1.0, np.nan]), "b": np.array([2.0])}
    assert math.isnan(optim.clip_grad_norm(grads, 1.0))
    grads = {"a": np.array([1.0, np.inf])}
    assert math.isinf(optim.clip_grad_norm(grads, 1.0))
    assert optim.clip_grad_norm({}, 1.0) == 0.0
    with pytest.raises(RnnlabError):
        optim.clip_grad_norm({"a": np.ones(2)}, 1.0, norm_type=0)


def test_clip_grad_value_in_place():
    g = np.array([-2.0, -0.1, 0.0, 0.4, 3.0])
    grads = {"a": g}
    optim.clip_grad_value(grads, 0.3)
    assert grads["a"] is g
    np.testing.assert_array_equal(g, [-0.3, -0.1, 0.0, 0.3, 0.3])


# -- in place, dtype, bookkeeping -------------------------------------------------------------------
@pytest.mark.parametrize("name", list(optim.OPTIMIZERS))
def test_updates_in_place_through_module(name):
    child = Module()
    child.add_param("W", np.ones((2, 3), dtype=np.float32))
    parent = Module()
    parent.add_child("rnn", child)
    opt = optim.make_optimizer(name, parent.params, parent.grads, lr=0.1)
    w = child.params["W"]
    child.grads["W"][...] = 0.5
    opt.step()
    assert parent.params["rnn.W"] is w and child.params["W"] is w
    assert w.dtype == np.float32
    assert np.all(w < 1.0)  # the child's own array moved
    for slot in opt.slots.values():
        assert slot["rnn.W"].dtype == np.float32
    np.testing.assert_array_equal(child.grads["W"], 0.5)  # gradients are not modified by step
    opt.zero_grad()
    assert not child.grads["W"].any()


def test_params_grads_must_match():
    with pytest.raises(ValueError):
        optim.SGD({"a": np.zeros(2)}, {"b": np.zeros(2)}, lr=0.1)
    with pytest.raises(ValueError):
        optim.SGD({"a": np.zeros(2)}, {"a": np.zeros(3)}, lr=0.1)


@pytest.mark.parametrize("cls,kw", [
    (optim.SGD, dict(lr=-1.0)),
    (optim.SGD, dict(lr=0.1, nesterov=True)),
    (optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, dampening=0.1)),
    (optim.Adam, dict(betas=(0.9, 1.0))),
    (optim.Adagrad, dict(eps=-1.0)),
    (optim.RMSprop, dict(momentum=-0.5)),
])
def test_invalid_hyperparameters(cls, kw):
    params, grads = fresh_params()
    with pytest.raises(RnnlabError):
        cls(params, grads, **kw)


def test_make_optimizer_presets_and_errors():
    params, grads = fresh_params()
    opt = optim.make_optimizer("momentum", params, grads, lr=0.1)
    assert isinstance(opt, optim.SGD) and opt.momentum == 0.9 and not opt.nesterov
    opt = optim.make_optimizer("Nesterov", params, grads, lr=0.1)
    assert opt.nesterov and opt.momentum == 0.9
    opt = optim.make_optimizer("adamw", params, grads)
    assert isinstance(opt, optim.AdamW) and opt.weight_decay == 1e-2
    assert optim.make_optimizer("adam", params, grads).weight_decay == 0.0
    with pytest.raises(RnnlabError, match="sgd, momentum, nesterov, adagrad, rmsprop, adam, adamw"):
        optim.make_optimizer("lion", params, grads)
    with pytest.raises(RnnlabError, match="betas"):
        optim.make_optimizer("sgd", params, grads, betas=(0.9, 0.99))


# -- schedules ------------------------------------------------------------------------------------------
def _torch_lrs(make_sched, steps=25, lr=0.1):
    p = torch.zeros(1, requires_grad=True)
    topt = torch.optim.SGD([p], lr=lr)
    sched = make_sched(topt)
    out = [topt.param_groups[0]["lr"]]
    for _ in range(steps):
        topt.step()
        sched.step()
        out.append(topt.param_groups[0]["lr"])
    return out


def _our_lrs(make_sched, steps=25, lr=0.1):
    params, grads = fresh_params()
    opt = optim.SGD(params, grads, lr=lr)
    sched = make_sched(opt)
    out = [opt.lr]
    for s in range(steps):
        lr_now = sched.step()
        assert lr_now == opt.lr == sched.lr_at(s + 1)
        out.append(opt.lr)
    return out


@pytest.mark.parametrize("ours,theirs", [
    (lambda o: optim.StepLR(o, step_size=4, gamma=0.5),
     lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=4, gamma=0.5)),
    (lambda o: optim.ExponentialLR(o, gamma=0.9),
     lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9)),
    (lambda o: optim.ConstantLR(o, factor=0.25, total_iters=3),
     lambda o: torch.optim.lr_scheduler.ConstantLR(o, factor=0.25, total_iters=3)),
    (lambda o: optim.make_schedule("step", o, step_size=3, gamma=0.1),
     lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.1)),
], ids=["step", "exponential", "constant-factor", "factory-step"])
def test_schedules_match_torch(ours, theirs):
    np.testing.assert_allclose(_our_lrs(ours), _torch_lrs(theirs), rtol=1e-12, atol=0)


def test_constant_schedule_default_is_constant():
    assert _our_lrs(lambda o: optim.make_schedule("constant", o), steps=5) == [0.1] * 6


def test_cosine_with_warmup_formula():
    params, grads = fresh_params()
    opt = optim.Adam(params, grads, lr=1e-3)
    sched = optim.CosineWithWarmup(opt, warmup_steps=10, total_steps=110, min_lr=1e-5)
    assert opt.lr == 0.0  # lr_at(0)
    assert sched.lr_at(5) == pytest.approx(0.5e-3, rel=1e-15)
    assert sched.lr_at(1) == pytest.approx(1e-4, rel=1e-15)
    assert sched.lr_at(10) == pytest.approx(1e-3, rel=1e-15)  # peak
    assert sched.lr_at(60) == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2, rel=1e-14)  # half way
    expected_85 = 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.75))
    assert sched.lr_at(85) == pytest.approx(expected_85, rel=1e-14)
    assert sched.lr_at(110) == pytest.approx(1e-5, rel=1e-14)  # end
    assert sched.lr_at(500) == pytest.approx(1e-5, rel=1e-14)  # stays there
    lrs = [sched.lr_at(s) for s in range(111)]
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:11]))  # warm-up rises
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then decays
    opt = optim.Adam(*fresh_params(), lr=1e-3)
    no_warmup = optim.make_schedule("cosine", opt, warmup_steps=0, total_steps=4)
    assert no_warmup.lr_at(0) == pytest.approx(1e-3) and no_warmup.lr_at(4) == 0.0


def test_schedule_state_round_trip_and_errors():
    params, grads = fresh_params()
    opt = optim.SGD(params, grads, lr=0.2)
    sched = optim.CosineWithWarmup(opt, warmup_steps=3, total_steps=20, min_lr=0.01)
    for _ in range(7):
        sched.step()
    state = json.loads(json.dumps(sched.state_dict()))
    opt2 = optim.SGD(*fresh_params(), lr=0.5)
    sched2 = optim.CosineWithWarmup(opt2, warmup_steps=1, total_steps=2)
    sched2.load_state_dict(state)
    assert opt2.lr == opt.lr and sched2.base_lr == 0.2
    assert [sched2.step() for _ in range(5)] == [sched.step() for _ in range(5)]
    with pytest.raises(RnnlabError):
        optim.StepLR(opt2, step_size=2).load_state_dict(state)
    with pytest.raises(RnnlabError, match="unknown schedule"):
        optim.make_schedule("linear", opt)
    with pytest.raises(RnnlabError, match="needs"):
        optim.make_schedule("step", opt)
    with pytest.raises(RnnlabError):
        optim.make_schedule("cosine", opt, warmup_steps=10, total_steps=5)


# -- state dicts ---------------------------------------------------------------------------------------
def _run(opt, start, stop):
    for t in range(start, stop):
        our_step(opt, t, clip="norm")


@pytest.mark.parametrize("name,kw", CONFIGS, ids=CONFIG_IDS)
def test_state_round_trip_is_bit_identical(name, kw):
    straight = make_ours(name, kw)
    _run(straight, 0, 20)

    first = make_ours(name, kw)
    _run(first, 0, 10)
    tensors, meta = optim.flatten_state(first.state_dict())
    meta = json.loads(json.dumps(meta))
    assert all(k.startswith("optim.") for k in tensors)
    state = optim.unflatten_state(tensors, meta)

    params = {k: v.copy() for k, v in first.params.items()}
    resumed = optim.make_optimizer(name, params, {k: np.zeros_like(v) for k, v in params.items()}, **kw)
    resumed.load_state_dict(state)
    assert resumed.step_count == 10
    _run(resumed, 10, 20)
    for k in straight.params:
        np.testing.assert_array_equal(resumed.params[k], straight.params[k])
    for slot in straight.slots:
        for k in straight.params:
            np.testing.assert_array_equal(resumed.slots[slot][k], straight.slots[slot][k])


def test_load_restores_hyperparameters_like_torch():
    kw = dict(lr=0.02, betas=(0.8, 0.95), amsgrad=True, weight_decay=0.01)
    straight = make_ours("adam", kw)
    _run(straight, 0, 20)
    first = make_ours("adam", kw)
    _run(first, 0, 10)
    resumed = optim.Adam(*fresh_params())  # defaults: no amsgrad, other betas
    for k, v in first.params.items():
        resumed.params[k][...] = v
    resumed.load_state_dict(first.state_dict())
    assert resumed.amsgrad and resumed.betas == (0.8, 0.95) and resumed.lr == 0.02
    _run(resumed, 10, 20)
    for k in straight.params:
        np.testing.assert_array_equal(resumed.params[k], straight.params[k])


def test_state_dict_content_and_copies():
    opt = make_ours("adam", dict(lr=0.01, amsgrad=True))
    _run(opt, 0, 3)
    state = opt.state_dict()
    assert state["type"] == "adam" and state["step"] == 3 and state["lr"] == 0.01
    assert state["betas"] == [0.9, 0.999] and state["amsgrad"] is True
    assert set(state["slots"]) == {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert set(state["slots"]["exp_avg"]) == set(SHAPES)
    saved = state["slots"]["exp_avg"]["head.W"]
    assert isinstance(saved, np.ndarray) and saved is not opt.slots["exp_avg"]["head.W"]
    before = saved.copy()
    opt.step()
    np.testing.assert_array_equal(saved, before)  # a copy, not a view
    _, meta = optim.flatten_state(state)
    json.dumps(meta)
    assert meta["slots"] == ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]


def test_load_state_dict_errors_leave_optimizer_unchanged():
    opt = make_ours("adam", dict(lr=0.01))
    _run(opt, 0, 2)
    good = opt.state_dict()

    target = make_ours("adam", dict(lr=0.03))
    with pytest.raises(RnnlabError, match="sgd"):
        target.load_state_dict({**good, "type": "sgd"})
    bad = {**good, "slots": {s: dict(a) for s, a in good["slots"].items()}}
    del bad["slots"]["exp_avg"]["head.W"]
    with pytest.raises(RnnlabError, match="missing"):
        target.load_state_dict(bad)
    bad["slots"]["exp_avg"]["head.W"] = np.zeros((4, 3))
    with pytest.raises(RnnlabError, match="shape"):
        target.load_state_dict(bad)
    bad["slots"]["exp_avg"]["head.W"] = np.zeros((3, 4))
    bad["slots"]["exp_avg"]["extra"] = np.zeros(2)
    with pytest.raises(RnnlabError, match="unexpected"):
        target.load_state_dict(bad)
    with pytest.raises(RnnlabError, match="slots"):
        target.load_state_dict({**good, "amsgrad": True})  # needs a max_exp_avg_sq slot
    with pytest.raises(RnnlabError, match="lacks"):
        target.load_state_dict({k: v for k, v in good.items() if k != "eps"})
    assert target.lr == 0.03 and target.step_count == 0 and not target.amsgrad
    assert not any(a.any() for s in target.slots.values() for a in s.values())
    tensors, meta = optim.flatten_state(good)
    with pytest.raises(RnnlabError, match="not a slot"):
        optim.unflatten_state({**tensors, "optim.bogus.head.W": np.zeros((3, 4))}, meta)


def test_flatten_state_through_safetensors(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    opt = make_ours("rmsprop", dict(lr=0.01, momentum=0.9, centered=True))
    _run(opt, 0, 5)
    tensors, meta = optim.flatten_state(opt.state_dict())
    model = {f"model.{k}": v for k, v in opt.params.items()}
    path = tmp_path / "ckpt.safetensors"
    st.save_file({**model, **tensors}, str(path), metadata={"optim": json.dumps(meta)})
    from safetensors import safe_open
    with safe_open(str(path), framework="np") as f:
        loaded_meta = json.loads(f.metadata()["optim"])
    loaded = st.load_file(str(path))
    state = optim.unflatten_state(loaded, loaded_meta)  # ignores the model.* tensors
    assert "optim.grad_avg.rnn.W_hh_l0" in tensors
    resumed = make_ours("rmsprop", dict(lr=0.5))
    for k, v in opt.params.items():
        resumed.params[k][...] = v
    resumed.load_state_dict(state)
    _run(opt, 5, 8)
    _run(resumed, 5, 8)
    for k in opt.params:
        np.testing.assert_array_equal(resumed.params[k], opt.params[k])
