"""ONNX export + the onnxruntime backend: same numbers as PyTorch, same server behaviour.

Every checkpoint (the shipped ones under checkpoints/ that exist, plus random ones made here)
is exported once into a session cache ($S4D_ONNX_CACHE), which the server test reuses.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted(p.parent for p in (ROOT / "checkpoints").glob("*/config.json"))
TOL = 1e-5  # max |onnx - torch| / max |torch|

#: random checkpoints: name -> (ModelConfig overrides, TaskConfig overrides)
RANDOM = {
    # mean pooling, LegS, dropout in training (must not appear in the eval graphs)
    "rand": (dict(d_input=1, d_model=16, d_state=8, n_layers=2, d_output=3, dropout=0.2),
             dict(sample_rate=16000, input_channels=1, class_names=["a", "b", "c"], frame_size=64)),
    # 2 channels, patches of 2, last pooling, bilinear, input normalization
    "rand2": (dict(d_input=2, d_model=8, d_state=4, n_layers=2, d_output=4, patch_size=2,
                   pooling="last", discretization="bilinear", init="inv",
                   input_mean=[0.1, -0.2], input_std=[2.0, 0.5]),
              dict(sample_rate=100, input_channels=2, class_names=["w", "x", "y", "z"],
                   frame_size=32)),
    # per-step outputs
    "randnone": (dict(d_input=1, d_model=8, d_state=4, n_layers=1, d_output=2, pooling="none",
                      init="lin"),
                 dict(sample_rate=250, input_channels=1, class_names=["p", "q"], frame_size=16)),
    # exponential moving average pooling (tau = 0.1 s = 25 steps of 2 samples at 500 Hz)
    "randema": (dict(d_input=1, d_model=8, d_state=4, n_layers=2, d_output=3, patch_size=2,
                     pooling="ema", ema_tau_s=0.1, sample_rate=500),
                dict(sample_rate=500, input_channels=1, class_names=["e", "f", "g"],
                     frame_size=16)),
    # log-mel patch front end (a DFT as two matrix products, mel filters, log, standardised)
    "randmel": (dict(d_input=1, d_model=8, d_state=4, n_layers=2, d_output=3, patch_size=16,
                     front_end="logmel", n_mels=6, sample_rate=8000,
                     feature_mean=[-1.0, 0.0, 0.5, 1.0, 0.0, -0.5],
                     feature_std=[2.0, 1.0, 1.5, 3.0, 2.5, 1.0]),
                dict(sample_rate=8000, input_channels=1, class_names=["h", "i", "j"],
                     frame_size=64)),
    # bidirectional: batch graph only
    "randbi": (dict(d_input=1, d_model=8, d_state=4, n_layers=1, d_output=2, bidirectional=True),
               dict(sample_rate=16000, input_channels=1, class_names=["u", "v"], frame_size=64)),
}


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models: torch's intra-op threads only add synchronisation (and on a busy CI box,
    seconds). Restored after this module."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("onnx-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("S4D_ONNX_CACHE", str(cache))
    yield cache
    mp.undo()


@pytest.fixture(scope="session")
def random_root(tmp_path_factory, make_checkpoint) -> Path:
    root = tmp_path_factory.mktemp("onnx-checkpoints")
    for i, (name, (m, t)) in enumerate(RANDOM.items()):
        make_checkpoint(root, name, m, t, seed=100 + i)
    return root


@pytest.fixture(scope="session")
def backends(onnx_cache, random_root):
    """(torch, onnxruntime) backends per checkpoint path, loaded once."""
    from server.backends.base import get_backend

    cache: dict[Path, tuple] = {}

    def get(path: Path):
        if path not in cache:
            cache[path] = (get_backend("torch").load(path, "cpu"),
                           get_backend("onnxruntime").load(path, "cpu"))
        return cache[path]

    return get


CASES = [pytest.param(name, id=name) for name in RANDOM]
CASES += [pytest.param(str(p), id=f"shipped-{p.name}") for p in SHIPPED]


def ckpt(random_root: Path, case: str) -> Path:
    return random_root / case if case in RANDOM else Path(case)


@pytest.mark.parametrize("case", CASES)
def test_graphs_are_valid_eval_graphs(case, random_root, backends):
    _, ob = backends(ckpt(random_root, case))
    info = ob.info
    paths = [info.batch_path] + ([info.step_path] if info.streamable else [])
    for path in paths:
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        ops = collections.Counter(n.op_type for n in model.graph.node)
        assert not {"Dropout", "BatchNormalization", "RandomNormal", "RandomUniform",
                    "Bernoulli"} & set(ops), ops
        assert all(i.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64)
                   for i in model.graph.input)
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert (info.directory / "config.json").read_text() == (ckpt(random_root, case) / "config.json").read_text()
    assert ob.metadata.backend == "onnxruntime" and ob.metadata.device == "cpu"


@pytest.mark.parametrize("case", CASES)
def test_step_equals_torch_with_carried_state(case, random_root, backends):
    """Many frames with carried state, batch 3, then a partial last frame (several lengths)."""
    tb, ob = backends(ckpt(random_root, case))
    if not tb.metadata.streamable:
        assert not ob.metadata.streamable
        pytest.skip("batch-only model")
    meta = tb.metadata
    assert ob.metadata.frame_size == meta.frame_size
    assert ob.metadata.state_bytes_per_session == meta.state_bytes_per_session
    t, p, c = meta.frame_size, meta.patch_size, meta.input_channels
    rng = np.random.default_rng(0)
    partials = sorted({p, t - p, (t // 2 // p) * p} - {0, t})
    for partial in partials or [t]:
        st_t, st_o = tb.new_slab(3).gather([0, 1, 2]), ob.new_slab(3).gather([0, 1, 2])
        for n in [t] * 12 + [partial]:
            frames = (rng.standard_normal((3, n, c)) * 0.5).astype(np.float32)
            lt, st_t = tb.step(frames, st_t)
            lo, st_o = ob.step(frames, st_o)
            assert lo.shape == lt.shape
            assert rel(lo, lt) <= TOL, (n, rel(lo, lt))
            for k in st_t:
                assert rel(st_o[k], st_t[k].numpy()) <= TOL, (k, n)


@pytest.mark.parametrize("case", CASES)
def test_batch_equals_torch(case, random_root, backends):
    tb, ob = backends(ckpt(random_root, case))
    meta = tb.metadata
    p, c = meta.patch_size, meta.input_channels
    rng = np.random.default_rng(1)
    length = 5 * meta.frame_size + 3 * p + 1
    x = (rng.standard_normal((4, length, c)) * 0.5).astype(np.float32)
    lengths = np.array([length, length - p, 2 * p + 1, p], np.int64)
    graph, seen = ob.batch_session, []

    class Recording:  # the batch graph sees a power-of-two number of steps (fast ORT DFTs)
        def run(self, names, feeds):
            seen.append(feeds["x"].shape[1] // p)
            return graph.run(names, feeds)

    ob.batch_session = Recording()
    try:
        ref, got = tb.predict(x, lengths), ob.predict(x, lengths)
    finally:
        ob.batch_session = graph
    assert seen == [min(ob.max_steps, 1 << (length // p - 1).bit_length())] != [length // p]
    assert got.shape == ref.shape
    if meta.pooling == "none":  # rows past a sequence's length are padding
        valid = np.arange(ref.shape[1])[None, :] < (lengths // p)[:, None]
        ref, got = ref[valid], got[valid]
    assert rel(got, ref) <= TOL
    if meta.streamable:  # past the batch graph's max length: frame by frame on the step graph
        saved = ob.max_steps
        ob.max_steps = 2
        try:
            got2 = ob.predict(x, lengths)
        finally:
            ob.max_steps = saved
        if meta.pooling == "none":
            got2 = got2[valid]
        assert rel(got2, ref) <= TOL
    with pytest.raises(ValueError, match="patch_size"):
        ob.predict(x[:, :p], np.array([p - 1] * 4 if p > 1 else [0] * 4, np.int64))


# ---- server -------------------------------------------------------------------------------------
def test_server_streaming_equals_batch(onnx_cache, random_root, backends, start_server, ws_client,
                                       batch_predict, probs_close):
    for name in RANDOM:  # exports land in the session cache before the server loads
        backends(random_root / name)
    h = start_server(checkpoints=random_root, backend="onnxruntime", max_sessions=16)
    with h.client() as cl:
        meta = cl.get("/v1/models/rand").json()
        assert meta["backend"] == "onnxruntime", meta
        models = cl.get("/v1/models").json()
    assert {m["name"]: m["backend"] for m in models["models"]} == dict.fromkeys(RANDOM, "onnxruntime")
    rng = np.random.default_rng(7)

    async def run_all():
        jobs = []
        for name, n, c, rate, sizes in [("rand", 1000, 1, 16000, [7, 300, 1]),
                                        ("rand", 131, 1, 16000, [4000]),
                                        ("rand2", 333, 2, 100, [24, 4]),
                                        ("randnone", 77, 1, 250, [12]),
                                        ("randema", 501, 1, 500, [7, 40])]:
            x = (rng.standard_normal((n, c)) * 0.3).clip(-0.99, 0.99).astype(np.float32)
            jobs.append((name, x, ws_client.stream_signal(
                h.ws_url(name), x, sizes=sizes, start={"sample_rate": rate})))
        results = await asyncio.gather(*(j[2] for j in jobs))
        return [(j[0], j[1], r) for j, r in zip(jobs, results)]

    for name, x, res in asyncio.run(run_all()):
        assert res.close_code == 1000, res.messages
        assert res.final is not None and res.final["offset"] == len(x)
        ref = batch_predict(h, name, [x])[0]
        probs_close(res.final["probabilities"], ref)
    # the ONNX server's batch path equals the PyTorch backend's
    x = (rng.standard_normal((500, 1)) * 0.3).astype(np.float32)
    tb, _ = backends(random_root / "rand")
    logits = tb.predict(x[None], np.array([500]))[0].astype(np.float64)
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    ref = dict(zip(tb.metadata.classes, probs.tolist()))
    probs_close(batch_predict(h, "rand", [x])[0], ref, 1e-5)


# ---- export CLI, pre-exported folders, corrupted / mismatched files ---------------------------
@pytest.fixture(scope="session")
def exported(tmp_path_factory, random_root):
    """A copy of `rand` with `s4d export onnx` output in CHECKPOINT/onnx (pre-exported)."""
    import s4d_cli

    d = tmp_path_factory.mktemp("pre") / "rand"
    shutil.copytree(random_root / "rand", d)
    assert s4d_cli.main(["export", "onnx", str(d), "--frame", "128", "--max-length", "4096"]) == 0
    return d


def test_export_cli_writes_graphs_and_server_uses_them(exported, backends, random_root):
    from server.backends.base import get_backend

    out = exported / "onnx"
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["frame_size"] == 128 and manifest["max_steps"] == 4096
    assert set(manifest["files"]) == {"step.onnx", "batch.onnx"}
    assert (out / "config.json").is_file()
    ob = get_backend("onnxruntime").load(exported, "cpu")
    assert ob.metadata.extra["onnx_dir"] == str(out) and ob.metadata.frame_size == 128
    tb, _ = backends(random_root / "rand")
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((2, 128 * 3 + 64, 1))).astype(np.float32)
    st_t, st_o = tb.new_slab(2).gather([0, 1]), ob.new_slab(2).gather([0, 1])
    for i in range(0, x.shape[1], 128):  # the torch backend uses 64-sample frames: 2 per frame
        lo, st_o = ob.step(x[:, i : i + 128], st_o)
        for j in range(i, min(i + 128, x.shape[1]), 64):
            lt, st_t = tb.step(x[:, j : j + 64], st_t)
    assert rel(lo, lt) <= TOL


def _copy(exported: Path, dst: Path) -> Path:
    shutil.copytree(exported, dst)
    return dst


def _load(path: Path):
    from server.backends.base import get_backend

    return get_backend("onnxruntime").load(path, "cpu")


def test_corrupted_or_mismatched_onnx_is_a_clear_error(exported, tmp_path, random_root):
    from model.export import file_digest
    from server.backends.base import BackendError

    # a truncated graph: the manifest's sha256 catches it
    d = _copy(exported, tmp_path / "trunc")
    f = d / "onnx" / "step.onnx"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(BackendError, match=r"step\.onnx.*(corrupted|sha256)"):
        _load(d)

    # garbage with a matching manifest: ONNX Runtime refuses it, the error names the file
    d = _copy(exported, tmp_path / "garbage")
    f = d / "onnx" / "batch.onnx"
    f.write_bytes(b"\x08\x07garbage" * 100)
    m = json.loads((d / "onnx" / "export.json").read_text())
    m["files"]["batch.onnx"] = file_digest(f)
    (d / "onnx" / "export.json").write_text(json.dumps(m))
    with pytest.raises(BackendError, match=r"batch\.onnx.*ONNX Runtime cannot load"):
        _load(d)

    # another checkpoint's export next to this one
    d = _copy(random_root / "rand2", tmp_path / "other")
    shutil.copytree(exported / "onnx", d / "onnx")
    with pytest.raises(BackendError, match="another checkpoint"):
        _load(d)

    # another model's graph with a forged manifest: the graph signature check catches it
    d = _copy(exported, tmp_path / "forged")
    rand2 = _load(random_root / "rand2").info
    shutil.copyfile(rand2.step_path, d / "onnx" / "step.onnx")
    m = json.loads((d / "onnx" / "export.json").read_text())
    m["files"]["step.onnx"] = file_digest(d / "onnx" / "step.onnx")
    (d / "onnx" / "export.json").write_text(json.dumps(m))
    with pytest.raises(BackendError, match="another model"):
        _load(d)

    # a broken manifest
    d = _copy(exported, tmp_path / "manifest")
    (d / "onnx" / "export.json").write_text("{not json")
    with pytest.raises(BackendError, match="export.json"):
        _load(d)


def test_corrupted_cache_entry_is_exported_again(onnx_cache, random_root, backends):
    _, ob = backends(random_root / "randbi")
    path = ob.info.batch_path
    good = path.read_bytes()
    path.write_bytes(good[:100])
    again = _load(random_root / "randbi")
    assert again.info.directory == ob.info.directory
    assert path.read_bytes() != good[:100]
    x = np.random.default_rng(5).standard_normal((1, 100, 1)).astype(np.float32)
    assert rel(again.predict(x, np.array([100])), ob.predict(x, np.array([100]))) <= TOL


def test_unknown_backend_and_env_names():
    from server.backends.base import BackendError, get_backend
    from server.settings import Settings

    assert get_backend("onnxruntime").name == "onnxruntime"
    with pytest.raises(BackendError, match="unknown backend"):
        get_backend("tensorrt")
    old = os.environ.get("S4D_BACKEND")
    os.environ["S4D_BACKEND"] = "onnxruntime"
    try:
        assert Settings().backend == "onnxruntime"
    finally:
        if old is None:
            del os.environ["S4D_BACKEND"]
        else:
            os.environ["S4D_BACKEND"] = old
