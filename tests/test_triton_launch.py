"""The triton backend's prepared passes: when a call may skip Triton's argument binding, and
what makes a pass of its own (no GPU needed)."""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")
tb = pytest.importorskip("hilbertattn.backends.triton")

from hilbertattn.patterns import Window  # noqa: E402


class _Compiled:
    function, packed_metadata = "function", "metadata"

    def __init__(self, log: list) -> None:
        self.log = log

    def run(self, *args) -> None:
        self.log.append(("direct", args))


class _Jitted(triton.JITFunction):
    """A stand-in for a jitted kernel ``(X, O, T, n, R, bias..., scale, constexprs...)``."""

    def __init__(self, log: list) -> None:  # noqa: D107 - no JITFunction state needed
        self.log = log
        self.arg_names = ["X", "O", "T", "n", "BV", "BC", "b0", "b1", "b2", "b3", "b4", "b5",
                          "b6", "scale", "BLOCK", "BLOCK_D", "BIAS_AXES", "BIAS_TILES", "TMA"]

    def __getitem__(self, grid):
        def launch(*args, **constexprs):
            self.log.append(("triton", grid, args, constexprs))
            return _Compiled(self.log)

        return launch


def _no_bias(x):
    return tb._PassBias(x, x, 0, (0, 0, 0, 1, 1), 0, None)


@pytest.fixture
def launch(monkeypatch):
    """``launch(x, bias=None)``: one call of a stand-in pass over input ``x``; returns how it
    launched (``("triton", grid, args, constexprs)`` or ``("direct", args)``)."""
    log: list = []
    monkeypatch.setattr(tb._k, "_stand_in", _Jitted(log), raising=False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(tb, "_current_stream", lambda device: 7)
    table = torch.arange(4, dtype=torch.int32)
    tables = tb._Tables((table, 4), 1, False, False, 1)
    run = tb._Pass("_stand_in", tb.PassConfig(16, 16), 3, tables, (0.5,),
                   dict(BLOCK=16, BLOCK_D=16, num_warps=4), (16,), 1)
    out = torch.empty(64)

    def call(x, bias=None):
        del log[:]
        run((x,), (out,), _no_bias(x) if bias is None else bias)
        return log[0]

    return call


def test_the_same_kind_of_call_launches_the_compiled_kernel_directly(launch):
    x = torch.zeros(64)
    how, grid, args, constexprs = launch(x)
    assert how == "triton" and grid == (3,) and constexprs["TMA"] is False
    how, args = launch(torch.ones(64))  # another input of the same alignment
    assert how == "direct"
    assert args[:9] == (3, 1, 1, 7, "function", "metadata", None, None, None)
    x_arg, _, table, n, _, _, *bias_ints, scale, block, block_d, axes, tiles, tma = args[9:]
    assert torch.equal(x_arg, torch.ones(64)) and n == 4 and scale == 0.5
    assert bias_ints == [0, 0, 0, 0, 0, 1, 1]
    assert (block, block_d, axes, tiles, tma) == (16, 16, 0, False, False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, "current_device", lambda: 1)
        assert launch(x)[0] == "triton"  # another device loads a kernel of its own
        assert launch(x)[0] == "direct"


def test_misaligned_inputs_go_through_triton_every_time(launch):
    x = torch.zeros(65)
    launch(x[:64])
    assert launch(x[1:])[0] == "triton"  # 4 bytes off the 16-byte alignment
    assert launch(x[1:])[0] == "triton"
    assert launch(x[:64])[0] == "direct"


def test_another_bias_form_is_keyed_of_its_own(launch):
    x = torch.zeros(64)
    launch(x)
    gather = tb._PassBias(x, x, 0, (3, 3, 0, 7, 1), 2, None)
    assert launch(x, gather)[0] == "triton"
    how, args = launch(x, gather)
    assert how == "direct" and args[-3:-1] == (2, False)
    assert launch(x)[0] == "direct"


def test_descriptors_and_launch_hooks_go_through_triton(launch, monkeypatch):
    x = torch.zeros(1, 1, 4, 16)
    launch(x)
    monkeypatch.setattr(tb, "TENSOR_DESCRIPTORS", True)
    how, _, args, constexprs = launch(x)
    assert how == "triton" and constexprs["TMA"] is True
    assert isinstance(args[0], tb.TensorDescriptor)
    monkeypatch.setattr(tb, "TENSOR_DESCRIPTORS", False)
    hook = triton.knobs.runtime.launch_enter_hook

    def record(metadata):
        pass

    hook.add(record)
    try:
        assert launch(x)[0] == "triton"
    finally:
        hook.remove(record)
    assert launch(x)[0] == "direct"


def test_passes_are_built_per_shape_stride_dtype_and_scale():
    """Every integer and constexpr that Triton specializes on comes from the pass's key."""
    cpu = torch.device("cpu")
    tiles = tb._tiles_handle((16, 16), Window(16).key, 32, torch.float16)
    shape = torch.Size((1, 2, 64, 32))
    strides = ((4096, 2048, 32, 1),) * 4
    base = (Window(16).key, tiles, shape, strides, torch.float16, cpu, 0.125)
    one = tb._forward_pass(*base)
    assert tb._forward_pass(*base) is one
    token_major = ((4096, 32, 64, 1),) * 4
    for other in (base[:2] + (torch.Size((1, 2, 48, 32)),) + base[3:],  # N and strides
                  base[:3] + (token_major,) + base[4:],
                  base[:6] + (0.25,)):
        assert tb._forward_pass(*other).ints != one.ints
    other = tb._forward_pass(Window(32).key, *base[1:])
    assert not torch.equal(other.tables[0], one.tables[0])  # the mask codes
    dq, dkdv = tb._backward_passes(*base[:3], (*strides, strides[0]), *base[4:])
    assert dq is None and dkdv.options["FUSED_DQ"]  # 16-token windows in 16-token tiles
    dq, dkdv = tb._backward_passes(Window(16, 8).key, *base[1:3], (*strides, strides[0]),
                                   *base[4:])
    assert dq is not None and not dkdv.options["FUSED_DQ"]
