"""A job's report folder: ``metrics.json``, before/after grids on the same latents,
invalidity (and quality) over training as a plot, and ``index.html`` tying them together."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from unlearning.images import grid_image  # noqa: E402
from unlearning.runtime import latents  # noqa: E402

if TYPE_CHECKING:
    from unlearning.jobs import JobOutcome
    from unlearning.registry import Registry

GRID_SEED = 7
GRID_SAMPLES = 64


@torch.no_grad()
def grid_samples(generator: nn.Module, n: int = GRID_SAMPLES) -> torch.Tensor:
    """The generator's samples on the pictures' fixed latents: the same for every version of
    a model, so before and after show the same latents."""
    generator.eval()
    z = latents(n, generator.latent_dim, GRID_SEED).to(next(generator.parameters()).device)
    return generator(z).cpu()


def _save(fig, ax, title: str, path: Path) -> Path:
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_history(history: list[dict], path: Path, *, limit: float | None = None,
                 selected: int | None = None) -> Path | None:
    """Invalidity per epoch with the quality probe's FID on a second axis, the gate's limit
    as a dashed line and the epoch that was kept marked."""
    points = [(h["epoch"], h["invalidity"]) for h in history if "invalidity" in h]
    if not points:
        return None
    epochs, invalidity = zip(*points)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    positive = [v for v in invalidity if v > 0]
    if positive and max(invalidity) / min(positive) > 20:  # log scale only when it spans decades
        ax.set_yscale("log")
        invalidity = [max(v, min(positive) / 2) for v in invalidity]
    ax.plot(epochs, invalidity, "o-", color="tab:red", label="invalidity (monitor samples)")
    if limit is not None:
        ax.axhline(limit, color="tab:red", linestyle=":", label=f"gate limit {limit:g}")
    if selected is not None:
        ax.axvline(selected, color="grey", linestyle="--", label=f"kept: epoch {selected}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("invalidity", color="tab:red")
    fids = [(h["epoch"], h["fid"]) for h in history if "fid" in h]
    if fids:
        ax2 = ax.twinx()
        ax2.plot(*zip(*fids), "s--", color="tab:blue", alpha=0.7)
        ax2.set_ylabel("FID (quality probe)", color="tab:blue")
    return _save(fig, ax, "Invalidity over training", path)


def write_report(
    outcome: "JobOutcome", registry: "Registry", report_dir: Path, before: nn.Module, after: nn.Module,
    attack_images: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the report for one job into ``report_dir`` (created); return the folder.
    ``attack_images`` ({"parent", "candidate"}) are the latent attack's final samples, and
    its "inversion" entry ({"targets", "parent", "candidate"}) the inversion attack's
    targets and reconstructions."""
    folder = Path(report_dir)
    folder.mkdir(parents=True, exist_ok=True)
    grid_image(grid_samples(before)).save(folder / "before.png")
    grid_image(grid_samples(after)).save(folder / "after.png")
    limit = next((g.limit for g in outcome.gates if g.name == "invalidity"), None)
    plotted = plot_history(outcome.history, folder / "invalidity.png", limit=limit,
                           selected=outcome.stats.get("selected_epoch"))
    attacked = bool(attack_images) and {"parent", "candidate"} <= set(attack_images)
    if attacked:
        grid_image(attack_images["parent"]).save(folder / "attack_before.png")
        grid_image(attack_images["candidate"]).save(folder / "attack_after.png")
    inversion = (attack_images or {}).get("inversion") or {}
    if {"targets", "parent", "candidate"} <= set(inversion):  # targets beside both models' reconstructions
        rows = torch.cat([inversion["targets"], inversion["parent"], inversion["candidate"]])
        grid_image(rows, nrow=len(inversion["targets"]), min_side=512).save(folder / "inversion.png")
    (folder / "metrics.json").write_text(json.dumps(outcome.model_dump(mode="json"), indent=2))
    (folder / "index.html").write_text(render_html(outcome, plotted is not None, attacked=attacked,
                                                   inverted=(folder / "inversion.png").is_file()))
    return folder


def _number(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _attack_section(outcome: "JobOutcome", attacked: bool, image_base: str, inverted: bool = False) -> str:
    before, after = outcome.before.get("attack"), outcome.after.get("attack")
    if not before or not after:
        return ""
    judged_by = html.escape(str(after.get("judged_by", "the spec's checks")))
    keys = [("random_invalidity", "random starts"),
            ("attack_invalidity", "gradient ascent: final images in Omega"),
            ("climbed_invalidity", "gradient ascent: what the climbed checks say"),
            ("fooled_share", "fooled share: the climbed checks say invalid, the judge does not"),
            ("inversion/attack_invalidity", "inversion: reconstructions in Omega"),
            ("inversion/target_invalidity", "inversion: targets in Omega (the ceiling)"),
            ("inversion/mse/mean", "inversion: mean squared error"),
            ("gradient_worst_case", "worst case, gradient ascent and truncation"),
            ("worst_case", "worst case, all attacks")]
    keys += [(f"truncation/{psi}", f"truncation psi={psi}") for psi in after.get("truncation", {})]

    def value(summary: dict, key: str):
        for part in key.split("/")[:-1]:
            summary = summary.get(part) or {}
        return summary.get(key.split("/")[-1])

    rows = "".join(
        f"<tr><td>{html.escape(label)}</td><td>{_number(value(before, k))}</td><td>{_number(value(after, k))}</td></tr>"
        for k, label in keys
    )
    pictures = ('<p>where the gradient attack ended (the first starts): before &nbsp; / &nbsp; after</p>'
                f'<img src="{image_base}attack_before.png"><img src="{image_base}attack_after.png">') if attacked else ""
    inversion = after.get("inversion") or {}
    if inverted:
        pictures += ("<p>inversion: rows are the targets (real examples of what was forgotten), the parent's "
                     f'reconstructions and the candidate\'s</p><img src="{image_base}inversion.png">')
    about = ""
    if inversion.get("targets"):
        about = (f" Inversion: {inversion['targets']} real examples of what was forgotten, {inversion['starts']} "
                 f"starts x {inversion['steps']} Adam steps each on ||G(z) - x||^2 with ||z|| <= sqrt(d); the best "
                 "start is judged.")
    elif inversion.get("skipped"):
        about = f" Inversion skipped: {html.escape(inversion['skipped'])}."
    note = "" if after.get("gradient", True) else "<p>No check of this spec has a gradient: truncation only.</p>"
    return (f"<h2>Worst case (attacks)</h2><p>Gradient ascent on the forget checks' margin from "
            f"{after['starts']} random latents, {after['steps']} steps each, inside the prior's typical ball.{about} "
            f"Success is judged on the final images by {judged_by}, never by the checks climbed.</p>"
            f"{note}<table><tr><th></th><th>before</th><th>after</th></tr>{rows}</table>{pictures}")


def _gates_table(outcome: "JobOutcome") -> str:
    rows = "".join(
        f"<tr><td>{html.escape(g.name)}</td><td>{_number(g.value)}</td><td>{_number(g.limit)}</td>"
        f"<td class={'ok' if g.passed else 'bad'}>{'pass' if g.passed else 'FAIL'}</td>"
        f"<td>{html.escape(g.detail)}</td></tr>"
        for g in outcome.gates
    )
    return f"<h2>Gates</h2><table><tr><th>gate</th><th>value</th><th>limit</th><th></th><th></th></tr>{rows}</table>"


def _page(outcome: "JobOutcome", body: str) -> str:
    """The page around ``body``: title, method, status, the reason it was refused, the gates."""
    reason = f"<p class=bad>Not promoted: {html.escape(outcome.reason)}</p>" if outcome.reason else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Lethe report {html.escape(outcome.version)}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 10px;border-bottom:1px solid #ddd}}
.ok{{color:#070}}.bad{{color:#b00}}img{{image-rendering:pixelated;border:1px solid #ccc;margin-right:1em}}</style></head>
<body><h1>{html.escape(outcome.version)} <small>from {html.escape(outcome.parent)}</small></h1>
<p>Method <b>{html.escape(outcome.method)}</b>, status <b>{outcome.status}</b>, {outcome.duration_s:.1f} s.</p>{reason}
{_gates_table(outcome)}
{body}</body></html>"""


def render_html(outcome: "JobOutcome", has_plot: bool, image_base: str = "", attacked: bool = False,
                inverted: bool = False) -> str:
    """Self-contained page; ``image_base`` prefixes the picture URLs (the service serves them)."""
    keys = ["invalidity", "judge_invalidity", "fid", "filtered_fid", "inception_score", "samples", "extractor"]
    by = {**outcome.before.get("judged_by", {}), **outcome.after.get("judged_by", {})}
    metrics = "".join(
        f"<tr><td>{k}</td><td>{_number(outcome.before.get(k))}</td><td>{_number(outcome.after.get(k))}</td>"
        f"<td>{html.escape(by.get(k, ''))}</td></tr>"
        for k in keys if k in outcome.before or k in outcome.after
    )
    plot = f'<h2>Invalidity over training</h2><img src="{image_base}invalidity.png">' if has_plot else ""
    return _page(outcome, f"""<h2>Metrics</h2><p>The guide is what the method trained against; numbers by the judge
(a classifier trained apart, which no method sees) are the independent ones.</p>
<table><tr><th></th><th>before ({html.escape(outcome.parent)})</th><th>after ({html.escape(outcome.version)})</th><th>measured by</th></tr>{metrics}</table>
<h2>Samples on the same latents</h2><p>before &nbsp; / &nbsp; after</p>
<img src="{image_base}before.png"><img src="{image_base}after.png">{plot}
{_attack_section(outcome, attacked, image_base, inverted)}""")


I2I_GRID_IMAGES = 16


def plot_losses(history: list[dict], path: Path) -> Path | None:
    """The image-to-image losses over training steps: retain (kept small) and forget."""
    if not history:
        return None
    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, [h["forget_loss"] for h in history], "o-", color="tab:red", label="forget: to the noise embedding")
    ax.plot(steps, [h["retain_loss"] for h in history], "s-", color="tab:blue", label="retain: to the original embedding")
    ax.set_xlabel("step")
    ax.set_ylabel("mean L2 distance of embeddings")
    return _save(fig, ax, "Encoder losses over training", path)


@torch.no_grad()
def write_i2i_report(
    outcome: "JobOutcome", report_dir: Path, before: nn.Module, after: nn.Module, inputs: dict[str, torch.Tensor],
) -> Path:
    """The report of an image-to-image job: per set (forget, retain) a picture with rows
    input / degraded input / parent's restoration / candidate's restoration."""
    folder = Path(report_dir)
    folder.mkdir(parents=True, exist_ok=True)
    before, after = before.cpu().eval(), after.cpu().eval()
    for name, images in inputs.items():
        x = images[:I2I_GRID_IMAGES].cpu()
        rows = torch.cat([x, before.degrade(x), before.restore(x), after.restore(x)])
        grid_image(rows, nrow=len(x), min_side=640).save(folder / f"{name}_rows.png")
    plotted = plot_losses(outcome.history, folder / "losses.png")
    (folder / "metrics.json").write_text(json.dumps(outcome.model_dump(mode="json"), indent=2))
    (folder / "index.html").write_text(render_i2i_html(outcome, plotted is not None, list(inputs)))
    return folder


def render_i2i_html(outcome: "JobOutcome", has_plot: bool, sets: list[str], image_base: str = "") -> str:
    keys = ["images", "fid", "l1", "invalidity", "judge_invalidity"]
    metrics = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{k}</td><td>{_number(outcome.before.get(name, {}).get(k))}</td>"
        f"<td>{_number(outcome.after.get(name, {}).get(k))}</td></tr>"
        for name in sets for k in keys
    )
    pictures = "".join(
        f'<h3>{html.escape(name)} inputs</h3><p>rows: input, degraded input T(x), parent h0(T(x)), candidate h(T(x))</p>'
        f'<img src="{image_base}{name}_rows.png">' for name in sets
    )
    plot = f'<h2>Training</h2><img src="{image_base}losses.png">' if has_plot else ""
    return _page(outcome, f"""<h2>Metrics (restorations against the real inputs; extractor {html.escape(str(outcome.after.get('extractor')))})</h2>
<table><tr><th>set</th><th></th><th>before ({html.escape(outcome.parent)})</th><th>after ({html.escape(outcome.version)})</th></tr>{metrics}</table>
<h2>Restorations</h2>{pictures}{plot}""")
