"""Train the toy models on the toy world (`toy/world.py`): `editsweep toy train --out DIR`.

Four stages, each reproducible from the seed, with a progress bar and loss curves (`loss.png`,
`train.json`) rewritten as they go:

1. the VAE: reconstruction (L1 + MSE) plus a small KL term (weight 1e-6, as Stable Diffusion's);
   the latent scaling factor is then set so that latents have unit std, as SD's 0.18215 does;
2. the UNet and the text encoder together: epsilon prediction on the VAE's latents under SD's
   noise schedule, 10% of captions replaced by "" for classifier-free guidance, and parts of the
   caption (size, position, background) dropped at random so that short prompts ("a red star") are
   in distribution; an exponential moving average of the weights is what gets saved;
3. the VAE's decoder again, encoder frozen (`train_decoder`): the latents the UNet learnt stay as
   they are, the round trip gets sharper;
4. the toy CLIP: open_clip's contrastive loss on image-caption pairs of the world.

The training images are a fixed pool of rendered scenes (rendering per step would cost as much as
a UNet step on this CPU); the pool is large enough that every caption combination recurs rarely.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from editsweep.toy import models, world
from editsweep.toy.config import TrainConfig

CFG_DROPOUT = 0.1  # share of captions replaced by the empty prompt
PART_DROPOUT = 0.3  # chance of leaving out each of size, position, background from a caption


class Curves:
    """Loss per step of every stage, written to `train.json` and plotted to `loss.png`."""

    def __init__(self, out: Path, config: TrainConfig) -> None:
        self.out, self.config = out, config
        self.losses: dict[str, list[float]] = {}
        self.info: dict[str, dict] = {}

    def add(self, stage: str, loss: float) -> None:
        self.losses.setdefault(stage, []).append(loss)

    def write(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        record = {"config": self.config.model_dump(), "stages": self.info, "losses": self.losses}
        (self.out / "train.json").write_text(json.dumps(record) + "\n")
        fig, axes = plt.subplots(1, max(len(self.losses), 1), figsize=(4 * max(len(self.losses), 1), 3), squeeze=False)
        for ax, (stage, values) in zip(axes[0], self.losses.items()):
            v = np.asarray(values)
            window = max(1, len(v) // 50)
            smooth = np.convolve(v, np.ones(window) / window, mode="valid")
            ax.plot(v, alpha=0.3, lw=0.5)
            ax.plot(np.arange(len(smooth)) + window - 1, smooth)
            ax.set_yscale("log")
            ax.set_title(stage)
            ax.set_xlabel("step")
        fig.tight_layout()
        fig.savefig(self.out / "loss.png", dpi=80)
        plt.close(fig)


def render_pool(n: int, seed: int) -> tuple[torch.Tensor, list[world.Scene]]:
    """`n` random scenes and their renders, (n, 3, 32, 32) float in [0, 1]; scene i from (seed, i)."""
    scenes = [world.random_scene(np.random.default_rng([seed, 1, i])) for i in range(n)]
    pixels = np.stack([np.asarray(world.render(s)) for s in scenes])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0, scenes


def training_caption(scene: world.Scene, rng: np.random.Generator) -> str:
    """A caption with parts dropped at random (`PART_DROPOUT` each)."""
    keep = [bool(rng.random() >= PART_DROPOUT) for _ in range(3)]
    return scene.caption(with_size=keep[0], with_position=keep[1], with_background=keep[2])


def _lr_at(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay to 10% of the peak."""
    warm = max(1, steps // 20)
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, steps - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _optimise(optimizer, parameters, loss: torch.Tensor, curves: Curves | None, stage: str, step: int) -> None:
    """One optimiser step on `loss` (gradients clipped at norm 1), logged to `curves` (plotted every 200)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    optimizer.step()
    if curves is not None:
        curves.add(stage, loss.item())
        if step % 200 == 199:
            curves.write()


def train_vae(images: torch.Tensor, config: TrainConfig, curves: Curves | None = None):
    """A VAE trained on `images`, its `scaling_factor` set to 1 / std of the pool's latents."""
    torch.manual_seed(config.seed)
    vae = models.new_vae().train()
    optimizer = torch.optim.Adam(vae.parameters(), lr=config.vae_lr)
    gen = torch.Generator().manual_seed(config.seed)
    for step in tqdm(range(config.vae_steps), desc="vae", mininterval=5):
        _set_lr(optimizer, _lr_at(step, config.vae_steps, config.vae_lr))
        x = images[torch.randint(len(images), (config.vae_batch,), generator=gen)] * 2 - 1
        posterior = vae.encode(x).latent_dist
        y = vae.decode(posterior.sample(generator=gen)).sample
        loss = F.l1_loss(y, x) + F.mse_loss(y, x) + 1e-6 * posterior.kl().mean()
        _optimise(optimizer, vae.parameters(), loss, curves, "vae", step)
    vae.eval().requires_grad_(False)
    latents = encode_pool(vae, images[:2000], scale=1.0)
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return vae


def train_decoder(vae, images: torch.Tensor, config: TrainConfig, curves: Curves | None = None):
    """The VAE with its decoder fine-tuned on reconstruction, encoder frozen.

    The latents stay exactly what the UNet is trained on, so this stage can run at any time after
    the first (as Stable Diffusion's ft-MSE decoder was fine-tuned after the fact); it buys the
    round-trip PSNR that the joint stage's step budget leaves out.
    """
    torch.manual_seed(config.seed + 4)
    with torch.no_grad():
        posterior = [vae.encode(images[i : i + 500] * 2 - 1).latent_dist for i in range(0, len(images), 500)]
        mean = torch.cat([p.mean for p in posterior])
        std = torch.cat([p.std for p in posterior])
    parts = torch.nn.ModuleList([vae.post_quant_conv, vae.decoder]).train().requires_grad_(True)
    optimizer = torch.optim.Adam(parts.parameters(), lr=config.decoder_lr)
    gen = torch.Generator().manual_seed(config.seed + 4)
    for step in tqdm(range(config.decoder_steps), desc="decoder", mininterval=5):
        _set_lr(optimizer, _lr_at(step, config.decoder_steps, config.decoder_lr))
        index = torch.randint(len(images), (config.vae_batch,), generator=gen)
        z = mean[index] + std[index] * torch.randn(mean[index].shape, generator=gen)
        x = images[index] * 2 - 1
        y = vae.decode(z).sample
        loss = F.l1_loss(y, x) + F.mse_loss(y, x)
        _optimise(optimizer, parts.parameters(), loss, curves, "decoder", step)
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_pool(vae, images: torch.Tensor, scale: float | None = None, batch: int = 500) -> torch.Tensor:
    """Posterior-mean latents of `images`, times `scale` (default the VAE's scaling factor)."""
    scale = vae.config.scaling_factor if scale is None else scale
    parts = [vae.encode(images[i : i + batch] * 2 - 1).latent_dist.mean for i in range(0, len(images), batch)]
    return torch.cat(parts) * scale


def train_unet(latents: torch.Tensor, scenes: list[world.Scene], config: TrainConfig, curves: Curves | None = None):
    """(unet, text_encoder): the EMA weights after epsilon-prediction training on the latents."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    from editsweep.diffusion.backbone import SD_SCHEDULER, clip_bpe_tokenizer

    torch.manual_seed(config.seed + 1)
    unet, text_encoder = models.new_unet().train(), models.new_text_encoder().train()
    pair = torch.nn.ModuleDict({"unet": unet, "text_encoder": text_encoder})
    ema = EMAModel(pair.parameters(), decay=config.ema_decay)  # decay warms up: (1 + n) / (10 + n)
    optimizer = torch.optim.Adam(pair.parameters(), lr=config.unet_lr)
    noise_schedule = DDPMScheduler(
        **{k: v for k, v in SD_SCHEDULER.items() if k not in ("set_alpha_to_one",)}
    )
    tokenizer = clip_bpe_tokenizer()
    token_cache: dict[str, torch.Tensor] = {}

    def tokens(captions: list[str]) -> torch.Tensor:
        new = [c for c in dict.fromkeys(captions) if c not in token_cache]
        if new:
            ids = tokenizer(new, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
            token_cache.update(zip(new, ids))
        return torch.stack([token_cache[c] for c in captions])

    rng = np.random.default_rng([config.seed, 2])
    gen = torch.Generator().manual_seed(config.seed + 2)
    for step in tqdm(range(config.unet_steps), desc="unet+text", mininterval=5):
        _set_lr(optimizer, _lr_at(step, config.unet_steps, config.unet_lr))
        index = torch.randint(len(latents), (config.unet_batch,), generator=gen)
        captions = [
            "" if rng.random() < CFG_DROPOUT else training_caption(scenes[i], rng) for i in index.tolist()
        ]
        x0 = latents[index]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (len(x0),), generator=gen)
        hidden = text_encoder(tokens(captions))[0]
        pred = unet(noise_schedule.add_noise(x0, noise, t), t, hidden).sample
        loss = F.mse_loss(pred, noise)
        _optimise(optimizer, pair.parameters(), loss, curves, "unet", step)
        ema.step(pair.parameters())
    ema.copy_to(pair.parameters())
    return unet.eval().requires_grad_(False), text_encoder.eval().requires_grad_(False)


def train_clip(images: torch.Tensor, scenes: list[world.Scene], config: TrainConfig, curves: Curves | None = None):
    """The toy CLIP after contrastive training on (image, caption) pairs of the pool."""
    import open_clip
    from open_clip.loss import ClipLoss

    torch.manual_seed(config.seed + 3)
    model = models.new_clip().train()
    tokenizer = open_clip.SimpleTokenizer(context_length=models.CLIP_CONFIG["text_cfg"]["context_length"])
    mean = torch.tensor(models.CLIP_PREPROCESS["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(models.CLIP_PREPROCESS["std"]).view(1, 3, 1, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.clip_lr, weight_decay=0.0)
    loss_fn = ClipLoss()
    rng = np.random.default_rng([config.seed, 3])
    gen = torch.Generator().manual_seed(config.seed + 3)
    for step in tqdm(range(config.clip_steps), desc="clip", mininterval=5):
        _set_lr(optimizer, _lr_at(step, config.clip_steps, config.clip_lr))
        index = torch.randint(len(images), (config.clip_batch,), generator=gen)
        text = tokenizer([training_caption(scenes[i], rng) for i in index.tolist()])
        image_features = model.encode_image((images[index] - mean) / std, normalize=True)
        text_features = model.encode_text(text, normalize=True)
        loss = loss_fn(image_features, text_features, model.logit_scale.exp())
        _optimise(optimizer, model.parameters(), loss, curves, "clip", step)
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
    return model.eval().requires_grad_(False)


def train_all(out: Path, config: TrainConfig | None = None) -> dict[str, dict]:
    """Train the three stages into `out` (backbone parts, clip/, loss.png, train.json); their times."""
    config = config or TrainConfig()
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads)
    curves = Curves(out, config)
    start = time.perf_counter()
    images, scenes = render_pool(config.pool, config.seed)
    curves.info["pool"] = {"seconds": round(time.perf_counter() - start, 1), "images": len(images)}

    start = time.perf_counter()
    vae = train_vae(images, config, curves)
    curves.info["vae"] = {"seconds": round(time.perf_counter() - start, 1), "scaling_factor": vae.config.scaling_factor}
    models.save_vae(out, vae)
    curves.write()

    start = time.perf_counter()
    latents = encode_pool(vae, images)
    unet, text_encoder = train_unet(latents, scenes, config, curves)
    models.save_denoiser(out, unet, text_encoder)
    curves.info["unet"] = {"seconds": round(time.perf_counter() - start, 1)}
    curves.write()

    start = time.perf_counter()
    vae = train_decoder(vae, images, config, curves)
    models.save_vae(out, vae)
    curves.info["decoder"] = {"seconds": round(time.perf_counter() - start, 1)}
    curves.write()

    start = time.perf_counter()
    clip = train_clip(images, scenes, config, curves)
    models.save_clip(out / models.CLIP_FOLDER, clip)
    curves.info["clip"] = {"seconds": round(time.perf_counter() - start, 1)}
    curves.write()
    return curves.info
