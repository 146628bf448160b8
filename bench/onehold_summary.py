"""Summarises a bench/gpu_onehold.sh work folder: the main run's scores, the ablation table, the
PSNR curve, grids, and bench/results/gslrm_onehold.json.

    python bench/onehold_summary.py --work /tmp/zv1 --out /tmp/zv1/results \
        --ablations "a0_v1|v1 recipe;a1_object|+ object-centred Gaussians;..."
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from plot_curve import plot  # noqa: E402


def _scores(run: Path, which: str) -> dict | None:
    path = run / f"eval_{which}" / "metrics.json"
    if not path.exists():
        return None
    overall = json.loads(path.read_text())["overall"]
    return {"psnr": overall.get("psnr"), "ssim": overall.get("ssim"), "objects": overall.get("num_objects")}


def _run_facts(run: Path) -> dict:
    info = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()] if (run / "metrics.jsonl").exists() else []
    world = int(info.get("world_size", 1))
    batch = int(info.get("train_config", {}).get("batch_size", 0))
    last = rows[-1] if rows else {}
    seconds = sum(r.get("step_time", 0.0) * (r["step"] - p.get("step", 0)) for p, r in zip([{}] + rows[:-1], rows))
    data = sum(r.get("data_time", 0.0) * (r["step"] - p.get("step", 0)) for p, r in zip([{}] + rows[:-1], rows))
    return {
        "steps": int(last.get("step", 0)),
        "samples_seen": int(last.get("step", 0)) * batch * world,
        "train_minutes": round(seconds / 60, 2),
        "data_wait_share": round(data / seconds, 4) if seconds else None,
        "final_train_psnr": last.get("psnr"),
        "samples_per_s": rows[-1].get("samples_per_s") if rows else None,
        "gpus": world,
        "data": info.get("data"),
        "train_config": info.get("train_config"),
        "model_config": info.get("model_config"),
    }


def _fmt(x, digits=2):
    return "—" if x is None else f"{x:.{digits}f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--ablations", default="", help="name|label pairs separated by ';'")
    args = ap.parse_args()
    work, out = args.work, args.out
    out.mkdir(parents=True, exist_ok=True)

    main_run = work / "main"
    facts = _run_facts(main_run)
    gso, held = _scores(main_run, "gso25"), _scores(main_run, "heldout")
    result = {
        "gso25_psnr": gso and gso["psnr"], "gso25_ssim": gso and gso["ssim"],
        "heldout_psnr": held and held["psnr"], "heldout_ssim": held and held["ssim"],
        **{k: facts[k] for k in ("train_minutes", "samples_seen", "gpus", "steps", "samples_per_s", "data_wait_share",
                                 "final_train_psnr", "data")},
        "config": {"train": facts["train_config"], "model": facts["model_config"]},
    }
    if (work / "data.json").exists():
        result["data_phase"] = json.loads((work / "data.json").read_text())
    ablation = []
    for pair in filter(None, args.ablations.split(";")):
        name, _, label = pair.partition("|")
        run = work / name
        if not run.exists():
            continue
        f = _run_facts(run)
        g, h = _scores(run, "gso25"), _scores(run, "heldout")
        ablation.append({"name": name, "change": label, "steps": f["steps"], "train_psnr": f["final_train_psnr"],
                         "gso25_psnr": g and g["psnr"], "heldout_psnr": h and h["psnr"],
                         "gso25_ssim": g and g["ssim"], "heldout_ssim": h and h["ssim"]})
    result["ablation"] = ablation
    (out / "gslrm_onehold.json").write_text(json.dumps(result, indent=2) + "\n")

    lines = ["## GS-LRM in one hold", "",
             f"- gso25: **{_fmt(result['gso25_psnr'])} dB** / SSIM {_fmt(result['gso25_ssim'], 3)}; "
             f"held-out procedural: **{_fmt(result['heldout_psnr'])} dB** / SSIM {_fmt(result['heldout_ssim'], 3)}",
             f"- {facts['steps']} steps, {facts['samples_seen']} samples, {facts['train_minutes']} min of steps on "
             f"{facts['gpus']} GPU(s); data: {facts['data']}; data wait {facts['data_wait_share']}", ""]
    if ablation:
        lines += ["| change | steps | train PSNR | gso25 PSNR | Δ | held-out PSNR | Δ |", "|---|---|---|---|---|---|---|"]
        prev = None
        for row in ablation:
            dg = dh = None
            if prev is not None and row["gso25_psnr"] is not None and prev["gso25_psnr"] is not None:
                dg = row["gso25_psnr"] - prev["gso25_psnr"]
            if prev is not None and row["heldout_psnr"] is not None and prev["heldout_psnr"] is not None:
                dh = row["heldout_psnr"] - prev["heldout_psnr"]
            lines.append(f"| {row['change']} | {row['steps']} | {_fmt(row['train_psnr'])} | {_fmt(row['gso25_psnr'])} | "
                         f"{'' if dg is None else f'{dg:+.2f}'} | {_fmt(row['heldout_psnr'])} | {'' if dh is None else f'{dh:+.2f}'} |")
            prev = row
    (out / "summary.md").write_text("\n".join(lines) + "\n")

    if (main_run / "metrics.jsonl").exists():
        plot(main_run / "metrics.jsonl", out / "psnr_curve.png", "psnr", title="GS-LRM training PSNR (dB) by step")
        shutil.copy(main_run / "metrics.jsonl", out / "main_metrics.jsonl")
    for which in ("gso25", "heldout"):
        grid = main_run / f"eval_{which}" / "grid.png"
        if grid.exists():
            shutil.copy(grid, out / f"grid_{which}.png")
        md = main_run / f"eval_{which}" / "metrics.md"
        if md.exists():
            shutil.copy(md, out / f"metrics_{which}.md")
    images = sorted((main_run / "images").glob("*.png")) if (main_run / "images").exists() else []
    if images:
        shutil.copy(images[-1], out / "train_grid.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
