"""Backend selection on a machine without a GPU: NumPy by default, a clear error for cuda."""
import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from rnnlab import RnnlabError, backend
from rnnlab.cli import main


def test_cpu_is_the_default_and_arrays_are_numpy():
    assert backend.xp is np and backend.device == "cpu"
    assert backend.array_module(np.zeros(2)) is np
    assert backend.to_numpy(np.arange(3)) is not None
    assert backend.to_float(np.float32(2.5)) == 2.5


def test_unknown_device_is_a_user_error():
    with pytest.raises(RnnlabError, match="unknown device"):
        backend.set_backend("tpu")
    assert backend.xp is np


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here; the error path needs it absent")
def test_cuda_without_cupy_names_what_is_missing():
    with pytest.raises(RnnlabError, match=r"CuPy.*rnnlab\[gpu\]"):
        backend.set_backend("cuda")
    assert backend.xp is np and backend.device == "cpu"


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
def test_train_on_cuda_without_cupy_is_one_line_exit_2(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("hello world " * 200)
    code = main(["train", str(text), "--out", str(tmp_path / "run"), "--device", "cuda", "--max-steps", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("rnnlab: ") and err.count("\n") == 1 and "CuPy" in err
    assert not (tmp_path / "run" / "config.json").exists()


def test_import_rnnlab_does_not_import_torch_cupy_numba_or_matplotlib():
    code = ("import sys, rnnlab, rnnlab.nn, rnnlab.optim, rnnlab.models; "
            "bad = [m for m in ('torch', 'cupy', 'numba', 'matplotlib') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
