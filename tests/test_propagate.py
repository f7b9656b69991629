"""Colour propagation within a shot (pipeline.propagate) on synthetic shots, plus one DAVIS check."""

from __future__ import annotations

import tracemalloc
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pipeline.flow import DISFlow
from pipeline.metrics import colourfulness, psnr
from pipeline.propagate import (
    MemoryStore,
    NpyStore,
    PropagatedFrame,
    PropagationSettings,
    flow_confidence,
    fusion_weights,
    propagate_shot,
    refine_chroma,
    to_working,
    upsample_chroma,
    warp,
)

DAVIS = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis"
FLOW_ONLY = PropagationSettings(attention_every=0)  # no exemplar colorizer: synthetic tests stay fast


def tensor(a: np.ndarray) -> torch.Tensor:
    """(h, w) -> (1, 1, h, w), (C, h, w) -> (1, C, h, w), (h, w, 2) flows -> (1, 2, h, w); float32."""
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if t.ndim == 3 and t.shape[-1] == 2:
        t = t.permute(2, 0, 1)
    return t[None] if t.ndim == 3 else t[None, None]


def ab_of(frames: Iterable[PropagatedFrame]) -> list[np.ndarray]:
    """The ab of each propagated frame."""
    return [f.ab for f in frames]


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random texture, (h, w) float32 L in [25, 75]."""
    noise = np.random.default_rng(seed).random((h, w)).astype(np.float32)
    t = cv2.GaussianBlur(noise, (0, 0), 1.5)
    return (25 + 50 * (t - t.min()) / (t.max() - t.min())).astype(np.float32)


def colour_field(h: int, w: int) -> np.ndarray:
    """A smooth colour field (2, h, w) of saturated ab, tied to canvas coordinates."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([40 * np.sin(xs / 9), 40 * np.cos(ys / 7)]).astype(np.float32)


def lab_to_rgb_np(l: np.ndarray, ab: np.ndarray) -> np.ndarray:
    from model.color import lab_to_rgb

    lab = torch.from_numpy(np.concatenate([l[None], ab]).astype(np.float32))[None]
    return lab_to_rgb(lab)[0].permute(1, 2, 0).numpy()


def translating_shot(n: int, h: int, w: int, step: tuple[int, int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames of a canvas seen through a window moving ``step`` (dy, dx) px per frame: L and ab."""
    dy, dx = step
    big_h, big_w = h + abs(dy) * n + 1, w + abs(dx) * n + 1
    canvas_l, canvas_ab = texture(big_h, big_w), colour_field(big_h, big_w)
    ls, abs_ = [], []
    for t in range(n):
        y0 = t * dy if dy >= 0 else big_h - h + t * dy - 1
        x0 = t * dx if dx >= 0 else big_w - w + t * dx - 1
        ls.append(canvas_l[y0 : y0 + h, x0 : x0 + w].copy())
        abs_.append(canvas_ab[:, y0 : y0 + h, x0 : x0 + w].copy())
    return ls, abs_


def test_translating_pattern_keeps_its_colours() -> None:
    ls, truth = translating_shot(12, 64, 96, (1, 2))
    out = ab_of(propagate_shot(ls, {0: truth[0]}, store=MemoryStore(), settings=FLOW_ONLY))
    assert len(out) == 12 and out[0].shape == (2, 64, 96)
    np.testing.assert_array_equal(out[0], truth[0].astype(np.float16).astype(np.float32))
    # content enters at the right and bottom (2 and 1 px a frame): score what was in frame 0
    inner = np.s_[:, 4 : 64 - 12, 4 : 96 - 22]
    err = np.abs(out[11] - truth[11])[inner].mean()
    copy_err = np.abs(truth[0] - truth[11])[inner].mean()
    assert err < 2.0, err
    assert err < copy_err / 5


def test_long_shot_does_not_fade() -> None:
    # 300 frames, a pattern swaying left and right by up to 4 px: colour must neither fade nor drift
    h, w, n = 32, 48, 300
    canvas_l, canvas_ab = texture(h, w + 8, seed=3), colour_field(h, w + 8)
    offsets = [4 + round(4 * np.sin(2 * np.pi * t / 37)) for t in range(n)]
    ls = [canvas_l[:, o : o + w] for o in offsets]
    truth = [canvas_ab[:, :, o : o + w] for o in offsets]
    out = ab_of(propagate_shot(iter(ls), {0: truth[0]}, length=n, store=MemoryStore(), settings=FLOW_ONLY))
    start = colourfulness(lab_to_rgb_np(ls[0], out[0]))
    end = colourfulness(lab_to_rgb_np(ls[-1], out[-1]))
    assert end >= 0.9 * start, (start, end)
    inner = np.s_[:, 2:-2, 6:-6]  # away from the columns that slide in and out of view
    assert np.abs(out[-1] - truth[-1])[inner].mean() < 4.0


def occlusion_frames() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Static background, a textured square moving 10 px right: (L_s, L_t, uncovered mask of t)."""
    h, w = 96, 128
    back, square = texture(h, w, seed=1), texture(32, 32, seed=2) * 0.5 + 45
    l_s, l_t = back.copy(), back.copy()
    l_s[32:64, 42:74] = square
    l_t[32:64, 52:84] = square
    uncovered = np.zeros((h, w), bool)
    uncovered[34:62, 42:52] = True  # covered in s, background in t (the square's corners left out)
    return l_s, l_t, uncovered


def test_occlusion_confidence_is_low_where_background_is_uncovered() -> None:
    l_s, l_t, uncovered = occlusion_frames()
    dis = DISFlow()
    conf = flow_confidence(dis.flow(tensor(l_t), tensor(l_s)), dis.flow(tensor(l_s), tensor(l_t)))[0, 0].numpy()
    assert conf.shape == l_t.shape and conf.min() >= 0 and conf.max() <= 1
    far = np.zeros_like(uncovered)
    far[:, 94:] = True  # static background, away from the square
    assert conf[uncovered].mean() < 0.4, conf[uncovered].mean()
    assert conf[far].mean() > 0.95, conf[far].mean()


def test_confidence_is_restored_where_the_keyframe_still_matches() -> None:
    # film grain on a swaying pattern: the forward-backward check is never exactly met, so the
    # chained confidence decays; frames still match the keyframe, whose colours must then win
    # over the attention term (here a colorizer that knows no colour at all)
    h, w, n = 48, 64, 60
    canvas_l, canvas_ab = texture(h, w + 8, seed=4), colour_field(h, w + 8)
    grain = np.random.default_rng(5)
    offsets = [4 + round(4 * np.sin(2 * np.pi * t / 23)) for t in range(n)]
    ls = [canvas_l[:, o : o + w] + grain.normal(0, 2.0, (h, w)).astype(np.float32) for o in offsets]
    truth = [canvas_ab[:, :, o : o + w] for o in offsets]

    def grey(target_l: torch.Tensor, references: object) -> torch.Tensor:
        return torch.zeros(target_l.shape[0], 2, *target_l.shape[-2:])

    inner = np.s_[:, 2:-2, 6:-6]
    errors = {}
    for restore in (True, False):
        settings = PropagationSettings(attention_every=1, attention_min_area=0.0, restore=restore)
        out = ab_of(propagate_shot(ls, {0: truth[0]}, colorizer=grey, store=MemoryStore(), settings=settings))
        errors[restore] = np.abs(out[-1] - truth[-1])[inner].mean()
    assert errors[True] < 2.0, errors  # 1.1 measured; 4.0 without restoring
    assert errors[True] < errors[False] / 2, errors


def test_background_revealed_behind_a_moving_object_gets_its_keyframe_colours() -> None:
    # a square crosses a static background: the revealed pixels' chained keyframe coordinates
    # followed the square; the direct flow to the keyframe finds the background again
    h, w, n = 64, 128, 24
    back_l, back_ab = texture(h, w, seed=6), colour_field(h, w)
    square_l = texture(32, 32, seed=7) * 0.5 + 45
    ls, truth = [], []
    for t in range(n):
        l, ab = back_l.copy(), back_ab.copy()
        l[16:48, 4 * t : 4 * t + 32] = square_l
        ab[:, 16:48, 4 * t : 4 * t + 32] = np.array([-30.0, 50.0], np.float32)[:, None, None]
        ls.append(l)
        truth.append(ab)
    revealed = np.s_[:, 20:44, 40:60]  # seen in the keyframe, covered in frames 3-14, seen at the end
    errors = {}
    for direct in (True, False):
        settings = PropagationSettings(attention_every=0, anchor_direct=direct)
        out = ab_of(propagate_shot(ls, {0: truth[0]}, store=MemoryStore(), settings=settings))
        errors[direct] = np.abs(out[-1] - truth[-1])[revealed].mean()
    assert errors[True] < 3.0, errors  # 1.1 measured; 34 without the direct flow
    assert errors[True] < errors[False] / 4, errors


def test_output_blends_propagated_and_attention_colours_by_confidence_power(monkeypatch: pytest.MonkeyPatch) -> None:
    # still frames of one colour, the forward-backward check pinned at C = 1/4, a colorizer that
    # answers another colour: the output is C^p * propagated + (1 - C^p) * attention term
    import pipeline.propagate as propagate

    def quarter(back: torch.Tensor, fwd: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
        return torch.full((back.shape[0], 1, *back.shape[-2:]), 0.25)

    monkeypatch.setattr(propagate, "flow_confidence", quarter)
    h, w = 32, 40
    ls = [texture(h, w, seed=3)] * 2
    key = np.stack([np.full((h, w), 30.0, np.float32), np.zeros((h, w), np.float32)])

    def other(target_l: torch.Tensor, references: object) -> torch.Tensor:
        return torch.cat([torch.full_like(target_l, -10.0), torch.zeros_like(target_l)], dim=1)

    for power, a in ((1.0, 0.25 * 30 + 0.75 * -10), (0.5, 0.5 * 30 + 0.5 * -10)):
        settings = PropagationSettings(
            attention_every=1, attention_min_area=0.0, attention_blend=1.0, anchor=False, confidence_power=power
        )
        out = ab_of(propagate_shot(ls, {0: key}, colorizer=other, store=MemoryStore(), settings=settings))
        np.testing.assert_allclose(out[1][0, 4:-4, 4:-4], a, atol=0.05)


def test_attention_references_are_the_keyframe_and_optionally_the_previous_output() -> None:
    h, w, n = 32, 40, 6
    canvas_l, canvas_ab = texture(h, w + 8, seed=2), colour_field(h, w + 8)
    ls = [canvas_l[:, t : t + w] for t in range(n)]  # a pan: new content at one edge every frame
    for previous in (False, True):
        seen: list[int] = []

        def colorizer(target_l: torch.Tensor, references: list[torch.Tensor]) -> torch.Tensor:
            seen.extend([len(references)] * target_l.shape[0])  # one entry per frame coloured
            assert all(r.shape == (1, 3, h, w) for r in references)
            return torch.zeros(target_l.shape[0], 2, *target_l.shape[-2:])

        settings = PropagationSettings(attention_every=1, attention_min_area=0.0, attention_previous=previous)
        ab_of(propagate_shot(ls, {0: canvas_ab[:, :, :w]}, colorizer=colorizer, store=MemoryStore(), settings=settings))
        assert seen == [2 if previous else 1] * (n - 1)


def test_attention_colorizer_encodes_the_keyframe_once_per_array() -> None:
    from pipeline.propagate import attention_colorizer

    calls: list[tuple[int, ...]] = []

    def features(rgb: torch.Tensor) -> dict[str, torch.Tensor]:  # stand-in extractor: the grey RGB itself
        calls.append(tuple(rgb.shape))
        return {"rgb": rgb}

    rng = np.random.default_rng(0)
    l = cv2.GaussianBlur(rng.uniform(20, 80, (32, 48)).astype(np.float32), (0, 0), 2)
    key = tensor(np.concatenate([l[None], np.full((2, 32, 48), 30, np.float32)]))
    other = torch.cat([key[:, :1], -key[:, 1:]], dim=1)
    target = tensor(l)
    colorize = attention_colorizer(work_size=32, features=features)
    first = colorize(target, [key])
    assert first.shape == (1, 2, 32, 48)
    assert len(calls) == 2  # target and reference
    torch.testing.assert_close(colorize(target, [key]), first, rtol=0, atol=0)
    assert len(calls) == 3  # the same keyframe tensor: only the target is encoded
    swapped = colorize(target, [other])  # another tensor is encoded afresh, never served stale
    assert len(calls) == 5
    torch.testing.assert_close(
        swapped, attention_colorizer(work_size=32, features=features)(target, [other]), rtol=0, atol=0
    )
    assert (first - 30).abs().max() < 1 and (swapped + 30).abs().max() < 1


def test_flow_leaving_the_frame_has_no_confidence() -> None:
    flow = torch.zeros(1, 2, 8, 10)
    flow[:, 0] = -3.0  # everything comes from 3 px to the left
    conf = flow_confidence(flow, -flow)[0, 0]
    assert (conf[:, :3] == 0).all() and (conf[:, 3:] == 1).all()


def test_refine_snaps_colour_to_luma_edges() -> None:
    # the source's colour edge is 2 px off the target's luma edge: the correction moves it back
    l = np.full((16, 32), 30.0, np.float32)
    l[:, 16:] = 70.0
    l_src = np.full_like(l, 30.0)
    l_src[:, 14:] = 70.0
    ab_src = np.zeros((2, 16, 32), np.float32)
    ab_src[0, :, 14:] = 50.0
    fixed = refine_chroma(tensor(l), tensor(l_src), tensor(ab_src), radius=3)[0].numpy()
    assert np.abs(fixed[0, :, 12:16]).max() < 5.0  # dark side: no colour (was 50 at 14, 15)
    assert np.abs(fixed[0, :, 16:] - 50.0).max() < 1e-3
    np.testing.assert_array_equal(refine_chroma(tensor(l), tensor(l_src), tensor(ab_src), radius=0)[0], ab_src)


def test_fusion_weights() -> None:
    ones = torch.ones(1, 1, 4, 4)
    wa, wb = fusion_weights(ones, 5, ones, 5)
    torch.testing.assert_close(wa, torch.full_like(ones, 0.5))
    torch.testing.assert_close(wa + wb, ones)
    wa, _ = fusion_weights(ones, 2, ones, 8)
    torch.testing.assert_close(wa, torch.full_like(ones, 0.8))
    wa, _ = fusion_weights(torch.zeros_like(ones), 5, ones, 5)  # unsure forward sweep: backward wins
    assert (wa < 0.1).all()


def test_frame_between_two_keyframes_uses_both() -> None:
    l = texture(40, 56, seed=4)
    red, blue = np.zeros((2, 40, 56), np.float32), np.zeros((2, 40, 56), np.float32)
    red[0], blue[0] = 30.0, -30.0
    out = ab_of(propagate_shot([l] * 11, {0: red, 10: blue}, store=MemoryStore(), settings=FLOW_ONLY))
    np.testing.assert_allclose(out[5][0], 0.0, atol=0.5)  # halfway: half of each
    np.testing.assert_allclose(out[2][0], 0.8 * 30 - 0.2 * 30, atol=0.5)  # weights 1/2 : 1/8
    np.testing.assert_allclose(out[10][0], -30.0)


def test_frames_before_the_first_keyframe_come_from_the_backward_sweep() -> None:
    ls, truth = translating_shot(8, 48, 64, (0, 1))
    store = MemoryStore()
    out = ab_of(propagate_shot(ls, {5: truth[5]}, store=store, settings=FLOW_ONLY))
    inner = np.s_[:, 4:-4, 10:-10]
    assert np.abs(out[0] - truth[0])[inner].mean() < 2.0
    assert len(store) == 0


class CountingLuma:
    """A one-pass luma source that tracks how many of the frames it handed out are still alive."""

    def __init__(self, frames: list[np.ndarray]) -> None:
        self.frames, self.alive, self.max_alive = frames, 0, 0

    def _gone(self) -> None:
        self.alive -= 1

    def __iter__(self) -> Iterator[np.ndarray]:
        for f in self.frames:
            fresh = f.astype(np.float32)  # a new array per frame, like a decoder
            self.alive += 1
            self.max_alive = max(self.max_alive, self.alive)
            weakref.finalize(fresh, self._gone)
            yield fresh
            del fresh


def test_streaming_holds_a_bounded_number_of_frames(tmp_path: Path) -> None:
    ls, truth = translating_shot(40, 24, 32, (0, 1))
    source = CountingLuma(ls)
    store = MemoryStore()
    out = propagate_shot(source, {0: truth[0], 25: truth[25]}, length=40, store=store, settings=FLOW_ONLY)
    frames = [f.ab.shape for f in out]
    assert len(frames) == 40
    assert source.max_alive <= 3, source.max_alive  # the sweep keeps the previous frame, not the shot
    assert len(store) == 0  # everything it stored was handed out and removed

    def peak_bytes(n: int) -> int:
        long_ls = [texture(48, 64, seed=i % 3) for i in range(n)]
        tracemalloc.start()
        for _ in propagate_shot(
            iter(long_ls),
            {0: np.zeros((2, 48, 64), np.float32)},
            length=n,
            store=NpyStore(tmp_path / f"store{n}"),
            settings=FLOW_ONLY,
        ):
            pass
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    # working memory does not grow with the shot's length (the frames themselves are on disk)
    assert peak_bytes(60) < 1.5 * peak_bytes(15)


def test_npy_store_round_trip(tmp_path: Path) -> None:
    store = NpyStore(tmp_path / "s")
    a = torch.linspace(-100, 100, 24).reshape(1, 2, 3, 4)
    store.put("ab", 7, a)
    assert (tmp_path / "s" / "ab-0000007.npy").exists()
    back = store.get("ab", 7)
    assert back.dtype == torch.float32
    torch.testing.assert_close(back, a, atol=0.07, rtol=0)  # float16
    store.delete("ab", 7)
    assert not any((tmp_path / "s").iterdir())


def test_bad_inputs() -> None:
    l = [texture(16, 16)] * 3
    with pytest.raises(ValueError, match="at least one keyframe"):
        ab_of(propagate_shot(l, {}, settings=FLOW_ONLY))
    with pytest.raises(ValueError, match="outside"):
        ab_of(propagate_shot(l, {3: np.zeros((2, 16, 16))}, settings=FLOW_ONLY))
    with pytest.raises(ValueError, match="ended after 3"):
        ab_of(propagate_shot(iter(l), {0: np.zeros((2, 16, 16))}, length=5, settings=FLOW_ONLY))
    with pytest.raises(ValueError, match="does not match"):
        ab_of(propagate_shot(l, {0: np.zeros((2, 8, 8))}, settings=FLOW_ONLY))


def test_warp_follows_the_flow() -> None:
    img = tensor(texture(20, 30))
    flow = torch.zeros(1, 2, 20, 30)
    flow[:, 0] = 2.0
    torch.testing.assert_close(warp(img, flow)[..., :-2], img[..., 2:], atol=1e-4, rtol=0)
    assert (warp(img, flow, border=0.0)[..., -1] == 0).all()
    torch.testing.assert_close(warp(img, flow, border=7.0)[..., -2:], torch.full((1, 1, 20, 2), 7.0), atol=1e-3, rtol=0)


def test_working_resolution_and_4k_upsampling() -> None:
    # a 4K frame: only the working-resolution frame is processed; chroma comes back full size
    l_full = np.full((2160, 3840), 40.0, np.float32)
    l_full[:, 1921:] = 80.0  # an edge that falls inside a working-resolution pixel
    small = to_working(l_full, 256)
    assert small.shape == (256, 455)
    ab = np.zeros((2, 256, 455), np.float32)
    ab[0, :, 228:] = 60.0
    up = upsample_chroma(ab, l_full)
    assert up.shape == (2, 2160, 3840) and up.dtype == np.float32
    assert abs(float(up[0, 1000, 1900])) < 10 and abs(float(up[0, 1000, 1940]) - 60) < 10


@pytest.mark.skipif(not DAVIS.is_dir(), reason=f"DAVIS not available at {DAVIS}")
def test_davis_beats_copying_the_keyframe() -> None:
    from model.color import rgb_to_lab

    frames = sorted((DAVIS / "car-shadow" / "frames").glob("*.jpg"))[:10]
    labs = []
    for p in frames:
        rgb = (
            cv2.cvtColor(
                cv2.resize(cv2.imread(str(p)), (320, 180), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB
            ).astype(np.float32)
            / 255
        )
        labs.append(rgb_to_lab(torch.from_numpy(rgb).permute(2, 0, 1)[None])[0].numpy())
    settings = PropagationSettings(work_size=128, attention_every=4)
    luma = [to_working(lab[0], 128) for lab in labs]
    size = luma[0].shape[::-1]
    key = np.stack([cv2.resize(c, size, interpolation=cv2.INTER_AREA) for c in labs[0][1:]])
    out = ab_of(propagate_shot(luma, {0: key}, store=MemoryStore(), settings=settings))

    def score(t: int, ab: np.ndarray) -> float:
        truth = lab_to_rgb_np(labs[t][0], labs[t][1:])
        return psnr(np.clip(lab_to_rgb_np(labs[t][0], upsample_chroma(ab, labs[t][0])), 0, 1), np.clip(truth, 0, 1))

    ours = np.mean([score(t, out[t]) for t in range(1, 10)])
    copy = np.mean([score(t, key) for t in range(1, 10)])
    assert ours > copy + 1.0, (ours, copy)


def test_confidence_is_one_on_keyframes_and_falls_where_content_is_new():
    """Each frame carries its confidence map: 1 on the keyframe, lower where the content came
    in from outside the frame (a pan reveals it) than where the keyframe showed it."""
    ls, truth = translating_shot(12, 64, 96, (0, 3))
    steps: list[tuple[int, int]] = []
    out = list(
        propagate_shot(
            ls, {0: truth[0]}, store=MemoryStore(), settings=FLOW_ONLY, on_step=lambda d, t: steps.append((d, t))
        )
    )
    assert all(f.confidence.shape == ls[0].shape and f.confidence.dtype == np.float32 for f in out)
    np.testing.assert_array_equal(out[0].confidence, 1.0)
    last = out[-1].confidence
    assert last.min() >= 0.0 and last.max() <= 1.0
    assert last[8:-8, -6:].mean() < 0.5 < last[8:-8, 8:-40].mean()  # entered from the right vs seen at frame 0
    steps_done = [d for d, _ in steps]
    assert steps_done == list(range(1, 2 * len(ls) + 1)) and {t for _, t in steps} == {2 * len(ls)}
