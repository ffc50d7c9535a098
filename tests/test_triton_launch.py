"""The triton backend's launcher: when it may skip Triton's argument binding (no GPU needed)."""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")
tb = pytest.importorskip("hilbertattn.backends.triton")


class _Compiled:
    function, packed_metadata = "function", "metadata"

    def __init__(self, log: list) -> None:
        self.log = log

    def run(self, *args) -> None:
        self.log.append(("direct", args))


class _Jitted(triton.JITFunction):
    """A stand-in for a jitted kernel ``(X, n, scale, BLOCK: constexpr)``."""

    def __init__(self, log: list) -> None:  # noqa: D107 - no JITFunction state needed
        self.log = log
        self.arg_names = ["X", "n", "scale", "BLOCK"]

    def __getitem__(self, grid):
        def launch(*args, **constexprs):
            self.log.append(("triton", grid, args, constexprs))
            return _Compiled(self.log)

        return launch


@pytest.fixture
def launch(monkeypatch):
    log: list = []
    monkeypatch.setattr(tb._k, "_stand_in", _Jitted(log), raising=False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(tb, "_current_stream", lambda device: 7)
    launcher = tb._Launcher("_stand_in")

    def call(*args, **constexprs):
        del log[:]
        launcher(3, *args, **constexprs)
        return log[0]

    return call


def test_same_key_launches_the_compiled_kernel_directly(launch):
    x = torch.zeros(64)
    assert launch(x, 5, 0.5, BLOCK=16, num_warps=4)[0] == "triton"
    how, args = launch(torch.ones(64), 5, 0.5, BLOCK=16, num_warps=4)
    assert how == "direct"  # another tensor of the same dtype and alignment
    assert args[:4] == (3, 1, 1, 7) and args[-3:-1] == (5, 0.5) and args[-1] == 16
    assert torch.equal(args[-4], torch.ones(64))


@pytest.mark.parametrize("change", ["int", "float", "dtype", "alignment", "constexpr", "option"])
def test_any_specialized_change_goes_through_triton(launch, change):
    x = torch.zeros(64)
    launch(x, 16, 0.5, BLOCK=16, num_warps=4)
    args, constexprs = [x, 16, 0.5], dict(BLOCK=16, num_warps=4)
    if change == "int":
        args[1] = 17  # 16 is divisible by 16, 17 is not: Triton specializes on that
    elif change == "float":
        args[2] = 0.25  # not specialized by Triton, but keyed by value here
    elif change == "dtype":
        args[0] = x.half()
    elif change == "alignment":
        args[0] = x[1:]  # 4 bytes off the 16-byte alignment
    elif change == "constexpr":
        constexprs["BLOCK"] = 32
    else:
        constexprs["num_warps"] = 8
    assert launch(*args, **constexprs)[0] == "triton"
    assert launch(*args, **constexprs)[0] == "direct"  # and is then keyed too


def test_descriptors_and_launch_hooks_go_through_triton(launch):
    x = torch.zeros(64)
    launch(x, 5, 0.5, BLOCK=16, TMA=True)
    assert launch(x, 5, 0.5, BLOCK=16, TMA=True)[0] == "triton"
    launch(x, 5, 0.5, BLOCK=16, TMA=False)
    hook = triton.knobs.runtime.launch_enter_hook

    def record(metadata):
        pass

    hook.add(record)
    try:
        assert launch(x, 5, 0.5, BLOCK=16, TMA=False)[0] == "triton"
    finally:
        hook.remove(record)
    assert launch(x, 5, 0.5, BLOCK=16, TMA=False)[0] == "direct"
