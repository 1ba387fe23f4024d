"""The ops switchboard (audio_dcls.ops.config): settings read once, overrides, and recorded routes.

The replay test is the point of the recorded routes: a run records its
autotuned tiles and weight-gradient routes (``routes_state()``, plain JSON),
a fresh process loads them (``load_routes_state``) and computes with exactly
those routes — bit for bit what the first run computed with them — without
autotuning or timing again. Both processes run the Triton kernels in the
interpreter (TRITON_INTERPRET=1 must be set before the kernels are decorated,
hence subprocesses). The CPU cannot time the weight-gradient routes, so the
first run's table is edited to hold the FFT route (what a GPU's timing would
record) and pinned small tiles; the replay must follow the table, not the CPU
default (Triton) nor the autotuner's pick.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from audio_dcls.ops import config

ROOT = Path(__file__).resolve().parents[1]

SMALL_FWD = dict(BLOCK_R=16, BLOCK_W=16, BLOCK_K=16, I_BLOCK=4, num_warps=4, num_stages=3)

STEP = r"""
import json, sys
import torch
torch.set_num_threads(1)
from audio_dcls.ops import config, depthwise_triton as dt
assert dt.INTERPRET
def step():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 20, requires_grad=True)
    w = (torch.randn(3, 1, 7, 7) / 7).requires_grad_()
    y = dt.depthwise_conv2d_triton(x, w, None, (3, 3))  # (2, 3, 9, 20)
    gx, gw = torch.autograd.grad(y, (x, w), torch.randn(y.shape))
    return {"y": y.flatten().tolist(), "grad_x": gx.flatten().tolist(), "grad_w": gw.flatten().tolist()}
"""

RECORD = STEP + r"""
small_fwd = json.loads(sys.argv[1])
with config.override(wgrad="fft", fwd_tiles=small_fwd):
    pinned = step()  # what the edited table below asks for, from settings
assert config.routes_state()["tiles"] == {"fwd": {}, "wgrad": {}}, "settings are not recorded"
autotuned = step()
state = config.routes_state()
recorded = json.loads(json.dumps(state))  # what a checkpoint would hold
# Edit the table as a GPU run would have filled it: the FFT weight gradient timed faster
# for the shape, and small tiles for both launches of the forward kernel (forward, input gradient).
edited = json.loads(json.dumps(state))
edited["wgrad"] = {key: "fft" for key in edited["tiles"]["wgrad"]}
edited["tiles"]["fwd"] = {key: small_fwd for key in edited["tiles"]["fwd"]}
print("RESULTS " + json.dumps({"pinned": pinned, "autotuned": autotuned, "recorded": recorded, "edited": edited,
                               "counts": config.route_counts()}))
"""

REPLAY = STEP + r"""
state = json.loads(sys.argv[1])
config.load_routes_state(state)
replayed = step()
print("RESULTS " + json.dumps({"replayed": replayed, "counts": config.route_counts(), "after": config.routes_state(),
                               "fallbacks": config.fallback_events()}))
"""


def _run(script: str, *args: str, **env) -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1", AUDIO_DCLS_TRITON_STRICT="1", OMP_NUM_THREADS="1", **env)
    proc = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS "))[len("RESULTS "):])


@pytest.fixture(scope="module")
def recorded():
    return _run(RECORD, json.dumps(SMALL_FWD))


def test_a_run_records_its_autotuned_tiles_as_plain_data(recorded):
    state = recorded["recorded"]
    assert state["version"] == 1 and state["wgrad"] == {}  # the CPU times nothing: no weight-gradient route recorded
    # Keys "B,C,H,W,HO,WO,KH,KW,dtype": the forward launch, the input gradient's (the same
    # shapes, padding 7-1-3) and the weight gradient's.
    assert sorted(state["tiles"]["fwd"]) == ["2,3,9,20,9,20,7,7,float32"]
    assert sorted(state["tiles"]["wgrad"]) == ["2,3,9,20,9,20,7,7,float32"]
    for kind, params in config.TILE_PARAMS.items():
        for cfg in state["tiles"][kind].values():
            assert set(params) <= set(cfg) and all(isinstance(v, int) for v in cfg.values()), cfg
    counts = recorded["counts"]
    assert counts["fwd_autotuned"] == 1 and counts["wgrad_autotuned"] == 1, counts  # the input gradient reused the forward's pick
    assert counts["wgrad_fft"] == 1 and counts["wgrad_triton"] == 1 and counts["wgrad_timed"] == 0, counts


def test_a_fresh_process_replays_the_loaded_routes_without_tuning(recorded):
    out = _run(REPLAY, json.dumps(recorded["edited"]))
    assert out["fallbacks"] == []
    counts = out["counts"]
    assert counts["fwd_autotuned"] == 0 and counts["wgrad_autotuned"] == 0, counts  # tiles came from the table
    assert counts["wgrad_timed"] == 0 and counts["wgrad_fft"] == 1 and counts["wgrad_triton"] == 0, counts  # the table's route
    assert out["after"] == recorded["edited"]  # nothing new recorded
    # Bit for bit what the same routes computed when set as settings in the first process...
    assert out["replayed"] == recorded["pinned"]
    # ...and not what the autotuner's tiles and the CPU default (Triton) compute: the sums run in another order.
    for name in ("y", "grad_x", "grad_w"):
        assert out["replayed"][name] != recorded["autotuned"][name], name


def test_settings_win_over_recorded_routes(recorded):
    """AUDIO_DCLS_DW_WGRAD=triton in the environment: the loaded 'fft' entry is not used."""
    out = _run(REPLAY, json.dumps(recorded["edited"]), AUDIO_DCLS_DW_WGRAD="triton")
    assert out["counts"]["wgrad_triton"] == 1 and out["counts"]["wgrad_fft"] == 0, out["counts"]


def test_a_recorded_route_is_used_on_cuda_without_timing():
    """The CUDA branch of the route choice: a recorded shape never reaches the timing."""
    from audio_dcls.ops import depthwise_triton as dt

    key = (2, 3, 9, 20, 9, 20, 7, 7, torch.bfloat16)

    def must_not_run():
        raise AssertionError("timed a recorded shape")

    saved = config.routes_state()
    try:
        config.load_routes_state({"version": 1, "wgrad": {config.encode_key(key): "fft"}, "tiles": {}})
        assert dt._wgrad_route(key, True, must_not_run, must_not_run) == "fft"
        with config.override(wgrad="triton"):
            assert dt._wgrad_route(key, True, must_not_run, must_not_run) == "triton"
        assert dt._wgrad_route(key[:-1] + (torch.float32,), False, must_not_run, must_not_run) == "triton"  # CPU default
    finally:
        config.load_routes_state(saved)


# ----------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------
def test_environment_is_parsed_once_into_the_switchboard():
    board = config.Switchboard.from_environ({
        "AUDIO_DCLS_DW_WGRAD": "fft", "AUDIO_DCLS_FUSED_BUILD": "0", "AUDIO_DCLS_TRITON_STRICT": "1", "TRITON_INTERPRET": "1",
    })
    assert (board.wgrad, board.fused_build, board.strict, board.interpret) == ("fft", "off", True, True)
    default = config.Switchboard.from_environ({})
    assert (default.fast_depthwise, default.wgrad, default.fused_build, default.strict, default.interpret) == (True, "auto", "on", False, False)
    assert config.Switchboard.from_environ({"AUDIO_DCLS_FUSED_BUILD": "force"}).fused_build == "force"
    for name, bad in (("AUDIO_DCLS_DW_WGRAD", "cudnn"), ("AUDIO_DCLS_FUSED_BUILD", "yes"), ("AUDIO_DCLS_TRITON_STRICT", "true")):
        with pytest.raises(ValueError, match=name):
            config.Switchboard.from_environ({name: bad})


def test_environment_changes_after_import_do_not_reroute():
    script = (
        "import os\n"
        "from audio_dcls.ops import config\n"
        "os.environ['AUDIO_DCLS_DW_WGRAD'] = 'triton'\n"
        "os.environ['AUDIO_DCLS_FUSED_BUILD'] = 'force'\n"
        "print(config.wgrad_route(), config.fused_build(), config.strict())\n"
    )
    env = dict(os.environ, AUDIO_DCLS_DW_WGRAD="fft", AUDIO_DCLS_FUSED_BUILD="0", AUDIO_DCLS_TRITON_STRICT="1")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["fft", "off", "True"]


def test_override_restores_and_validates_before_changing_anything():
    before = config.settings()
    with config.override(wgrad="fft", fast_depthwise=False, fused_build=False, strict=True, wgrad_tiles=dict(BLOCK_R=32, BLOCK_W=16, I_BLOCK=2)):
        assert (config.wgrad_route(), config.fast_depthwise_enabled(), config.fused_build(), config.strict()) == ("fft", False, "off", True)
        assert config.forced_tiles("wgrad") == dict(BLOCK_R=32, BLOCK_W=16, I_BLOCK=2, num_warps=4, num_stages=3)
        assert config.forced_tiles("fwd") is None
    assert config.settings() == before
    with pytest.raises(RuntimeError):
        with config.override(wgrad="triton"):
            raise RuntimeError("inside")
    assert config.settings() == before
    with pytest.raises(ValueError, match="wgrad"):
        with config.override(fast_depthwise=False, wgrad="cudnn"):
            pass
    assert config.settings() == before
    with pytest.raises(TypeError, match="interpret"):  # read-only: Triton fixed it at import
        with config.override(interpret=True):
            pass
    for bad in (dict(BLOCK_R=16, BLOCK_W=16), dict(BLOCK_R=24, BLOCK_W=16, BLOCK_K=16, I_BLOCK=1), dict(BLOCK_R=16, BLOCK_W=16, BLOCK_K=16, I_BLOCK=1, warps=4)):
        with pytest.raises(ValueError, match="fwd tile config"):
            config.force_tiles("fwd", bad)
    assert config.settings() == before
    # The setters return the previous value, so a caller can put it back.
    route, mode, strict, fast = before["wgrad"], before["fused_build"], before["strict"], before["fast_depthwise"]
    assert config.set_wgrad_route("fft") == route and config.set_wgrad_route(route) == "fft"
    assert config.set_fused_build("force") == mode and config.set_fused_build(False) == "force" and config.set_fused_build(mode) == "off"
    assert config.set_strict(not strict) is strict and config.set_strict(strict) is (not strict)
    assert config.set_fast_depthwise(not fast) is fast and config.set_fast_depthwise(fast) is (not fast)
    assert config.force_tiles("fwd", SMALL_FWD) is None and config.force_tiles("fwd", None) == SMALL_FWD
    assert config.settings() == before


def test_a_failing_kernel_falls_back_once_and_strict_mode_raises():
    from audio_dcls.ops.fallbacks import FallbackRegistry

    registry, calls = FallbackRegistry(), []

    def broken():
        calls.append("triton")
        raise RuntimeError("PassManager::run failed")

    with pytest.warns(UserWarning, match="fwd kernel failed for .*stock route"):
        assert registry.guarded("fwd", (2, 3), broken, lambda: "stock", strict=False) == "stock"
    assert registry.guarded("fwd", (2, 3), broken, lambda: "stock", strict=False) == "stock"
    assert calls == ["triton"]  # the failed shape goes straight to the stock route afterwards
    assert registry.events() == [{"kind": "fwd", "key": "(2, 3)", "error": "RuntimeError: PassManager::run failed"}]
    assert registry.guarded("fwd", (4, 5), lambda: "triton", lambda: "stock", strict=False) == "triton"  # other shapes unaffected
    with pytest.raises(RuntimeError, match="PassManager"):
        registry.guarded("wgrad", (2, 3), broken, lambda: "stock", strict=True)

    def out_of_memory():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):  # the stock route needs the memory too
        registry.guarded("fwd", (6, 7), out_of_memory, lambda: "stock", strict=False)
    assert len(registry.events()) == 1


# ----------------------------------------------------------------------------
# The routes state
# ----------------------------------------------------------------------------
def test_shape_keys_round_trip():
    for key in [(2, 3, 9, 20, 9, 20, 7, 7, torch.bfloat16), (1, 768, 8, 7, 8, 7, 23, 23, torch.float16)]:
        text = config.encode_key(key)
        assert config.decode_key(text) == key and "torch" not in text
    assert config.encode_key((64, 96, torch.float32)) == "64,96,float32"
    for bad in ("float32", "2,3,nine,float32", "2,3,9,Tensor", "2,3,9,floaty"):
        with pytest.raises(ValueError, match="not a shape key"):
            config.decode_key(bad)


def test_routes_state_round_trips_through_json_and_bad_states_change_nothing():
    saved = config.routes_state()
    state = {
        "version": 1,
        "wgrad": {"8,96,64,62,64,62,23,23,bfloat16": "fft", "8,768,8,7,8,7,23,23,bfloat16": "triton"},
        "tiles": {"fwd": {"8,96,64,62,64,62,23,23,bfloat16": dict(SMALL_FWD, num_ctas=1)},
                  "wgrad": {"8,96,64,62,64,62,23,23,bfloat16": dict(BLOCK_R=64, BLOCK_W=32, I_BLOCK=4, num_warps=4, num_stages=3)}},
    }
    try:
        config.load_routes_state(json.loads(json.dumps(state)))
        assert config.routes_state() == state
        assert json.loads(json.dumps(config.routes_state())) == state
        key = (8, 96, 64, 62, 64, 62, 23, 23, torch.bfloat16)
        assert config.routes().wgrad(key) == "fft" and config.routes().tiles("fwd", key)["BLOCK_K"] == 16
        assert config.wgrad_timings()["8,96,64,62,64,62,23,23,bfloat16"] == {"route": "fft", "triton_ms": None, "fft_ms": None}
        bad_states = [
            {"version": 2, "wgrad": {}, "tiles": {}},
            [],
            dict(state, wgrad={"8,96,64,62,64,62,23,23,bfloat16": "cudnn"}),
            dict(state, wgrad={"8,96,64,62,Tensor": "fft"}),
            dict(state, tiles={"dgrad": {}}),
            dict(state, tiles={"fwd": {"8,96,64,62,64,62,23,23,bfloat16": dict(BLOCK_R=16)}}),
        ]
        for bad in bad_states:
            with pytest.raises(ValueError):
                config.load_routes_state(bad)
            assert config.routes_state() == state
        config.clear_routes()
        assert config.routes_state() == {"version": 1, "wgrad": {}, "tiles": {"fwd": {}, "wgrad": {}}}
    finally:
        config.load_routes_state(saved)
