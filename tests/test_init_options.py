"""The recurrent layers' initialisation options used by the memory experiment: chrono gate biases
(Tallec & Ollivier 2018), the identity recurrence of the IRNN (Le et al. 2015), the forget bias."""
from __future__ import annotations

import numpy as np
import pytest

from rnnlab.nn import GRU, LSTM, RNN
from rnnlab.nn.init import chrono_biases


def test_chrono_lstm_spreads_memory_lengths_over_one_to_t_max():
    H, t_max = 4000, 200.0
    lstm = LSTM(3, H, num_layers=2, init="chrono", chrono_tmax=t_max, rng=np.random.default_rng(0))
    for k in range(2):
        b = lstm.params[f"b_h_l{k}"].astype(np.float64)
        b_i, b_f, b_g, b_o = b[:H], b[H:2 * H], b[2 * H:3 * H], b[3 * H:]
        assert np.array_equal(b_i, -b_f)
        memory = np.exp(b_f) + 1  # ~ 1 / (1 - sigmoid(b_f)): steps a cell keeps its content
        assert memory.min() >= 2 and memory.max() <= t_max
        # e^{b_f} - 1 is uniform on [1, t_max - 1]: its quartiles sit where a uniform's do
        q = np.quantile(np.exp(b_f) - 1, [0.25, 0.5, 0.75])
        assert np.allclose(q, 1 + (t_max - 2) * np.array([0.25, 0.5, 0.75]), rtol=0.05)
        assert np.abs(b_g).max() <= 1 / np.sqrt(H) and np.abs(b_o).max() <= 1 / np.sqrt(H)  # left as they were
    # no forget gate starts below 1/2 (a memory of 2 steps); the median one keeps 99% per step
    f = 1 / (1 + np.exp(-lstm.params["b_h_l0"][H:2 * H].astype(np.float64)))
    assert f.min() >= 0.5 and np.median(f) > 0.99


def test_chrono_gru_opens_the_update_gate_to_keep_the_state():
    H = 500
    g = GRU(2, H, init="chrono", chrono_tmax=50.0, rng=np.random.default_rng(1))
    b_z = g.params["b_h_l0"][H:2 * H].astype(np.float64)
    assert np.all((np.exp(b_z) >= 1 - 1e-6) & (np.exp(b_z) <= 49 + 1e-4))
    assert np.abs(g.params["b_h_l0"][:H]).max() <= 1 / np.sqrt(H)  # r untouched
    # same weights as the default initialisation from the same generator: only the biases change
    plain = GRU(2, H, rng=np.random.default_rng(1))
    assert np.array_equal(plain.params["W_hh_l0"], g.params["W_hh_l0"])


def test_identity_recurrence_is_the_irnn():
    r = RNN(3, 6, nonlinearity="relu", recurrent_init="identity", rng=np.random.default_rng(2))
    assert np.array_equal(r.params["W_hh_l0"], np.eye(6, dtype=np.float32))
    assert not r.params["b_h_l0"].any()
    # with zero input the state is carried unchanged, step after step
    h0 = np.abs(np.random.default_rng(3).standard_normal((1, 2, 6))).astype(np.float32)
    y, h_n, _ = r.forward(np.zeros((50, 2, 3), np.float32), h0)
    assert np.array_equal(h_n, h0) and np.array_equal(y[-1], h0[0])


def test_forget_bias_and_bad_combinations():
    lstm = LSTM(2, 5, forget_bias=1.0, rng=np.random.default_rng(4))
    assert np.all(lstm.params["b_h_l0"][5:10] == 1.0)
    with pytest.raises(ValueError, match="chrono"):
        RNN(2, 5, init="chrono", chrono_tmax=10.0)
    with pytest.raises(ValueError, match="chrono_tmax"):
        LSTM(2, 5, init="chrono")
    with pytest.raises(ValueError, match="biases"):
        LSTM(2, 5, init="chrono", chrono_tmax=10.0, bias=False)
    with pytest.raises(ValueError, match="recurrent_init"):
        RNN(2, 5, recurrent_init="eye")
    with pytest.raises(ValueError, match="chrono"):
        chrono_biases(np.random.default_rng(0), np.zeros(5, np.float32), 5, "rnn", 10.0)
