"""s4GAN (paper section 3.1): DeepLabv2 trained as the generator of a GAN.

Per iteration, three independent streams: a labeled batch (cross-entropy), an unlabeled batch
(feature matching and self-training), and a second labeled batch that supplies the "real" maps
for D and for feature matching. S is updated first with D frozen (no gradient reaches D), then D
on the detached prediction and the real maps. ``gan.losses`` picks the Table 6 variant.

The labeled and unlabeled images go through S in one batch, so batch-norm statistics are those
of both together (the authors run two forward passes); it is what lets S run under
DistributedDataParallel, which allows one forward per backward.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from s4seg import IGNORE_INDEX
from s4seg.errors import CheckpointError

from .checkpoint import Checkpoint
from .config import Config, GanConfig
from .losses import (
    discriminator_loss,
    fake_maps,
    feature_matching_loss,
    generator_adversarial_loss,
    minmax01,
    one_hot_with_ignore,
    self_training_loss,
)
from .models import upsample_logits
from .models.discriminator import Discriminator
from .run_support import Log, log_to_stderr, runtime_for
from .runtime import Runtime
from .schedules import poly, resync
from .segmenter_run import SegmenterRun
from .training_run import Scalars

HISTORY_FIELDS = ("iteration", "d_real", "d_fake", "st_selected", "st_batch")


class S4ganRun(SegmenterRun):
    """The shared segmenter run plus the discriminator, its optimiser and the D-score history."""

    def __init__(self, cfg: Config, runtime: Runtime, resumed: Checkpoint | None, log: Log) -> None:
        super().__init__(cfg, runtime, "s4gan", resumed, log)
        gan = cfg.gan
        self.discriminator = Discriminator(
            self.num_classes, dropout=gan.d_dropout, dropout_after_last=gan.d_dropout_after_last
        ).to(runtime.device)
        self.optimizer_d = torch.optim.Adam(
            self.discriminator.parameters(), lr=gan.d_lr, betas=gan.d_betas
        )
        self.scheduler_d = poly(self.optimizer_d, cfg.train.iterations, cfg.optim.poly_power)
        if resumed:
            if resumed.discriminator is None or resumed.optimizer_d is None:
                raise CheckpointError(f"{resumed.source} holds no discriminator to continue with")
            self.discriminator.load_state_dict(resumed.discriminator)
            self.optimizer_d.load_state_dict(resumed.optimizer_d)
            self.scheduler_d.load_state_dict(resumed.scheduler_d or {})
            resync(self.scheduler_d)
        self._history: list[dict] = list(resumed.d_history or []) if resumed else []
        self._window: list[dict] = []
        self.extra_state = lambda: {
            "discriminator": self.discriminator.state_dict(),
            "optimizer_d": self.optimizer_d.state_dict(),
            "scheduler_d": self.scheduler_d.state_dict(),
            "d_history": self.history,
        }

    def record(self, iteration: int, values: dict) -> None:
        """Average D's scores over ``gan.log_history_every`` iterations into one history row.
        Rows stay tensors on the device until ``history`` is read (no sync per iteration)."""
        self._window.append(values)
        if (iteration + 1) % self.cfg.gan.log_history_every == 0:
            row = {"iteration": iteration + 1}
            for key in HISTORY_FIELDS[1:]:
                row[key] = sum(v[key] for v in self._window) / len(self._window)
            self._history.append(row)
            self._window = []

    @property
    def history(self) -> list[dict]:
        """The D-score rows as plain numbers (what the checkpoint, CSV and plot hold)."""
        self._history = [{k: float(v) for k, v in row.items()} for row in self._history]
        for row in self._history:
            row["iteration"] = int(row["iteration"])
        return self._history

    def on_log(self, done: int, scalars: dict[str, float]) -> None:
        write_history(self.history, self.out_dir)


def write_history(history: list[dict], out_dir: Path) -> None:
    """d_scores.csv and d_scores.png: D's mean score on real and fake maps (the paper's Fig. 11)
    and the share of unlabeled samples that passed gamma."""
    if not history:
        return
    with open(out_dir / "d_scores.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(history)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["iteration"] for row in history]
    figure, axes = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    axes[0].plot(steps, [r["d_real"] for r in history], label="D(real)")
    axes[0].plot(steps, [r["d_fake"] for r in history], label="D(fake)")
    axes[0].set_ylabel("discriminator score")
    axes[0].set_ylim(0, 1)
    axes[0].legend()
    axes[1].plot(steps, [r["st_selected"] / max(r["st_batch"], 1) for r in history])
    axes[1].set_ylabel("share self-trained")
    axes[1].set_ylim(0, 1)
    axes[1].set_xlabel("iteration")
    figure.tight_layout()
    figure.savefig(out_dir / "d_scores.png", dpi=100)
    plt.close(figure)


@dataclass
class GanTerms:
    loss: torch.Tensor  # weighted sum of the GAN terms of L_S (added to L_ce)
    scalars: dict[str, torch.Tensor]  # detached, still on the device


def segmenter_gan_terms(
    discriminator: Discriminator,
    logits_u: torch.Tensor,
    images_u: torch.Tensor,
    real_maps: torch.Tensor,
    images_r: torch.Tensor,
    gan: GanConfig,
    pad_u: torch.Tensor | None = None,
) -> GanTerms:
    """The GAN terms of eq. 4 for S: feature matching, self-training, or the standard
    adversarial loss, as ``gan.losses`` says.

    D runs frozen and unwrapped (one forward on fake and real together): gradients flow through
    it to S, none reaches its parameters.
    """
    count = len(logits_u)
    discriminator.requires_grad_(False)
    try:
        d_logit, d_features = discriminator(
            torch.cat([fake_maps(logits_u, pad_u), real_maps]), torch.cat([images_u, images_r])
        )
    finally:
        discriminator.requires_grad_(True)
    fake_logit, fake_features = d_logit[:count], d_features[:count]
    loss = logits_u.new_zeros(())
    scalars: dict[str, torch.Tensor] = {}
    if "fm" in gan.losses:
        loss_fm = feature_matching_loss(d_features[count:], fake_features)
        loss = loss + gan.lambda_fm * loss_fm
        scalars["loss_fm"] = loss_fm.detach()
    if "st" in gan.losses:
        loss_st, selected = self_training_loss(logits_u, torch.sigmoid(fake_logit), gan.gamma)
        loss = loss + gan.lambda_st * loss_st
        scalars.update(loss_st=loss_st.detach(), st_selected=selected.sum().float())
    if gan.losses == "ce+sgan":
        loss_adv = generator_adversarial_loss(fake_logit)
        loss = loss + gan.lambda_adv * loss_adv
        scalars["loss_adv"] = loss_adv.detach()
    return GanTerms(loss, scalars)


def train_s4gan(cfg: Config, resumed: Checkpoint | None = None, log: Log = log_to_stderr) -> Path:
    """Train s4GAN (continuing ``resumed`` if given); return the last checkpoint."""
    with runtime_for(cfg) as runtime:
        run = S4ganRun(cfg, runtime, resumed, log)
        gan, num_classes = cfg.gan, run.num_classes
        segmenter = run.wrap(run.model)
        discriminator = run.wrap(run.discriminator)
        batch_u = gan.unlabeled_batch_size or cfg.train.batch_size
        labeled = run.batches(run.data.labeled, stream=0, batch_size=cfg.train.batch_size)
        unlabeled = run.batches(run.data.unlabeled, stream=1, batch_size=batch_u)
        real = run.batches(run.data.labeled, stream=2, batch_size=cfg.train.batch_size)
        use_gan = gan.losses != "ce"

        def step(iteration: int) -> Scalars:
            batch_l, batch_u, batch_r = next(labeled), next(unlabeled), next(real)
            x_l, x_u, x_r = (run.to_device(b["image"]) for b in (batch_l, batch_u, batch_r))
            y_l = batch_l["mask"].to(runtime.device, non_blocking=True)
            y_r = batch_r["mask"].to(runtime.device, non_blocking=True)
            scalars: Scalars = {}
            record: Scalars = {
                "d_real": 0.0,
                "d_fake": 0.0,
                "st_selected": 0.0,
                "st_batch": len(x_u),
            }

            # --- S step (eq. 4). One forward for the labeled and unlabeled images (a module
            # under DistributedDataParallel may run forward once per backward).
            with runtime.autocast():
                logits = segmenter(torch.cat([x_l, x_u]) if use_gan else x_l)
            logits = upsample_logits(logits.float(), x_l.shape[-2:])
            logits_l, logits_u = logits[: len(x_l)], logits[len(x_l) :]
            loss_ce = F.cross_entropy(logits_l, y_l, ignore_index=IGNORE_INDEX)
            loss = loss_ce
            scalars["loss_ce"] = loss_ce.detach()
            if use_gan:
                images_u, images_r = minmax01(x_u), minmax01(x_r)
                real_maps = one_hot_with_ignore(y_r, num_classes)
                pad_u = batch_u["pad"].to(runtime.device) if gan.d_ignore == "zero" else None
                terms = segmenter_gan_terms(
                    run.discriminator, logits_u, images_u, real_maps, images_r, gan, pad_u
                )
                loss = loss + terms.loss
                scalars.update(terms.scalars)
                record["st_selected"] = terms.scalars.get("st_selected", 0.0)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
            run.scheduler.step()

            # --- D step (eq. 5) on the detached prediction and the real maps, one forward.
            if use_gan:
                d_logit, _ = discriminator(
                    torch.cat([fake_maps(logits_u.detach(), pad_u), real_maps]),
                    torch.cat([images_u, images_r]),
                )
                fake_logit, real_logit = d_logit[: len(x_u)], d_logit[len(x_u) :]
                loss_d = discriminator_loss(real_logit, fake_logit)
                run.optimizer_d.zero_grad(set_to_none=True)
                loss_d.backward()
                run.optimizer_d.step()
                record["d_real"] = torch.sigmoid(real_logit.detach()).mean()
                record["d_fake"] = torch.sigmoid(fake_logit.detach()).mean()
                scalars.update(
                    loss_d=loss_d.detach(), d_real=record["d_real"], d_fake=record["d_fake"]
                )
                run.scheduler_d.step()
            run.record(iteration, record)
            return scalars

        last = run.loop(step, f"s4GAN ({gan.losses})")
        if runtime.is_main:
            write_history(run.history, run.out_dir)
        return last
