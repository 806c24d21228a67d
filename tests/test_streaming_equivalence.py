"""FFT convolution == per-sample recurrence == chunked recurrence, for every init,
discretization and pooling, any frame length and any split of the sequence."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.config import ModelConfig
from model.network import S4DNetwork
from model.recurrence import PerSampleStepper
from model.s4d import INITS
from model.streaming import NotStreamableError, StreamingNetwork

LENGTH = 48


def make_net(init="legs", disc="zoh", pooling="mean", patch=1, dtype=torch.float64, **kw):
    if pooling == "ema":  # time constant 10 samples: LENGTH = 48 forgets most of the start
        kw = {"ema_tau_s": 0.1, "sample_rate": 100, **kw}
    cfg = ModelConfig(
        d_input=2, d_model=8, d_state=8, n_layers=2, d_output=3, init=init,
        discretization=disc, pooling=pooling, patch_size=patch, **kw,
    )
    return S4DNetwork(cfg, seed=3).to(dtype).eval()


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def stream(net, x, pieces, frame_size, dtype, block_size=64):
    """Feed x split at `pieces` boundaries; each piece is sent as full frames + remainder."""
    sn = StreamingNetwork(net, frame_size, dtype=dtype, block_size=block_size)
    state = sn.zero_state(x.shape[0])
    outs, logits = [], None
    bounds = [0, *pieces, x.shape[1]]
    with torch.inference_mode():
        for a, b in zip(bounds, bounds[1:]):
            for s in range(a, b, frame_size):
                chunk = x[:, s : min(b, s + frame_size)].to(dtype)
                if chunk.shape[1] == 0:
                    continue
                logits, state = sn.step(chunk, state)
                outs.append(logits)
    return torch.cat(outs, 1) if net.cfg.pooling == "none" else logits


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
@pytest.mark.parametrize("pooling", ["mean", "last", "ema", "none"])
def test_three_paths_agree_float64(init, disc, pooling):
    net = make_net(init, disc, pooling)
    x = torch.randn(3, LENGTH, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = net(x)
        stepper = PerSampleStepper(net)
        per_sample, _ = stepper.step(x, stepper.zero_state(3))
    chunked = stream(net, x, [5, 17, 18, 40], frame_size=7, dtype=torch.float64)
    assert rel_err(per_sample, ref) <= 1e-10
    assert rel_err(chunked, ref) <= 1e-10


@settings(max_examples=25, deadline=None)
@given(
    frame=st.integers(1, 24),
    cuts=st.lists(st.integers(1, LENGTH - 1), max_size=6, unique=True).map(sorted),
    pooling=st.sampled_from(["mean", "last", "ema", "none"]),
    init=st.sampled_from(INITS),
)
def test_any_frame_and_split_float64(frame, cuts, pooling, init):
    net = make_net(init=init, pooling=pooling)
    x = torch.randn(2, LENGTH, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(frame))
    with torch.inference_mode():
        ref = net(x)
    assert rel_err(stream(net, x, cuts, frame, torch.float64), ref) <= 1e-10


@settings(max_examples=20, deadline=None)
@given(
    frame=st.integers(2, 24),
    block=st.integers(2, 8),
    cuts=st.lists(st.integers(1, LENGTH - 1), max_size=5, unique=True).map(sorted),
    pooling=st.sampled_from(["mean", "last", "ema", "none"]),
)
def test_sub_blocked_frames_float64(frame, block, cuts, pooling):
    """Frames cut into sub-blocks (local GEMM + state scan) are exact too."""
    net = make_net(init="inv", pooling=pooling)
    x = torch.randn(3, LENGTH, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(block))
    with torch.inference_mode():
        ref = net(x)
    assert rel_err(stream(net, x, cuts, frame, torch.float64, block_size=block), ref) <= 1e-10


def test_long_frames_use_sub_blocks_and_match_float32():
    net = make_net()
    sn = StreamingNetwork(net, 320, dtype=torch.float32)
    assert sn.block == 64
    x = torch.randn(2, 1000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ref = net(x)
    assert rel_err(stream(net, x, [333, 640], 320, torch.float32).double(), ref) <= 1e-5


@settings(max_examples=15, deadline=None)
@given(
    frame_patches=st.integers(1, 8),
    cuts=st.lists(st.integers(1, LENGTH // 4 - 1), max_size=4, unique=True).map(sorted),
)
def test_patched_network_streams_exactly_float32(frame_patches, cuts):
    patch = 4
    net64 = make_net(patch=patch, pooling="mean")
    x = torch.randn(2, LENGTH, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        ref = net64(x)
    cuts = [c * patch for c in cuts]
    out32 = stream(net64, x, cuts, frame_patches * patch, torch.float32)
    assert out32.dtype == torch.float32
    assert rel_err(out32.double(), ref) <= 1e-5


def make_logmel_net(pooling="mean", dtype=torch.float64):
    kw = {"ema_tau_s": 0.05} if pooling == "ema" else {}
    cfg = ModelConfig(
        d_input=1, d_model=8, d_state=8, n_layers=2, d_output=3, patch_size=16,
        front_end="logmel", n_mels=10, sample_rate=8000, pooling=pooling,
        feature_mean=[0.1 * k - 0.5 for k in range(10)], feature_std=[1 + 0.2 * k for k in range(10)],
        **kw,
    )
    return S4DNetwork(cfg, seed=4).to(dtype).eval()


@settings(max_examples=15, deadline=None)
@given(
    frame_patches=st.integers(1, 6),
    cuts=st.lists(st.integers(1, 23), max_size=4, unique=True).map(sorted),
    pooling=st.sampled_from(["mean", "last", "ema", "none"]),
)
def test_logmel_front_end_streams_exactly(frame_patches, cuts, pooling):
    """Log-mel patches do not overlap: any patch-aligned chunking equals the batch forward,
    in float64 (to rounding) and in float32 against the float64 reference."""
    patch, length = 16, 24 * 16
    net64 = make_logmel_net(pooling)
    x = 0.3 * torch.randn(2, length, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    with torch.inference_mode():
        ref = net64(x)
    cuts = [c * patch for c in cuts]
    assert rel_err(stream(net64, x, cuts, frame_patches * patch, torch.float64), ref) <= 1e-10
    assert rel_err(stream(net64, x, cuts, frame_patches * patch, torch.float32).double(), ref) <= 1e-5


def test_logmel_front_end_is_a_power_spectrum_on_the_mel_scale():
    import numpy as np

    from model.frontend import LogMelPatches, mel_filterbank

    fb = mel_filterbank(160, 16000, 40)
    assert fb.shape == (81, 40) and np.allclose(fb.sum(0), 1) and (fb.sum(1) > 0).sum() > 60
    centres = (fb * np.fft.rfftfreq(160, 1 / 16000)[:, None]).sum(0)
    assert np.all(np.diff(centres) >= 0) and centres[0] < 150 and centres[-1] > 6000
    fe = LogMelPatches(160, 16000, 40).double()
    t = torch.arange(160, dtype=torch.float64) / 16000
    tone = torch.sin(2 * np.pi * 1000 * t).view(1, 1, 160)
    feats = fe(tone)[0, 0]
    band = int(np.argmin(np.abs(centres - 1000)))
    assert int(feats.argmax()) in (band - 1, band, band + 1)  # a 1 kHz tone lights its band
    # gain moves every band above the power floor by the same log factor
    lit = feats > -5
    assert lit.sum() >= 10
    shift = (fe(4 * tone)[0, 0] - feats)[lit]
    assert torch.allclose(shift, torch.full_like(shift, np.log(16)), atol=1e-3)


@pytest.mark.parametrize("pooling", ["mean", "last", "ema", "none"])
def test_float32_paths_against_float64_reference(pooling):
    net = make_net(pooling=pooling)
    x = torch.randn(4, 320, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        ref = net(x)
        fft32 = make_net(pooling=pooling, dtype=torch.float32)(x.float())
    chunked32 = stream(net, x, [100, 250], frame_size=64, dtype=torch.float32)
    assert rel_err(fft32.double(), ref) <= 1e-5
    assert rel_err(chunked32.double(), ref) <= 1e-5


def test_prefix_prediction_equals_batch_prediction_on_prefix():
    net = make_net()
    x = torch.randn(1, 40, 2, dtype=torch.float64)
    sn = StreamingNetwork(net, 8, dtype=torch.float64)
    state = sn.zero_state(1)
    with torch.inference_mode():
        for end in range(8, 41, 8):
            logits, state = sn.step(x[:, end - 8 : end], state)
            assert rel_err(logits, net(x[:, :end])) <= 1e-10


def test_variable_lengths_in_one_batch_match_single_runs():
    for pooling in ("mean", "last", "ema"):
        net = make_net(pooling=pooling)
        a, b = torch.randn(1, 30, 2, dtype=torch.float64), torch.randn(1, 45, 2, dtype=torch.float64)
        batch = torch.zeros(2, 45, 2, dtype=torch.float64)
        batch[0, :30], batch[1] = a[0], b[0]
        with torch.inference_mode():
            out = net(batch, lengths=torch.tensor([30, 45]))
            assert rel_err(out[0:1], net(a)) <= 1e-12
            assert rel_err(out[1:2], net(b)) <= 1e-12


def test_bidirectional_runs_in_batch_and_is_refused_for_streaming():
    net = make_net(bidirectional=True)
    x = torch.randn(2, 20, 2, dtype=torch.float64)
    with torch.inference_mode():
        full = net(x)
        # the output at step 0 depends on the future: change the last sample and it moves
        x2 = x.clone()
        x2[:, -1] += 1.0
        assert not torch.allclose(net(x2), full)
    with pytest.raises(NotStreamableError, match="bidirectional"):
        StreamingNetwork(net, 4)
    with pytest.raises(NotStreamableError):
        PerSampleStepper(net)


def test_bad_frame_lengths_are_refused():
    sn = StreamingNetwork(make_net(patch=4), 8, dtype=torch.float64)
    state = sn.zero_state(1)
    for bad in (0, 3, 6, 12):
        with pytest.raises(ValueError, match="frame"):
            sn.step(torch.zeros(1, bad, 2, dtype=torch.float64), state)
    with pytest.raises(ValueError):
        StreamingNetwork(make_net(patch=4), 6)


def test_state_bytes_per_session():
    sn = StreamingNetwork(make_net(dtype=torch.float32), 8)
    # 2 layers * H=8 * N/2=4 * (re + im) * 4 bytes + pool (8 floats) + count (1 float)
    assert sn.state_bytes_per_session == 2 * 8 * 4 * 2 * 4 + 8 * 4 + 4


@pytest.mark.parametrize("batch", [1, 4, 9])
def test_one_block_frames_any_batch(batch):
    """A frame that fits one sub-block runs as GEMMs + carry at batch >= 4, else one GEMM."""
    net = make_net(init="lin", pooling="mean")
    sn = StreamingNetwork(net, 16, dtype=torch.float64)
    assert sn.block == 16
    x = torch.randn(batch, LENGTH, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(batch))
    with torch.inference_mode():
        ref = net(x)
    assert rel_err(stream(net, x, [20], 16, torch.float64), ref) <= 1e-10


# ---- pooling "ema": forgets, and still streams exactly --------------------------------------
@settings(max_examples=25, deadline=None)
@given(
    frame=st.integers(1, 24),
    cuts=st.lists(st.integers(1, 4 * LENGTH - 1), max_size=6, unique=True).map(sorted),
    tau=st.floats(0.01, 10.0),
    patch=st.sampled_from([1, 2]),
)
def test_ema_float32_stream_any_chunking_matches_float64_batch(frame, cuts, tau, patch):
    net = make_net(pooling="ema", ema_tau_s=tau, patch=patch)
    x = torch.randn(2, 4 * LENGTH, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(frame))
    with torch.inference_mode():
        ref = net(x)
        assert rel_err(make_net(pooling="ema", ema_tau_s=tau, patch=patch,
                                dtype=torch.float32)(x.float()).double(), ref) <= 1e-5
    cuts = [c * patch for c in cuts if c * patch < x.shape[1]]
    out = stream(net, x, cuts, frame * patch, torch.float32)
    assert rel_err(out.double(), ref) <= 1e-5


def test_ema_prefix_predictions_equal_batch_on_every_prefix():
    net = make_net(pooling="ema")
    x = torch.randn(2, 40, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sn = StreamingNetwork(net, 5, dtype=torch.float64)
    state = sn.zero_state(2)
    with torch.inference_mode():
        for end in range(5, 41, 5):
            logits, state = sn.step(x[:, end - 5 : end], state)
            assert rel_err(logits, net(x[:, :end])) <= 1e-10


def test_ema_forgets_the_distant_past_and_mean_does_not():
    """Two inputs that differ only in the first 48 steps: after 10 time constants the ema
    predictions coincide (to a^480 ~ 1e-21), the running mean's still differ."""
    x = torch.randn(1, 11 * LENGTH, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    y = x.clone()
    y[:, :LENGTH] = torch.randn(1, LENGTH, 2, dtype=torch.float64)
    with torch.inference_mode():
        # the S4D layers themselves remember (their own modes decay slowly); compare the pooling
        # on the same features: the head over h(x) with h(y)'s first steps swapped in
        ema, mean = make_net(pooling="ema"), make_net(pooling="mean")
        hx, hy = ema.features(x), ema.features(x).clone()
        hy[:, :LENGTH] = ema.features(y)[:, :LENGTH]
        n = torch.tensor([hx.shape[1]])
        from model.pooling import ema_weights

        w = ema_weights(n, hx.shape[1], ema.cfg.ema_log_decay, torch.float64)
        assert ((hx - hy) * w).sum(1).abs().max() <= 1e-15
        assert (hx - hy).mean(1).abs().max() > 1e-3
        assert rel_err(mean(x), mean(y)) > 1e-6


def test_ema_with_a_huge_time_constant_is_the_running_mean():
    x = torch.randn(2, LENGTH, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        ema = make_net(pooling="ema", ema_tau_s=1e9)(x)
        mean = make_net(pooling="mean")(x)
    assert rel_err(ema, mean) <= 1e-8


def test_ema_needs_a_time_constant_and_a_sample_rate():
    with pytest.raises(ValueError, match="ema_tau_s"):
        ModelConfig(pooling="ema")
    with pytest.raises(ValueError, match="ema_tau_s"):
        ModelConfig(pooling="ema", ema_tau_s=1.0)
    cfg = ModelConfig(pooling="ema", ema_tau_s=0.5, sample_rate=16000, patch_size=4)
    assert cfg.ema_log_decay == pytest.approx(-4 / 8000)


def test_spec_augment_masks_only_in_training_and_within_its_widths():
    from model.frontend import spec_augment

    torch.manual_seed(0)
    feats = torch.randn(64, 50, 10) + 5.0  # nothing is 0 before masking
    masked = spec_augment(feats, max_steps=6, max_bands=3)
    zero = masked == 0
    steps_all = zero.all(2)  # whole time steps masked
    bands_all = zero.all(1)  # whole bands masked
    assert steps_all.sum(1).max() <= 2 * 6 and bands_all.sum(1).max() <= 2 * 3
    assert steps_all.any() and bands_all.any()
    assert torch.equal(masked[~zero], feats[~zero])
    net = make_logmel_net(dtype=torch.float32)
    net.frontend.masks = (6, 3)
    x = 0.3 * torch.randn(2, 320, 1)
    with torch.no_grad():
        net.eval()
        a, b = net(x), net(x)
        assert torch.equal(a, b)  # eval: no masks
        net.train()
        assert not torch.equal(net.embed(x), net.embed(x))  # training: a new mask each call


def test_logmel_config_is_checked():
    base = dict(d_input=1, patch_size=160, front_end="logmel", n_mels=4)
    with pytest.raises(ValueError, match="sample_rate"):
        ModelConfig(**base)
    with pytest.raises(ValueError, match="feature_mean needs 4 values"):
        ModelConfig(**base, sample_rate=16000, feature_mean=[0.0] * 3)
    with pytest.raises(ValueError, match="feature_std must be positive"):
        ModelConfig(**base, sample_rate=16000, feature_std=[1.0, 1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="input_std must be positive"):
        ModelConfig(input_std=[0.0])
    assert ModelConfig(**base, sample_rate=16000).front_end == "logmel"
