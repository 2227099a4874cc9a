"""Backend selection on a machine without a GPU: NumPy by default, a clear error for cuda."""
import importlib.util
import subprocess
import sys
import types

import numpy as np
import pytest

from rnnlab import RnnlabError, backend
from rnnlab.cli import main


@pytest.fixture(autouse=True)
def _cpu_afterwards():
    """Every test leaves the CPU backend selected, whatever it did or however it failed."""
    yield
    backend.set_backend("cpu")


def test_cpu_is_the_default_and_arrays_are_numpy():
    assert backend.xp is np and backend.device == "cpu"
    assert backend.array_module(np.zeros(2)) is np and backend.array_module() is np
    a = np.arange(6.0).reshape(2, 3)
    assert backend.to_numpy(a) is a  # on the CPU the array itself, no copy
    listed = backend.to_numpy([[1, 2], [3, 4]])
    assert isinstance(listed, np.ndarray) and listed.tolist() == [[1, 2], [3, 4]]
    moved = backend.asarray([1, 2], dtype=np.float32)
    assert type(moved) is np.ndarray and moved.dtype == np.float32 and moved.tolist() == [1.0, 2.0]
    for value in (np.float32(2.5), np.array(2.5, np.float64), np.array(2.5, np.float16)):
        got = backend.to_float(value)
        assert type(got) is float and got == 2.5


class _FakeCupy(types.ModuleType):
    """The parts of CuPy that backend.py touches: ``ndarray`` (with ``get()`` copying to the
    host) and ``cuda.runtime.getDeviceCount``."""

    def __init__(self, count):
        super().__init__("cupy")
        outer = self

        class ndarray:
            def __init__(self, host):
                self.host = np.asarray(host)

            def get(self):
                outer.copies += 1
                return self.host.copy()

        def device_count():
            if isinstance(count, Exception):
                raise count
            return count

        self.ndarray, self.copies = ndarray, 0
        self.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=device_count))


def test_device_arrays_are_recognised_and_copied_to_the_host(monkeypatch):
    fake = _FakeCupy(1)
    assert backend.array_module(np.zeros(1), fake.ndarray([1])) is np  # CuPy not imported: never consulted
    monkeypatch.setitem(sys.modules, "cupy", fake)
    dev = fake.ndarray([1.5, 2.5])
    assert backend.array_module(np.zeros(1), dev) is fake
    assert backend.array_module(np.zeros(1), [1.0]) is np
    host = backend.to_numpy(dev)
    assert type(host) is np.ndarray and host.tolist() == [1.5, 2.5] and fake.copies == 1
    assert backend.to_float(fake.ndarray(np.array(4.0))) == 4.0 and fake.copies == 2


@pytest.mark.parametrize("count,match", [(0, "found no GPU"), (RuntimeError("driver too old"), "no usable GPU.*driver too old")])
def test_cuda_without_a_gpu_is_a_user_error(monkeypatch, count, match):
    monkeypatch.setitem(sys.modules, "cupy", _FakeCupy(count))
    with pytest.raises(RnnlabError, match=match):
        backend.set_backend("cuda")
    assert backend.xp is np and backend.device == "cpu"


def test_cuda_with_a_gpu_selects_cupy_and_cpu_switches_back(monkeypatch):
    fake = _FakeCupy(2)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    backend.set_backend("cuda")
    assert backend.xp is fake and backend.device == "cuda"
    backend.set_backend("cpu")
    assert backend.xp is np and backend.device == "cpu"


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
