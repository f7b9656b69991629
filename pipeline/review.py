"""What a person looks at after a run: the contact sheet of the shots, before and after; the
record of what the run did (``last-run.json``); the review page (``review.html``).

The review page (:func:`review_html`) is one static HTML file, inline CSS and images embedded, no
script: it opens from disk in any browser, off line. See docs/artist-loop.md.
"""

from __future__ import annotations

import base64
import html
import json
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.color import rgb_from_luma_chroma
from pipeline.confidence import ShotConfidence
from pipeline.errors import PostprodError
from pipeline.files import atomic_output
from pipeline.images import encode_image, read_colour, write_rgb
from pipeline.keyframes import Plan, ShotPlan
from pipeline.media.decode import iter_frames
from pipeline.media.probe import ReelInfo, probe
from pipeline.settings import RunSettings
from pipeline.suggest import Suggestion, rank, shot_records
from pipeline.workdir import LAST_RUN_NAME, REVIEW_NAME, load_plan, segment_path

CONTACT_SHEET = "contact-sheet.png"
"""The contact sheet's name in the work folder."""


def contact_sheet(plan: Plan, segments: dict[int, Path | None], dest: Path, *, height: int = 135) -> Path:
    """A PNG with one row per shot: its first keyframe (or first frame) grey, then coloured.

    ``segments``: shot index -> its segment (None or absent: the shot is shown grey twice).
    ``height``: thumbnail height in px. Written atomically, replacing ``dest``.
    """
    info = probe(plan.reel)
    width = max(2, round(height * info.width / info.height))
    rows = []
    for shot in plan.shots:
        frame = shot.keyframes[0].frame if shot.keyframes else shot.start
        seg = segments.get(shot.index)
        src = next(iter_frames(plan.reel, frame, frame + 1))
        before = rgb_from_luma_chroma(src.luma, None, src.bit_depth, info.luma_range, info.matrix)
        after = before
        if seg is not None:
            f = next(iter_frames(seg, frame - shot.start, frame - shot.start + 1, chroma=True))
            after = rgb_from_luma_chroma(f.luma, f.chroma, f.bit_depth, info.luma_range, info.matrix)
        rows.append(np.hstack([cv2.resize(x, (width, height), interpolation=cv2.INTER_AREA) for x in (before, after)]))
    write_rgb(dest, np.vstack(rows), bit_depth=8, force=True)
    return Path(dest)


# --- the run record and the review page ----------------------------------------------------

RUN_RECORD_VERSION = 1


@dataclass(frozen=True)
class RunRecord:
    """What the last run of a work folder did (``<workdir>/last-run.json``): its inputs and
    output, its settings (:class:`~pipeline.settings.RunSettings` as a dict), and the shots it
    coloured (``redone``), took from earlier runs (``reused``) and left ``grey``."""

    reel: Path
    refs: Path | None
    out: Path
    workdir: Path
    settings: dict[str, Any]
    redone: tuple[int, ...] = ()
    reused: tuple[int, ...] = ()
    grey: tuple[int, ...] = ()

    def run_settings(self) -> RunSettings:
        return RunSettings(**self.settings)

    def command(self) -> str:
        """The ``postprod run`` command that reruns this job (redoing only what changed)."""
        s = self.settings
        parts = ["postprod", "run", "--reel", str(self.reel)]
        parts += ["--refs", str(self.refs)] if self.refs is not None else []
        parts += ["--out", str(self.out), "--workdir", str(self.workdir), "--codec", s["codec"]]
        parts += ["--missing-refs", s["missing"], "--work-size", str(s["work_size"]), "--method", s["method"]]
        parts += ["--device", s["device"], "--force"]
        return " ".join(shlex.quote(p) for p in parts)

    def shots_line(self) -> str:
        """``"redid shots 1, 3; reused shots 0, 2; left grey: none"``."""

        def listed(shots: tuple[int, ...]) -> str:
            return ", ".join(map(str, shots)) if shots else "none"

        return (
            f"redid shots: {listed(self.redone)}; reused shots: {listed(self.reused)}; left grey: {listed(self.grey)}"
        )


def record_run(
    plan: Plan,
    workdir: Path,
    settings: RunSettings,
    out: Path,
    *,
    reused: Iterable[int],
) -> RunRecord:
    """Write ``<workdir>/last-run.json`` for a finished run of ``plan`` and return it. ``reused``:
    the shots whose segments existed before the run (every other coloured shot was redone)."""
    reused = set(reused)
    grey = tuple(s.index for s in plan.shots if s.source == "grey")
    coloured = [s.index for s in plan.shots if s.source != "grey"]
    record = RunRecord(
        reel=Path(plan.reel).resolve(),
        refs=None if plan.refs is None or not plan.refs.parts else Path(plan.refs).resolve(),
        out=Path(out).resolve(),
        workdir=Path(workdir).resolve(),
        settings=settings.to_dict(),
        redone=tuple(i for i in coloured if i not in reused),
        reused=tuple(i for i in coloured if i in reused),
        grey=grey,
    )
    data = {
        "version": RUN_RECORD_VERSION,
        **{k: None if v is None else str(v) for k, v in (("reel", record.reel), ("refs", record.refs))},
        "out": str(record.out),
        "workdir": str(record.workdir),
        "settings": record.settings,
        "redone": list(record.redone),
        "reused": list(record.reused),
        "grey": list(record.grey),
    }
    with atomic_output(Path(workdir) / LAST_RUN_NAME, force=True) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return record


def read_run(workdir: Path) -> RunRecord:
    """The record :func:`record_run` left in ``workdir``; :class:`PostprodError` when there is none."""
    path = Path(workdir) / LAST_RUN_NAME
    if not Path(workdir).is_dir():
        raise PostprodError(workdir, "no such work folder")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        if d.get("version") != RUN_RECORD_VERSION:
            raise ValueError(f"version {d.get('version')!r}")
        return RunRecord(
            reel=Path(d["reel"]),
            refs=None if d["refs"] is None else Path(d["refs"]),
            out=Path(d["out"]),
            workdir=Path(d["workdir"]),
            settings=dict(d["settings"]),
            redone=tuple(d["redone"]),
            reused=tuple(d["reused"]),
            grey=tuple(d["grey"]),
        )
    except FileNotFoundError as err:
        raise PostprodError(workdir, f"no finished run in this work folder (no {LAST_RUN_NAME})") from err
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PostprodError(path, f"not a run record ({type(err).__name__}: {err})") from err


THUMB_HEIGHT = 96
"""Height (px) of the review page's thumbnails."""
STRIP_HEIGHT = 40


def _data_uri(rgb: np.ndarray, height: int = THUMB_HEIGHT) -> str:
    h, w = rgb.shape[:2]
    width = max(2, round(height * w / h))
    small = cv2.resize(np.asarray(rgb, np.float32), (width, height), interpolation=cv2.INTER_AREA)
    return "data:image/jpeg;base64," + base64.b64encode(encode_image(small, ".jpg")).decode("ascii")


def _frame_rgb(path: Path, index: int, info: ReelInfo, chroma: bool) -> np.ndarray:
    f = next(iter_frames(path, index, index + 1, chroma=chroma))
    return rgb_from_luma_chroma(f.luma, f.chroma if chroma else None, f.bit_depth, info.luma_range, info.matrix)


def _heatmap(grey: np.ndarray, conf_map: np.ndarray) -> np.ndarray:
    """Grey frame (H, W, 3) with its confidence map over it: red/yellow where guessed, blue where sure."""
    h, w = grey.shape[:2]
    hot = cv2.applyColorMap(255 - cv2.resize(conf_map, (w, h), interpolation=cv2.INTER_LINEAR), cv2.COLORMAP_JET)
    return 0.45 * grey + 0.55 * hot[..., ::-1].astype(np.float32) / 255.0


def _strip_svg(shot: ShotPlan, record: ShotConfidence | None, picks: list[int]) -> str:
    """Inline SVG: one bar per frame, its height the guessed share; keyframes green, picks orange."""
    n = shot.end - shot.start
    width = max(600, min(900, 4 * n))
    bw = width / n
    bars = []
    if record is not None and record.frames == n:
        for t, g in enumerate(record.guessed):
            hgt = max(0.5, float(g) * STRIP_HEIGHT)
            bars.append(
                f'<rect class="bar" x="{t * bw:.2f}" y="{STRIP_HEIGHT - hgt:.2f}" width="{bw:.2f}" '
                f'height="{hgt:.2f}"><title>frame {shot.start + t}: {100 * float(g):.0f} % guessed</title></rect>'
            )
    marks = [(k.frame, "key") for k in shot.keyframes] + [(f, "pick") for f in picks]
    bars += [
        f'<rect class="{cls}" x="{(f - shot.start) * bw:.2f}" y="0" width="{max(bw, 2):.2f}" height="{STRIP_HEIGHT}">'
        f"<title>frame {f}</title></rect>"
        for f, cls in marks
        if shot.start <= f < shot.end
    ]
    return (
        f'<svg class="confidence-strip" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{STRIP_HEIGHT}" viewBox="0 0 {width} {STRIP_HEIGHT}">{"".join(bars)}</svg>'
    )


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#f4f4f2;color:#222}
h1{font-size:1.4em} h2{font-size:1.1em;margin:0 0 .4em}
pre{background:#222;color:#eee;padding:.6em;white-space:pre-wrap;word-break:break-all}
.shot{background:#fff;border:1px solid #ccc;border-radius:6px;padding:1em;margin:1em 0}
.row{display:flex;flex-wrap:wrap;gap:.6em;align-items:flex-start}
figure{margin:0;font-size:.8em;text-align:center} img{display:block;border:1px solid #999}
.pair{display:flex;gap:2px} .confidence-strip{background:#e8eef8;border:1px solid #99a}
.bar{fill:#d33} .key{fill:#2a2;opacity:.8} .pick{fill:#f90;opacity:.8}
.side{flex:1;min-width:280px} ul,ol{margin:.3em 0 .3em 1.2em;padding:0;font-size:.9em}
"""


def review_html(record: RunRecord, plan: Plan, *, per_shot: int = 1) -> str:
    """The review page of ``record``'s run as one self-contained HTML document (inline CSS, images
    embedded as base64 JPEG, no script): what was done and where, the command to rerun, then per
    shot (``<section class="shot" id="shot-<i>">``): grey and colour thumbnails at the first,
    middle, last and worst frames, the confidence strip (share of each frame guessed), a heatmap
    of the worst frame's confidence, the references used and ``per_shot`` suggested frames."""
    settings = record.run_settings()
    info = probe(plan.reel)
    records = shot_records(plan, record.workdir, settings)
    picks = rank(plan, records, per_shot=per_shot)
    by_shot: dict[int, list[Suggestion]] = {}
    for s in picks:
        by_shot.setdefault(s.shot, []).append(s)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>postprod review: '
        f"{html.escape(plan.reel.name)}</title><style>{_CSS}</style></head><body>",
        f'<h1 id="title">Review: {html.escape(plan.reel.name)}</h1>',
        '<ul id="where">',
        f'<li>output: <code id="output">{html.escape(str(record.out))}</code></li>',
        f'<li>work folder: <code id="workdir">{html.escape(str(record.workdir))}</code></li>',
        f"<li>refs folder: <code>{html.escape(str(record.refs))}</code></li>",
        f'<li id="shots-line">{html.escape(record.shots_line())}</li>',
        "</ul>",
        "<p>Colour the suggested frames (the grey <code>frame-N.png</code> files of "
        "<code>postprod suggest</code>), save them under the same names into the refs folder, then rerun:</p>",
        f'<pre id="rerun">{html.escape(record.command())}</pre>',
        "<p>Strip: one bar per frame, its height the share of the frame whose colour is guessed; "
        "green: keyframes, orange: suggested frames.</p>",
    ]
    for shot in plan.shots:
        rec = records.get(shot.index)
        seg = segment_path(record.workdir, plan, shot.index, settings) if shot.source != "grey" else None
        has_seg = seg is not None and seg.exists()
        worst = rec.worst() if rec is not None and rec.frames == shot.end - shot.start else None
        moments = sorted({shot.start, (shot.start + shot.end - 1) // 2, shot.end - 1, *([worst] if worst else [])})
        mean_guessed = float(rec.guessed.mean()) if rec is not None and rec.frames else None
        status = "grey" if shot.source == "grey" else "redone" if shot.index in record.redone else "reused"
        summary = (
            ""
            if mean_guessed is None
            else f", {100 * mean_guessed:.0f} % guessed on average{'' if worst is None else f', worst frame {worst}'}"
        )
        out += [
            f'<section class="shot" id="shot-{shot.index}" data-status="{status}">',
            f"<h2>Shot {shot.index}: frames {shot.start}-{shot.end - 1} "
            f"({html.escape(plan.timecode(shot.start))}), colour from {shot.source}, {status}{summary}</h2>",
            '<div class="row moments">',
        ]
        for m in moments:
            grey = _frame_rgb(plan.reel, m, info, chroma=False)
            colour = _frame_rgb(seg, m - shot.start, info, chroma=True) if has_seg and seg is not None else grey
            label = f"frame {m}" + (" (worst)" if m == worst else "")
            out.append(
                f'<figure class="moment"><div class="pair"><img class="grey" alt="grey {m}" '
                f'src="{_data_uri(grey)}"><img class="colour" alt="colour {m}" src="{_data_uri(colour)}">'
                f"</div><figcaption>{label}</figcaption></figure>"
            )
        out.append("</div>")
        out.append(_strip_svg(shot, rec, [s.frame for s in by_shot.get(shot.index, [])]))
        out.append('<div class="row">')
        if worst is not None and rec is not None:
            grey = _frame_rgb(plan.reel, worst, info, chroma=False)
            heat = _heatmap(grey, rec.maps[worst - shot.start])
            out.append(
                f'<figure class="heatmap"><img alt="confidence at frame {worst}" src="{_data_uri(heat)}">'
                f"<figcaption>confidence at frame {worst}: red guessed, blue sure</figcaption></figure>"
            )
        out.append('<div class="side"><b>References</b><ul class="refs">')
        for k in shot.keyframes:
            if k.image is not None:
                thumb = _data_uri(read_colour(k.image).pixels, 60)
                out.append(
                    f'<li class="ref"><img alt="{html.escape(k.image.name)}" src="{thumb}">'
                    f"{html.escape(k.image.name)}: frame {k.frame}, {k.kind} ({k.how})</li>"
                )
            else:
                out.append(
                    f'<li class="ref">frame {k.ref_frame} of a neighbouring shot: frame {k.frame}, {k.kind}</li>'
                )
            out += [
                f'<li class="ref">object {html.escape(o.name)}: {html.escape(o.image.name)}</li>' for o in k.objects
            ]
        out.append('</ul><b>Suggested frames</b><ol class="suggestions">')
        out += [
            f'<li class="suggestion" data-frame="{s.frame}">{html.escape(s.reason(plan))}</li>'
            for s in by_shot.get(shot.index, [])
        ]
        out += ["</ol></div></div>", "</section>"]
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def shot_summaries(plan: Plan, workdir: Path, settings: RunSettings, *, per_shot: int = 1) -> list[dict[str, Any]]:
    """Per shot, for a table (the Prefect run's artifacts): frames, source, mean share of each frame
    guessed (percent, None without a record), the worst frame and its share, the suggested frames."""
    records = shot_records(plan, workdir, settings)
    picks = rank(plan, records, per_shot=per_shot)
    rows = []
    for shot in plan.shots:
        rec = records.get(shot.index)
        ok = rec is not None and rec.frames == shot.end - shot.start
        worst = rec.worst() if ok and rec is not None else None
        rows.append(
            {
                "shot": shot.index,
                "frames": f"{shot.start}-{shot.end}",
                "source": shot.source,
                "guessed %": round(100 * float(rec.guessed.mean()), 1) if ok and rec is not None else None,
                "worst frame": worst,
                "worst guessed %": (
                    round(100 * float(rec.guessed[worst - shot.start]), 1)
                    if worst is not None and rec is not None
                    else None
                ),
                "suggested": ", ".join(str(s.frame) for s in picks if s.shot == shot.index) or "-",
            }
        )
    return rows


def write_review(workdir: Path, dest: Path | None = None, *, per_shot: int = 1, force: bool = True) -> Path:
    """Write the review page of ``workdir``'s last run (:func:`review_html`) to ``dest`` (default
    ``<workdir>/review.html``, replaced), atomically; returns its path."""
    record = read_run(workdir)
    plan = load_plan(Path(workdir))
    dest = Path(workdir) / REVIEW_NAME if dest is None else Path(dest)
    page = review_html(record, plan, per_shot=per_shot)
    with atomic_output(dest, force=force, inputs=(plan.reel, plan.refs)) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return dest
