"""The benchmarks' code: bench.baselines on synthetic Lab images, a tiny bench.harness run on
DAVIS, the Markdown and JSON of bench.toolkit, and the other benches on small inputs."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from bench.baselines import copy_chroma, grey, reinhard, welsh
from bench.harness import main, markdown_tables, run
from bench.toolkit import DEFAULT_DAVIS, available_methods, load_pairs, markdown_table, write_json


def two_colour_reference() -> tuple[np.ndarray, np.ndarray]:
    """(8, 8, 3) Lab reference: left half (60, 40, 10), right half (30, -20, -30); mask = left half."""
    ref = np.zeros((8, 8, 3), np.float32)
    ref[:, :4] = (60, 40, 10)
    ref[:, 4:] = (30, -20, -30)
    mask = np.zeros((8, 8), bool)
    mask[:, :4] = True
    return ref, mask


def test_grey_and_copy_chroma() -> None:
    ref, _ = two_colour_reference()
    target_l = np.full((4, 6), 50, np.float32)
    assert grey(target_l, [ref], None).shape == (4, 6, 2) and not grey(target_l, [ref], None).any()
    ab = copy_chroma(target_l, [ref], None)
    assert ab.shape == (4, 6, 2)
    assert np.allclose(ab[:, 0], (40, 10)) and np.allclose(ab[:, -1], (-20, -30))  # resized, left stays left


def test_reinhard_gives_the_reference_mean_and_uses_masks() -> None:
    ref, ref_mask = two_colour_reference()
    target_l = np.full((6, 6), 50, np.float32)
    assert np.allclose(reinhard(target_l, [ref], None), (10, -10), atol=1e-4)  # grey target -> mean ab
    t_mask = np.zeros((6, 6), bool)
    t_mask[:2] = True
    ab = reinhard(target_l, [ref], [[(t_mask, ref_mask)]])
    assert np.allclose(ab[t_mask], (40, 10), atol=1e-4) and np.allclose(ab[~t_mask], (-20, -30), atol=1e-4)


def test_welsh_matches_by_luminance_and_takes_reference_colours() -> None:
    ref, _ = two_colour_reference()
    target_l = np.zeros((6, 8), np.float32)
    target_l[:, :4], target_l[:, 4:] = 70, 20  # bright left, dark right, as in the reference
    ab = welsh(target_l, [ref], None)
    assert np.allclose(ab[2, 0], (40, 10)) and np.allclose(ab[2, -1], (-20, -30))
    assert np.isin(ab[..., 0], ref[..., 1]).all()  # every colour comes from the reference


def test_results_json_is_strict_and_replaced(tmp_path: Path) -> None:
    out = tmp_path / "results" / "r.json"
    result = {
        "empty_mask": float("nan"),
        "scores": (np.float32(1.5), float("inf")),
        "sizes": np.arange(3),
        "reel": Path("a") / "b.mkv",
        "fps": Fraction(24000, 1001),
    }
    write_json(out, result)
    assert json.loads(out.read_text()) == {
        "empty_mask": None,
        "scores": [1.5, None],
        "sizes": [0, 1, 2],
        "reel": str(Path("a") / "b.mkv"),
        "fps": "24000/1001",
    }
    write_json(out, [1])
    assert json.loads(out.read_text()) == [1] and [p.name for p in out.parent.iterdir()] == ["r.json"]


def test_markdown_table_leaves_empty_cells_blank() -> None:
    table = markdown_table(["method", "PSNR", "s"], [["copy", "20.00", 1], ["(truth)", "", ""]])
    assert table == "| method | PSNR | s |\n|---|---|---|\n| copy | 20.00 | 1 |\n| (truth) | | |"


@pytest.fixture(scope="module")
def davis() -> Path:
    if not (DEFAULT_DAVIS / "blackswan" / "frames").is_dir():
        pytest.skip(f"DAVIS data not found at {DEFAULT_DAVIS} (../shared/data/davis)")
    return DEFAULT_DAVIS


def test_tiny_run_one_sequence_one_pair(davis: Path) -> None:
    from model.lpips import load_lpips

    pairs = load_pairs(davis, ["blackswan"], max_pairs_per_seq=1, size=128)
    assert len(pairs) == 1 and (pairs[0].target_frame, pairs[0].reference_frame) == (10, 0)
    assert pairs[0].target_rgb.shape == (72, 128, 3) and pairs[0].target_mask.shape == (72, 128)
    assert pairs[0].target_mask.any() and pairs[0].reference_mask.any()
    methods = available_methods(["grey", "copy-chroma", "reinhard"])
    result = run(pairs, methods, ("A", "B"), load_lpips())
    a, b = result["A"], result["B"]
    assert a["grey"]["colourfulness"] < 0.5 and a["copy-chroma"]["colourfulness"] > 5
    assert a["copy-chroma"]["psnr"] > a["grey"]["psnr"]  # the true colours 10 frames earlier beat none
    assert all(np.isfinite(v) for row in a.values() for v in row.values())
    assert set(b) == {"grey", "copy-chroma", "reinhard", "reinhard +masks"}
    assert b["reinhard +masks"]["ab_error_in_mask"] < b["reinhard"]["ab_error_in_mask"]
    table = markdown_tables(result)
    assert "| copy-chroma |" in table and "| reinhard +masks |" in table


def test_main_writes_json(davis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "res" / "h.json"
    code = main(
        [
            "--protocol",
            "B",
            "--sequences",
            "dog",
            "--max-pairs-per-seq",
            "1",
            "--size",
            "96",
            "--methods",
            "grey",
            "copy-chroma",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    data = json.loads(out.read_text())
    assert "A" not in data and set(data["B"]) == {"grey", "copy-chroma"}
    assert data["config"]["sequences"] == ["dog"] and len(data["pairs"]) == 1
    assert "Protocol B" in capsys.readouterr().out


def test_missing_davis_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--davis", str(tmp_path / "nope"), "--methods", "grey", "--out", str(tmp_path / "h.json")])
    err = capsys.readouterr().err
    assert code == 2 and "DAVIS folder not found" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "variant, max_frames, verdict", [("first", None, True), ("first", 30, False), ("first+last", None, False)]
)
def test_propagation_bench_gives_a_verdict_only_on_issue_5s_protocol(
    variant: str, max_frames: int | None, verdict: bool
) -> None:
    from bench.bench_propagation import markdown

    summary = {"full": {"psnr": 33.5, "fps": 1.0}, "truth": {"warp_error": 1e-3, "cdc": 0.004}}
    result = {
        "config": {"max_frames": max_frames},
        "variants": {variant: {"shots": {"camel": {"full": {"psnr": 33.5}}}, "summary": summary}},
    }
    text = markdown(result)
    assert ("met (33.50 dB)" in text) == verdict
    assert ("no verdict" in text) != verdict


def test_tuning_settings_parse_json_values_and_name_bad_fields() -> None:
    from bench.bench_tuning import parse_settings
    from pipeline.errors import PostprodError

    settings = parse_settings(["confidence_power=1", "restore=false", "attention_position_sigma=null"])
    assert (settings.confidence_power, settings.restore, settings.attention_position_sigma) == (1, False, None)
    assert parse_settings([]) == type(settings)()
    with pytest.raises(PostprodError, match="--set bogus=1: expected FIELD=VALUE"):
        parse_settings(["bogus=1"])
    with pytest.raises(PostprodError, match="not JSON"):
        parse_settings(["restore=maybe"])


def test_tuning_bench_scores_a_colour_reel(tmp_path: Path) -> None:
    import av

    from bench.bench_tuning import load_tuning_shots, main
    from bench.toolkit import compose
    from pipeline.metrics import psnr

    reel = tmp_path / "colour.mkv"
    with av.open(str(reel), "w") as container:
        stream = container.add_stream("ffv1", rate=24)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv444p"
        ys, xs = np.mgrid[0:64, 0:96]
        for t in range(14):  # a red disc crossing a blue-to-green ramp, 2 px per frame
            rgb = np.stack([np.full((64, 96), 40), 60 + xs * 1.5, 200 - xs * 1.5], -1)
            rgb[(xs - 20 - 2 * t) ** 2 + (ys - 32) ** 2 < 144] = (210, 40, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    out = tmp_path / "tuning.json"
    assert main(["--reels", str(reel), "--max-frames", "12", "--set", "attention_every=0", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["frames"] == 11 and result["changed"] == ["attention_every=0"]
    (shot,) = load_tuning_shots([reel], 12)
    copy = np.mean([psnr(compose(shot.lab[t, 0], shot.lab[0, 1:]), shot.rgb[t]) for t in range(1, shot.n)])
    assert result["psnr_frames"] > copy + 10, (result["psnr_frames"], copy)  # measured 32.5 vs 17.6 dB


def test_tuning_bench_names_a_reel_it_cannot_decode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.bench_tuning import main

    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    assert main(["--reels", str(bad), "--out", str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{bad}: ") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "t.json").exists()


def test_reel_bench_refs_are_the_true_frames_as_png(davis: Path, tmp_path: Path) -> None:
    """The reel protocol: ``frame-<N>.png`` refs at each shot's keyframes, pixel for pixel the
    true frames that the bench scores against; the grey reel has every frame."""
    import av
    import cv2

    from bench.bench_run import build_reel

    reel, refs, shots = build_reel(davis, ["blackswan", "camel"], 3, "first+last", tmp_path)
    assert [(s.name, s.start, s.end) for s in shots] == [("blackswan", 0, 3), ("camel", 3, 6)]
    assert sorted(p.name for p in refs.iterdir()) == ["frame-0.png", "frame-2.png", "frame-3.png", "frame-5.png"]
    for name, frame in [("frame-2.png", shots[0].frames[2]), ("frame-3.png", shots[1].frames[0])]:
        assert np.array_equal(cv2.imread(str(refs / name)), cv2.imread(str(frame)))
    with av.open(str(reel)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 6


def test_film_bench_runs_a_grey_film_with_a_photo_and_writes_a_contact_sheet(tmp_path: Path) -> None:
    import cv2

    from bench.bench_film import MOMENTS, SHEET_HEIGHT, main
    from pipeline.media.synth import write_grey_reel

    film = tmp_path / "film"
    (film / "tiny-refs").mkdir(parents=True)
    ys, xs = np.mgrid[0:64, 0:96]
    greys = [
        np.clip(60 + xs + 40 * ((xs - 20 - 2 * t) ** 2 + (ys - 32) ** 2 < 144), 0, 255).astype(np.uint8)
        for t in range(10)
    ]
    write_grey_reel(film / "tiny.mp4", greys, Fraction(24), timecode="01:00:00:00")  # no sound, like the films
    photo = np.stack([np.full((64, 96), 40), 60 + xs * 1.5, 200 - xs * 1.5], -1).astype(np.uint8)  # RGB
    cv2.imwrite(str(film / "tiny-refs" / "a.png"), photo[..., ::-1])
    out = tmp_path / "results" / "film.json"
    assert main(["--film", str(film), "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["film"] == "tiny" and row["reference"] == "a.png" and row["frames"] == 10
    assert row["media"]["ok"], row["media"]
    assert row["colourfulness_first_quarter"] > 5.0  # the grey film took the photo's colours
    assert 0.0 <= row["warp_error_input"] < 0.01 and 0.0 <= row["warp_error"] < 0.01
    sheet = cv2.imread(row["contact_sheet"])
    assert sheet.shape[0] == 2 * SHEET_HEIGHT and sheet.shape[1] == (1 + MOMENTS) * SHEET_HEIGHT * 96 // 64


def test_film_bench_names_a_film_without_references(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.bench_film import main

    (tmp_path / "lonely.mp4").write_bytes(b"")
    assert main(["--film", str(tmp_path), "--out", str(tmp_path / "f.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"{tmp_path / 'lonely-refs'}: no reference images"


def test_film_bench_names_a_film_postprod_cannot_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import cv2

    from bench.bench_film import main

    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    (tmp_path / "broken-refs").mkdir()
    cv2.imwrite(str(tmp_path / "broken-refs" / "a.png"), np.full((8, 8, 3), (0, 0, 255), np.uint8))
    assert main(["--film", str(tmp_path), "--out", str(tmp_path / "f.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "failed, see" in err, err
    assert not (tmp_path / "f.json").exists()


def test_film_bench_names_an_unreadable_photo_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.bench_film import main

    (tmp_path / "film.mp4").write_bytes(b"not looked at")
    (tmp_path / "film-refs").mkdir()
    (tmp_path / "film-refs" / "a.jpg").write_bytes(b"not a jpeg")
    assert main(["--film", str(tmp_path), "--out", str(tmp_path / "f.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(str(tmp_path / "film-refs" / "a.jpg")), err
