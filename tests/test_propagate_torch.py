"""The torch propagation (pipeline.propagate, pipeline.flow) against a numpy/OpenCV reference.

The reference functions below are the numpy/OpenCV implementation the torch code replaced
(cv2.remap, cv2.boxFilter, a loop over offsets); they live here only as the reference. cv2.remap
interpolates with 1/32 px fixed-point weights, grid_sample in float32: the tolerances below
allow for that.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import pipeline.propagate as propagate
from pipeline.flow import DISFlow, TorchFlow, flow_backend, remap, warp
from pipeline.propagate import (
    MemoryStore,
    PropagationSettings,
    flow_confidence,
    fusion_weights,
    patch_error,
    propagate_shot,
    refine_chroma,
)

# --- the numpy reference ---------------------------------------------------------------------


def ref_sample_grid(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = flow.shape[:2]
    return np.arange(w, dtype=np.float32)[None, :] + flow[..., 0], np.arange(h, dtype=np.float32)[:, None] + flow[
        ..., 1
    ]


def ref_warp(image: np.ndarray, flow: np.ndarray, border: float | None = None) -> np.ndarray:
    xs, ys = ref_sample_grid(flow)
    mode = cv2.BORDER_REPLICATE if border is None else cv2.BORDER_CONSTANT
    value = 0.0 if border is None else float(border)
    return np.stack(
        [
            cv2.remap(np.ascontiguousarray(c, np.float32), xs, ys, cv2.INTER_LINEAR, borderMode=mode, borderValue=value)
            for c in image
        ]
    )


def ref_remap(image: np.ndarray, coords: np.ndarray) -> np.ndarray:
    return np.stack(
        [
            cv2.remap(
                np.ascontiguousarray(c, np.float32),
                coords[0],
                coords[1],
                cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REPLICATE,
            )
            for c in image
        ]
    )


def ref_patch_error(l: np.ndarray, other: np.ndarray, size: int = 3) -> np.ndarray:
    return cv2.boxFilter((l - other) ** 2, -1, (size, size), borderType=cv2.BORDER_REPLICATE)


def ref_flow_confidence(back: np.ndarray, fwd: np.ndarray, alpha: float = 0.01, beta: float = 0.5) -> np.ndarray:
    back_fwd = ref_warp(fwd.transpose(2, 0, 1), back).transpose(1, 2, 0)
    err = ((back + back_fwd) ** 2).sum(-1)
    tol = alpha * ((back**2).sum(-1) + (back_fwd**2).sum(-1)) + beta
    xs, ys = ref_sample_grid(back)
    h, w = back.shape[:2]
    inside = (xs >= 0) & (xs <= w - 1) & (ys >= 0) & (ys <= h - 1)
    return np.where(inside, np.exp(-np.maximum(err / tol - 1.0, 0.0)), 0.0).astype(np.float32)


def ref_refine(l: np.ndarray, l_src: np.ndarray, ab_src: np.ndarray, r: int = 3, temp: float = 2.0, pen: float = 0.5):
    h, w = l.shape
    src = cv2.copyMakeBorder(
        np.dstack([l_src, ab_src[0], ab_src[1]]).astype(np.float32), r, r, r, r, cv2.BORDER_REPLICATE
    )
    offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
    cost = np.empty((len(offsets), h, w), np.float32)
    for i, (dy, dx) in enumerate(offsets):
        cost[i] = ref_patch_error(l, src[r + dy : r + dy + h, r + dx : r + dx + w, 0]) + pen * (dy * dy + dx * dx)
    cost -= cost.min(axis=0)
    weights = np.exp(cost * np.float32(-1.0 / temp))
    out = np.zeros((h, w, 2), np.float32)
    for i, (dy, dx) in enumerate(offsets):
        out += weights[i, ..., None] * src[r + dy : r + dy + h, r + dx : r + dx + w, 1:]
    return (out / weights.sum(axis=0)[..., None]).transpose(2, 0, 1)


def ref_dis(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    dis = cv2.DISOpticalFlow.create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis.setFinestScale(0)
    u8 = [np.clip(x * 2.55 + 0.5, 0, 255).astype(np.uint8) for x in (a, b)]
    return dis.calc(u8[0], u8[1], None)


def ref_sweep(ls: list[np.ndarray], key_ab: np.ndarray, s: PropagationSettings) -> list[np.ndarray]:
    """A forward sweep from frame 0 without the attention term (steps a-d of the method)."""
    key_lab = np.concatenate([ls[0][None], key_ab]).astype(np.float32)
    h, w = ls[0].shape
    prev_l, ab, conf = ls[0], key_ab, np.ones((h, w), np.float32)
    anchor = np.stack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)))
    out = [key_ab]
    for l in ls[1:]:
        back, fwd = ref_dis(l, prev_l), ref_dis(prev_l, l)
        consistency = ref_flow_confidence(back, fwd, s.consistency_alpha, s.consistency_beta)
        l_src = ref_warp(prev_l[None], back)[0]
        propagated = ref_refine(l, l_src, ref_warp(ab, back), s.search_radius, s.match_temperature, s.distance_penalty)
        conf = ref_warp(conf[None], back, border=0.0)[0] * consistency
        coords = ref_warp(anchor, back)
        coords = ref_warp(coords, ref_dis(l, ref_remap(key_lab[:1], coords)[0]))
        unsure = conf < propagate.UNSURE
        if unsure.any():
            flow = ref_dis(l, key_lab[0])
            checked = ref_flow_confidence(flow, ref_dis(key_lab[0], l)) > propagate.UNSURE
            direct = np.stack(ref_sample_grid(flow))
            closer = ref_patch_error(l, ref_remap(key_lab[:1], direct)[0], 5) < s.anchor_direct_ratio * ref_patch_error(
                l, ref_remap(key_lab[:1], coords)[0], 5
            )
            coords = np.where((unsure & checked & closer)[None], direct, coords)
        anchor = coords
        anchored = ref_remap(key_lab, coords)
        key_col = ref_refine(l, anchored[0], anchored[1:], s.search_radius, s.match_temperature, s.distance_penalty)
        err = ref_patch_error(l, anchored[0])
        weight = conf * np.exp(-err / s.anchor_scale)
        blended = weight * key_col + (1.0 - weight) * propagated
        gain = (1.0 - conf) * np.exp(-err / s.restore_scale)
        total = conf + gain
        ab = blended + gain / np.maximum(total, 1e-6) * (key_col - blended)
        conf, prev_l = total, l
        out.append(ab)
    return out


# --- synthetic frames --------------------------------------------------------------------------


def texture(h: int, w: int, seed: int = 0, sigma: float = 1.5) -> np.ndarray:
    noise = np.random.default_rng(seed).random((h, w)).astype(np.float32)
    t = cv2.GaussianBlur(noise, (0, 0), sigma)
    return (25 + 50 * (t - t.min()) / (t.max() - t.min())).astype(np.float32)


def t4(a: np.ndarray) -> torch.Tensor:
    """(h, w) -> (1, 1, h, w); (C, h, w) -> (1, C, h, w)."""
    x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    return x[None] if x.ndim == 3 else x[None, None]


def smooth_flow(h: int, w: int, seed: int, scale: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.dstack(
        [cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 6) * scale for _ in range(2)]
    )


# --- the pieces --------------------------------------------------------------------------------


@pytest.mark.parametrize("border", [None, 0.0, 5.0])
def test_warp_matches_cv2_remap(border: float | None) -> None:
    img = np.stack([texture(40, 56, 1), texture(40, 56, 2)])
    flow = smooth_flow(40, 56, 3, 40.0)  # several px, some of it leaving the frame
    ours = warp(t4(img), t4(flow.transpose(2, 0, 1)), border)[0].numpy()
    ref = ref_warp(img, flow, border)
    # cv2.remap's 1/32 px weights on a texture of gradient <= ~10 L/px: < 0.2 L units
    assert np.abs(ours - ref).max() < 0.2, np.abs(ours - ref).max()
    assert np.abs(ours - ref).mean() < 0.02


def test_remap_at_pixel_centres_is_exact() -> None:
    img = t4(texture(12, 20, 4))
    ys, xs = torch.meshgrid(torch.arange(12.0), torch.arange(20.0), indexing="ij")
    coords = torch.stack([xs.flip(1), ys])[None]  # a mirror, on whole pixels
    torch.testing.assert_close(remap(img, coords), img.flip(-1), atol=1e-4, rtol=0)


@pytest.mark.parametrize("size", [3, 5])
def test_patch_error_matches_box_filter(size: int) -> None:
    a, b = texture(30, 44, 5), texture(30, 44, 6)
    ours = patch_error(t4(a), t4(b), size)[0, 0].numpy()
    np.testing.assert_allclose(ours, ref_patch_error(a, b, size), rtol=1e-4, atol=1e-3)


def test_flow_confidence_matches_reference() -> None:
    back, fwd = smooth_flow(36, 48, 7, 30.0), smooth_flow(36, 48, 8, 30.0)
    ours = flow_confidence(t4(back.transpose(2, 0, 1)), t4(fwd.transpose(2, 0, 1)))[0, 0].numpy()
    ref = ref_flow_confidence(back, fwd)
    assert ours.shape == ref.shape and 0 < (ref == 0).mean() < 0.5  # some pixels leave the frame
    assert np.abs(ours - ref).max() < 0.02, np.abs(ours - ref).max()


def test_refine_chroma_matches_reference() -> None:
    l, l_src = texture(32, 40, 9), texture(32, 40, 10)
    ab = np.stack([texture(32, 40, 11) - 50, 50 - texture(32, 40, 12)])
    ours = refine_chroma(t4(l), t4(l_src), t4(ab))[0].numpy()
    np.testing.assert_allclose(ours, ref_refine(l, l_src, ab), atol=1e-3)
    # batched: two frames at once give each frame's own result
    both = refine_chroma(torch.cat([t4(l), t4(l_src)]), torch.cat([t4(l_src), t4(l)]), torch.cat([t4(ab), t4(ab)]))
    np.testing.assert_allclose(both[1].numpy(), ref_refine(l_src, l, ab), atol=1e-3)


def test_fusion_weights_closed_form() -> None:
    conf_a, conf_b = torch.tensor([0.0, 0.5, 1.0]), torch.tensor([1.0, 0.5, 0.0])
    wa, wb = fusion_weights(conf_a, 2, conf_b, 6)
    expected = (conf_a + 0.05) / 2 / ((conf_a + 0.05) / 2 + (conf_b + 0.05) / 6)
    torch.testing.assert_close(wa, expected)
    torch.testing.assert_close(wa + wb, torch.ones(3))


def test_whole_shot_matches_the_reference_sweep() -> None:
    # a swaying, drifting textured pattern, flow only (no attention term), one keyframe
    h, w, n = 48, 64, 10
    canvas = texture(h + 8, w + 24, 13)
    ys, xs = np.mgrid[0 : h + 8, 0 : w + 24].astype(np.float32)
    canvas_ab = np.stack([40 * np.sin(xs / 9), 40 * np.cos(ys / 7)]).astype(np.float32)
    offsets = [(4 + round(3 * np.sin(t / 2)), 8 + t) for t in range(n)]
    ls = [canvas[y : y + h, x : x + w].copy() for y, x in offsets]
    truth = [canvas_ab[:, y : y + h, x : x + w] for y, x in offsets]
    settings = PropagationSettings(attention_every=0, flow="dis")
    ours = [f.ab for f in propagate_shot(ls, {0: truth[0]}, store=MemoryStore(), settings=settings)]
    ref = ref_sweep(ls, truth[0], settings)
    inner = np.s_[:, 4:-4, 4:-4]
    diff = [float(np.abs(a - b)[inner].mean()) for a, b in zip(ours[1:], ref[1:], strict=True)]
    err_ref = float(np.abs(ref[-1] - truth[-1])[inner].mean())
    err_ours = float(np.abs(ours[-1] - truth[-1])[inner].mean())
    # the same method: mean |ab| difference below 0.05 (of colours up to 40; 0.005 measured, the
    # float16 store included) on every frame, and the same error against the truth within 0.05
    assert max(diff) < 0.05, diff
    assert abs(err_ours - err_ref) < 0.05, (err_ours, err_ref)


# --- the flow backends ---------------------------------------------------------------------------


def shifted_pair(dx: float, dy: float, seed: int = 14) -> tuple[np.ndarray, np.ndarray]:
    """Frames a, b of a texture with ``a(x) = b(x + (dx, dy))`` (b is a shifted by (dx, dy), cubic)."""
    big = texture(200, 260, seed, sigma=2.5)
    moved = cv2.warpAffine(big, np.float32([[1, 0, dx], [0, 1, dy]]), (260, 200), flags=cv2.INTER_CUBIC)
    return big[30:158, 30:222].copy(), moved[30:158, 30:222].copy()


@pytest.mark.parametrize(("dx", "dy"), [(0.4, -0.3), (2.6, 1.2), (-5.5, 3.0)])
def test_torch_flow_finds_sub_pixel_translations(dx: float, dy: float) -> None:
    a, b = shifted_pair(dx, dy)
    flow = TorchFlow().flow(t4(a), t4(b))[0, :, 16:-16, 16:-16]
    # sub-pixel: measured median error <= 0.05 px, mean absolute error <= 0.06 px per component
    assert abs(float(flow[0].median()) - dx) < 0.08 and abs(float(flow[1].median()) - dy) < 0.08
    assert float((flow[0] - dx).abs().mean()) < 0.1 and float((flow[1] - dy).abs().mean()) < 0.1


def test_torch_flow_is_batched() -> None:
    pairs = [shifted_pair(1.5, 0.5), shifted_pair(-2.0, 1.0, seed=15)]
    flows = TorchFlow().flow(torch.cat([t4(a) for a, _ in pairs]), torch.cat([t4(b) for _, b in pairs]))
    assert flows.shape == (2, 2, 128, 192)
    for i, (a, b) in enumerate(pairs):
        torch.testing.assert_close(flows[i : i + 1], TorchFlow().flow(t4(a), t4(b)), atol=1e-4, rtol=0)


def test_dis_and_torch_flows_agree() -> None:
    a, b = shifted_pair(3.2, -1.4)
    dis = DISFlow().flow(t4(a), t4(b))[0, :, 16:-16, 16:-16]
    ours = TorchFlow().flow(t4(a), t4(b))[0, :, 16:-16, 16:-16]
    assert float((dis - ours).norm(dim=0).median()) < 0.1
    # and warping b by either flow gives back a
    for flow in (DISFlow().flow(t4(a), t4(b)), TorchFlow().flow(t4(a), t4(b))):
        err = (warp(t4(b), flow) - t4(a))[0, 0, 16:-16, 16:-16].abs().mean()
        assert float(err) < 0.5, float(err)


def test_flow_backend_choice() -> None:
    assert isinstance(flow_backend("auto", "cpu"), DISFlow)
    assert isinstance(flow_backend("auto", "cuda"), DISFlow)  # the torch flow is not as good yet
    assert isinstance(flow_backend("torch", "cpu"), TorchFlow)
    with pytest.raises(ValueError, match="unknown flow method"):
        flow_backend("raft", "cpu")  # type: ignore[arg-type]


# --- the frame loop stays in torch -----------------------------------------------------------


class _NoNumpy:
    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"np.{name} inside the frame loop")


def test_frame_loop_never_leaves_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    h, w, n = 32, 48, 9
    canvas = texture(h, w + n, 16)
    ls = [torch.from_numpy(canvas[:, t : t + w].copy()) for t in range(n)]
    keys = {0: np.full((2, h, w), 20.0, np.float32), 6: np.full((2, h, w), -20.0, np.float32)}
    calls: list[int] = []

    def colorizer(target_l: torch.Tensor, references: list[torch.Tensor]) -> torch.Tensor:
        calls.append(target_l.shape[0])
        return torch.zeros(target_l.shape[0], 2, *target_l.shape[-2:]) + references[0][:, 1:].mean()

    def leaves(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the frame loop left torch")

    def guarded(run: object) -> object:
        def inner(*args: object, **kwargs: object) -> object:
            with monkeypatch.context() as m:
                for name in ("numpy", "tolist", "item", "cpu"):
                    m.setattr(torch.Tensor, name, leaves)
                m.setattr(propagate, "np", _NoNumpy())
                return run(*args, **kwargs)  # type: ignore[operator]

        return inner

    monkeypatch.setattr(propagate, "_forward", guarded(propagate._forward))
    monkeypatch.setattr(propagate, "_backward", guarded(propagate._backward))
    settings = PropagationSettings(flow="torch", attention_every=2, attention_min_area=0.0, flow_batch=4)
    out = list(propagate_shot(iter(ls), keys, length=n, colorizer=colorizer, store=MemoryStore(), settings=settings))
    assert len(out) == n and max(calls) > 1  # the attention term ran inside the loop, batched
    assert all(f.ab.dtype == np.float32 and f.ab.shape == (2, h, w) for f in out)
    assert out[3].ab[0].mean() == pytest.approx(0.0, abs=20.0) and out[8].ab[0].mean() < 0

    # the guard works: the DIS backend (OpenCV, on the host) trips it
    with pytest.raises(AssertionError, match="left torch|inside the frame loop"):
        list(
            propagate_shot(
                iter(ls),
                keys,
                length=n,
                store=MemoryStore(),
                settings=PropagationSettings(attention_every=0, flow="dis"),
            )
        )


def test_streamed_frames_in_chunks_match_one_at_a_time() -> None:
    h, w, n = 32, 40, 11
    canvas = texture(h, w + n, 17)
    ls = [canvas[:, t : t + w].copy() for t in range(n)]
    key = {0: np.full((2, h, w), 25.0, np.float32), 10: np.full((2, h, w), -25.0, np.float32)}

    def run(batch: int) -> Iterator[np.ndarray]:
        settings = PropagationSettings(attention_every=0, flow="torch", flow_batch=batch)
        return (f.ab for f in propagate_shot(ls, key, store=MemoryStore(), settings=settings))

    for a, b in zip(run(1), run(4), strict=True):
        np.testing.assert_allclose(a, b, atol=0.05)


def test_attention_colorizer_batch_equals_one_frame_at_a_time() -> None:
    from pipeline.propagate import attention_colorizer

    passes: list[int] = []

    def features(rgb: torch.Tensor) -> dict[str, torch.Tensor]:  # stand-in extractor, two levels
        passes.append(rgb.shape[0])
        return {"rgb": rgb, "half": torch.nn.functional.avg_pool2d(rgb, 2)}

    frames = torch.cat([t4(texture(40, 56, s)) for s in (18, 19, 20)])
    key = torch.cat([frames[:1], t4(np.stack([texture(40, 56, 21) - 50, 50 - texture(40, 56, 22)]))], dim=1)
    batched = attention_colorizer(work_size=32, features=features)(frames, [key])
    assert batched.shape == (3, 2, 40, 56)
    assert passes == [1, 3]  # the keyframe, then the three targets in one pass
    single = attention_colorizer(work_size=32, features=features)
    for i in range(3):
        torch.testing.assert_close(batched[i : i + 1], single(frames[i : i + 1], [key]), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_models_are_loaded_once_per_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # the demo reel: three shots, exemplar keyframes (one with object masks) and the attention
    # term in every shot; VGG-16 must be read from disk once for all of them
    import model.features
    from pipeline.colorize import clear_shared_models
    from pipeline.run import RunSettings, run_reel

    demo = Path(__file__).resolve().parents[1] / "examples" / "demo"
    loads: list[str] = []
    real = model.features.load_vgg16

    def counted(*args: object, **kwargs: object) -> object:
        loads.append("vgg16")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(model.features, "load_vgg16", counted)
    clear_shared_models()
    try:
        out = tmp_path / "demo.mkv"
        run_reel(
            demo / "reel.mov",
            demo / "refs",
            out,
            workdir=tmp_path / "work",
            settings=RunSettings(codec="ffv1", device="cpu"),
        )
        assert out.exists()
    finally:
        clear_shared_models()
    assert loads == ["vgg16"], loads


def test_attention_colorizers_share_one_superpixel_thread() -> None:
    import threading

    from pipeline.propagate import attention_colorizer

    def features(rgb: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"rgb": rgb}

    frames = torch.cat([t4(texture(24, 32, s)) for s in (23, 24)])
    key = torch.cat([frames[:1], torch.full((1, 2, 24, 32), 10.0)], dim=1)
    for _ in range(3):  # one colorizer per shot, as the engine makes them
        attention_colorizer(work_size=24, features=features)(frames, [key])
    assert sum(t.name.startswith("postprod-slic") for t in threading.enumerate()) == 1


def test_refine_chroma_in_bands_matches_reference() -> None:
    h = 2 * propagate.REFINE_BAND + 22  # three bands, the last one short
    l, l_src = texture(h, 36, 25), texture(h, 36, 26)
    ab = np.stack([texture(h, 36, 27) - 50, 50 - texture(h, 36, 28)])
    np.testing.assert_allclose(refine_chroma(t4(l), t4(l_src), t4(ab))[0].numpy(), ref_refine(l, l_src, ab), atol=1e-3)
