"""Training pipeline (model/train.py, ``postprod train``): pairs, losses, a CI smoke training with resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from cli.main import cli
from model.color import rgb_to_lab
from model.net import load_colornet
from model.train import Bank, TrainConfig, build_bank, losses, random_warp_grid, sample_batch
from pipeline.images import list_sequences


def _write_photos(folder: Path, count: int, size: tuple[int, int] = (40, 56)) -> Path:
    """Smooth random colour images (blobs of colour plus a gradient) as PNGs."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        coarse = rng.uniform(0, 1, (4, 5, 3)).astype(np.float32)
        img = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize(size[::-1], Image.BILINEAR))
        Image.fromarray(img).save(folder / f"photo{i}.png")
    return folder


def test_identity_warp_is_identity() -> None:
    grid = random_warp_grid(2, 16, (0.0, 0.0, 0.0), 0.0, torch.Generator().manual_seed(0))
    identity = F.affine_grid(torch.eye(2, 3)[None].expand(2, 2, 3), [2, 1, 16, 16], align_corners=False)
    assert torch.allclose(grid, identity, atol=1e-4)


def test_bank_reads_through_the_injected_reader() -> None:
    """model/ opens no image file: photos and frames come in as paths and a reader (here in memory)."""
    rng = np.random.default_rng(0)
    pixels = {Path(f"p{i}"): rng.uniform(0, 1, (40, 48, 3)).astype(np.float32) for i in range(2)}
    frames = [Path(f"f{i}") for i in range(12)]
    pixels |= {f: rng.uniform(0, 1, (40, 48, 3)).astype(np.float32) for f in frames}
    read: list[Path] = []

    def reader(path: Path) -> np.ndarray:
        read.append(path)
        return pixels[path]

    bank = build_bank(list(pixels)[:2], [frames], reader, size=24, seed=0, log=lambda _: None)
    # 4 windows per photo, one group each; the 12-frame sequence gives pairs at frames 0 and 10
    assert [len(g) for g in bank.groups] == [4, 4, 2, 2]
    assert bank.rgb.shape == (12, 3, 24, 24) and bank.labels.shape == (12, 24, 24)
    assert set(read) >= {Path("p0"), Path("p1"), Path("f0"), Path("f10")}


def test_frame_sequences_are_sub_folders_or_the_folder(tmp_path: Path) -> None:
    for name in ("a", "b"):
        _write_photos(tmp_path / "seqs" / name, 2)
    (tmp_path / "seqs" / "empty").mkdir()
    assert [[p.name for p in q] for q in list_sequences(tmp_path / "seqs")] == [["photo0.png", "photo1.png"]] * 2
    flat = _write_photos(tmp_path / "flat", 3)
    assert [len(q) for q in list_sequences(flat)] == [3]


def test_sample_batch_pairs() -> None:
    gen = torch.Generator().manual_seed(0)
    rgb = (torch.rand(6, 3, 24, 24, generator=gen) * 255).to(torch.uint8)
    labels = (torch.arange(24)[:, None] // 6 * 4 + torch.arange(24)[None, :] // 6).expand(6, 24, 24).to(torch.int16)
    bank = Bank(rgb, labels, [[0, 1, 2], [3, 4, 5]])
    config = TrainConfig(batch=4, size=24)
    target, labels_t, ref, labels_r = sample_batch(bank, config, torch.Generator().manual_seed(1))
    assert target.shape == ref.shape == (4, 3, 24, 24) and labels_t.shape == labels_r.shape == (4, 24, 24)
    assert labels_t.dtype == labels_r.dtype == torch.int64
    assert set(labels_r.unique().tolist()) <= set(range(-1, 16))  # warped labels keep the ids, -1 outside
    # the target is one of the bank's windows (maybe flipped), exactly: L comes from the ground truth
    windows = rgb_to_lab(bank.rgb.float() / 255)
    assert all(
        any(torch.allclose(t, w, atol=1e-4) or torch.allclose(t, w.flip(-1), atol=1e-4) for w in windows)
        for t in target
    )
    again = sample_batch(bank, config, torch.Generator().manual_seed(1))
    assert torch.equal(again[2], ref)  # the seed fixes the pair, warp and colour jitter


def test_losses_vanish_on_the_ground_truth() -> None:
    from model.features import load_vgg16
    from model.train import PerceptualLoss

    lab = rgb_to_lab(torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(0)))
    lpips = PerceptualLoss(load_vgg16())
    exact = losses(lab[:, 1:], lab, lpips)
    off = losses(lab[:, 1:] + 10, lab, lpips)
    assert float(exact["total"]) < 1e-6 < float(off["ab"]) and float(off["lpips"]) > 0


def _train(runner: CliRunner, data: Path, out: Path, steps: int, *extra: str):
    return runner.invoke(
        cli,
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(out),
            "--steps",
            str(steps),
            "--batch",
            "2",
            "--size",
            "32",
            "--eval-every",
            "2",
            "--device",
            "cpu",
            "--seed",
            "3",
            *extra,
        ],
    )


def test_train_smoke_checkpoint_and_resume(tmp_path: Path) -> None:
    data = _write_photos(tmp_path / "photos", 3)
    runner = CliRunner()
    first = _train(runner, data, tmp_path / "run", 2)
    assert first.exit_code == 0, first.output
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert last["step"] == 2 and {"model", "optimizer", "rng", "best"} <= last.keys()
    load_colornet(tmp_path / "run" / "colornet.pt")  # the exported best model loads
    resumed = _train(runner, data, tmp_path / "run", 4, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "resumed from" in resumed.output and "at step 2" in resumed.output
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=False)["step"] == 4
    # an uninterrupted run of 4 steps reaches the same weights
    straight = _train(runner, data, tmp_path / "straight", 4)
    assert straight.exit_code == 0, straight.output
    a = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


def test_train_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(cli, ["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert missing.exit_code != 0 and "not a folder" in str(missing.exception)
    data = _write_photos(tmp_path / "photos", 1)
    no_ckpt = _train(runner, data, tmp_path / "fresh", 2, "--resume")
    assert no_ckpt.exit_code != 0 and "no checkpoint" in str(no_ckpt.exception)


@pytest.mark.parametrize("steps", [0])
def test_steps_must_be_positive(tmp_path: Path, steps: int) -> None:
    result = CliRunner().invoke(
        cli, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--steps", str(steps)]
    )
    assert result.exit_code == 2 and "--steps" in result.output
