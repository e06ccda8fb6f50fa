"""The "diffusion" family: how a diffusion_autoencoder's denoiser does across its noise schedule, on the probe batch.

Left, the denoiser's x0 error (MSE over valid tokens x features) against the timestep t at about
20 t spread evenly over the schedule, log y, with the fixed noise the model's own evaluation uses
(a generator seeded with ``EVAL_NOISE_SEED``), the model's evaluation timesteps marked (their
mean is the probe batch's eval-mode ``loss_recon``), the error of predicting each feature's mean
dashed for scale, and alpha_bar(t) on the right axis. Right, for the probe event with the most
tokens and the first continuous feature, the x0 estimate at every step of the deterministic DDIM
sampler that ``forward`` reconstructs with, one line per token, the true values starred at t = 0.

The model has no public method for either: ``sample`` returns only the last estimate and the
per-t predictions (``_x0_predictions``) are private and fixed to the evaluation t. So both are
recomputed here from its public attributes ``alpha_bar``, ``sample_plan`` and
``decoder.denoiser`` with the model's formulas; z_q comes from the model's own ``forward``, and
the figure says so if the trajectory's last step ever differs from forward's "cont".
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from thesis_lib.models import losses
from thesis_lib.models.diffusion import EVAL_NOISE_SEED, DiffusionAutoencoder

from .context import FamilySkipped, FigureContext
from ..figure_io import log_scale_if_positive, new_figure, no_data
from .probes import batch_size_of, probing, to_numpy, unwrap_model
from .recon import feature_names

__all__ = ["diffusion_figure", "evenly_spaced_timesteps", "x0_errors_by_timestep", "ddim_x0_trajectory"]

_TIMESTEPS = 20  # points on the error curve: the schedule's shape, for 20 small denoiser passes
_MAX_TOKENS = 8  # trajectories drawn for the chosen event; more lines only tangle


def evenly_spaced_timesteps(steps: int, count: int = _TIMESTEPS) -> list[int]:
    """`count` distinct integer t spread evenly over 1..steps, both ends included (every t when steps <= count)."""
    return sorted({int(round(v)) for v in np.linspace(1, steps, min(count, steps))})


def x0_errors_by_timestep(model: DiffusionAutoencoder, tokens_id: torch.Tensor, x0: torch.Tensor,
                          z_q: torch.Tensor, timesteps: Sequence[int]) -> torch.Tensor:
    """The denoiser's x0 error at each timestep: float32 [K], the masked MSE over the batch's valid tokens.

    x_t is built as the model's evaluation builds it: noise [K, 1, T, C] drawn in one call from a
    generator seeded with EVAL_NOISE_SEED on x0's device, shared by every event. So at
    ``model.eval_t`` the K errors are the per-t terms whose mean is the eval-mode ``loss_recon``.
    One denoiser pass per t (not K copies of the batch at once): a probe's memory stays one batch's.

    Args:
        model: the (unwrapped) DiffusionAutoencoder, in eval mode under no_grad (see `probing`).
        tokens_id: token types [B, T] (0: padding).
        x0: clean features [B, T, C], zero at padding.
        z_q: the bottleneck's output [B, latent_dim] (forward's "z_q").
        timesteps: t values in 1..model.steps.

    Returns:
        float32 tensor [K] on the model's device.
    """
    valid = losses.valid_token_mask(tokens_id)
    mask = valid.unsqueeze(-1)
    ts = [int(t) for t in timesteps]
    generator = torch.Generator(device=x0.device).manual_seed(EVAL_NOISE_SEED)
    noise = torch.randn((len(ts), 1, *x0.shape[1:]), generator=generator, device=x0.device, dtype=torch.float32)
    errors = []
    for noise_t, t in zip(noise, ts):
        alpha_bar = model.alpha_bar[t]
        x_t = (alpha_bar.sqrt() * x0.float() + (1.0 - alpha_bar).sqrt() * noise_t) * mask
        t_batch = torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device)
        predicted = model.decoder.denoiser(x_t.to(x0.dtype), tokens_id, t_batch, z_q) * mask
        errors.append(losses.masked_mse(predicted, x0, valid))
    return torch.stack(errors)


def ddim_x0_trajectory(model: DiffusionAutoencoder, tokens_id: torch.Tensor, z_q: torch.Tensor,
                       like: torch.Tensor) -> torch.Tensor:
    """The x0 estimate at each DDIM step of ``model.sample``: [S, B, T, C], zero at padding.

    The same loop as ``model.sample`` (eta = 0 from x_T = 0 over ``model.sample_plan``), keeping
    each step's estimate; the last step has alpha_bar = 1, so the last estimate is sample's output.

    Args:
        model: the (unwrapped) DiffusionAutoencoder, in eval mode under no_grad.
        tokens_id: token types [B, T] (0: padding).
        z_q: the bottleneck's output [B, latent_dim].
        like: any [B, T, C] tensor; its shape, dtype and device give x_T.
    """
    mask = losses.valid_token_mask(tokens_id).unsqueeze(-1)
    x = torch.zeros_like(like)
    estimates = []
    for t, sqrt_a, sqrt_1ma, sqrt_a_prev, sqrt_1ma_prev in model.sample_plan:
        x0 = model.decoder.denoiser(x, tokens_id, torch.full((), float(t), device=z_q.device), z_q) * mask
        estimates.append(x0)
        eps = (x - sqrt_a * x0) / sqrt_1ma
        x = sqrt_a_prev * x0 + sqrt_1ma_prev * eps
    return torch.stack(estimates)


def diffusion_figure(ctx: FigureContext) -> Figure:
    """x0 error against t across the schedule, and one event's DDIM x0 trajectory for one feature.

    Raises:
        FamilySkipped: the model is not a DiffusionAutoencoder, or there is no probe batch.
        KeyError: the probe batch lacks tokens_id or tokens_cont.
    """
    model = unwrap_model(ctx.model)
    if not isinstance(model, DiffusionAutoencoder):
        raise FamilySkipped(f"diffusion: the model ({type(model).__name__}) is not a DiffusionAutoencoder; skipped")
    if ctx.probe_batch is None:
        raise FamilySkipped("diffusion: no probe batch was given; skipped")
    batch = ctx.probe_batch
    missing = [key for key in ("tokens_id", "tokens_cont") if key not in batch]
    if missing:
        raise KeyError(f"the probe batch lacks {missing}; it has {sorted(batch)}")
    timesteps = evenly_spaced_timesteps(model.steps)
    with probing(model):
        outputs = model(batch)  # z_q, and "cont": the model's own DDIM reconstruction
        tokens_id, cont = batch["tokens_id"], batch["tokens_cont"]
        valid = tokens_id != 0
        x0 = cont * valid.unsqueeze(-1).to(cont.dtype)  # the model zeroes padding before it reads x
        errors = x0_errors_by_timestep(model, tokens_id, x0, outputs["z_q"], timesteps)
        eval_t = model.eval_t.tolist()
        eval_errors = x0_errors_by_timestep(model, tokens_id, x0, outputs["z_q"], eval_t)
        event = int(valid.sum(dim=1).argmax())  # the most tokens; the first such, so the same event each epoch
        row = slice(event, event + 1)
        trajectory = ddim_x0_trajectory(model, tokens_id[row], outputs["z_q"][row], x0[row])[:, 0]
    valid_np, true = to_numpy(valid).astype(bool), to_numpy(x0)
    fig = new_figure(12.5, 4.3)
    left, right = fig.subplots(1, 2)
    _error_panel(left, timesteps, to_numpy(errors), eval_t, to_numpy(eval_errors), true[valid_np],
                 to_numpy(model.alpha_bar))
    names = feature_names(ctx.cont_features, model, true.shape[-1])
    gap = float((trajectory[-1] - outputs["cont"][event]).abs().max()) if valid_np[event].any() else 0.0
    _trajectory_panel(right, [plan[0] for plan in model.sample_plan], to_numpy(trajectory), true[event],
                      valid_np[event], event, names[0], gap)
    fig.suptitle(f"diffusion · {ctx.moment} · probe batch: {batch_size_of(batch)} events, "
                 f"{int(valid_np.sum())} valid tokens · {model.steps} steps, "
                 f"{len(model.sample_plan)} DDIM steps", fontsize=11)
    return fig


def _error_panel(ax: Axes, timesteps: list[int], errors: np.ndarray, eval_t: list[int], eval_errors: np.ndarray,
                 true_valid: np.ndarray, alpha_bar: np.ndarray) -> None:
    """x0 MSE against t (log y when positive), the eval t as diamonds, the feature-mean baseline, alpha_bar on the right."""
    ax.set_title("denoiser x0 error vs t (fixed eval noise)", loc="left", fontsize=10)
    if true_valid.size == 0:
        no_data(ax, "no valid tokens in the probe batch")
        return
    ax.plot(timesteps, errors, marker="o", ms=3, color="tab:blue", label="x0 MSE over valid tokens")
    ax.plot(eval_t, eval_errors, "D", ms=6, color="tab:orange",
            label=f"model's eval t: mean {float(np.mean(eval_errors)):.3g} (= probe loss_recon)")
    # The best constant guess: what an x0 prediction that ignored x_t and z_q could reach.
    baseline = float(np.mean((true_valid - true_valid.mean(axis=0)) ** 2))
    ax.axhline(baseline, color="0.35", ls="--", lw=1, label=f"predict each feature's mean: {baseline:.3g}")
    drawn = np.concatenate([errors, eval_errors, [baseline]])
    if log_scale_if_positive(ax, [drawn]) and drawn.max() < 10 * drawn.min():
        # Within one decade the log axis labels only minor ticks, as 1.45x10^0: plain numbers read better.
        plain = FuncFormatter(lambda value, _: f"{value:.3g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel("timestep t (noisier to the right)")
    ax.set_ylabel("masked MSE")
    ax.grid(alpha=0.3)
    schedule = ax.twinx()
    schedule.plot(np.arange(alpha_bar.size), alpha_bar, color="0.6", lw=1, label="alpha_bar(t) (right axis)")
    schedule.set_ylim(0, 1.02)
    schedule.set_ylabel("alpha_bar (signal fraction)", color="0.45", fontsize=9)
    schedule.tick_params(axis="y", colors="0.45", labelsize=8)
    ax.set_zorder(schedule.get_zorder() + 1)  # the error curve over the schedule, not under it
    ax.patch.set_visible(False)
    handles, labels = ax.get_legend_handles_labels()
    more_handles, more_labels = schedule.get_legend_handles_labels()
    ax.legend(handles + more_handles, labels + more_labels, fontsize=7, loc="best")


def _trajectory_panel(ax: Axes, step_t: list[int], trajectory: np.ndarray, true: np.ndarray, valid: np.ndarray,
                      event: int, name: str, gap: float) -> None:
    """The first feature's x0 estimate per DDIM step (t falling left to right), one line per token, true values starred at t = 0."""
    slots = np.flatnonzero(valid)
    title = f"DDIM x0 estimate of {name}, event {event}"
    if slots.size == 0:
        ax.set_title(title, loc="left", fontsize=10)
        no_data(ax, "no valid tokens in the probe batch")
        return
    shown = slots[:_MAX_TOKENS]
    for j, slot in enumerate(shown):
        color = f"C{j % 10}"
        ax.plot(step_t, trajectory[:, slot, 0], marker=".", color=color, label=f"token {slot}")
        ax.plot([0], [true[slot, 0]], marker="*", ms=11, ls="none", color=color)
    ax.plot([], [], marker="*", ms=9, ls="none", color="0.35", label="true value (t = 0)")
    ax.set_xlim(max(step_t) * 1.03 + 0.5, -0.03 * max(step_t) - 0.5)  # sampling runs left to right
    ax.set_xlabel("DDIM step's t")
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
    mse = float(np.mean((trajectory[-1, slots, 0] - true[slots, 0]) ** 2))
    title += f" · final MSE {mse:.3g} over {slots.size} tokens"
    if slots.size > shown.size:
        title += f" (first {shown.size} drawn)"
    if gap > 1e-4:  # the model's sampler changed and this module's copy of its loop did not
        title += f"\nthe last step differs from forward's 'cont' by {gap:.2g}"
    ax.set_title(title, loc="left", fontsize=9)
    ax.legend(fontsize=7, ncol=2, loc="best")
