"""`text2live`: Text2Live (Bar-Tal et al., ECCV 2022, arXiv 2204.02491), image editing with a
generated RGBA edit layer, trained per image with CLIP losses and composited on the input.

Per image (`invert`, once per group), a small U-Net generator G maps the input I_s to an edit layer
(C, alpha); the composite is I_o = alpha * C + (1 - alpha) * I_s. G is trained (Adam) with the
paper's objective (Sec. 3.1-3.2):
- composition: D_cos(I_o, T) + D_dir(I_s, I_o, T_ROI, T) on random crops of I_o and I_s (the same
  crop for both), T the target prompt, T_ROI the source prompt (`diffusion/clip_guidance.py`);
- screen: D_cos(I_screen, T_screen), I_screen = alpha * C + (1 - alpha) * green, T_screen
  `screen_text` filled with the edit's words (the sample's added words, `diffusion/ledits.py`);
- structure: || S(I_s) - S(I_o) ||^2, S the cosine self-similarity of the vision tower's tokens;
- sparsity: gamma * ||alpha||_1 + Psi_0(alpha), Psi_0(x) = 2 sigmoid(5 x) - 1 (a smooth L0).
The state is the trained layer (C, alpha) as plain tensors; `edit` composites it with
alpha * `opacity`, a cheap grid axis (opacity 0 returns the input exactly, 1 is the paper's output).

Differences from the paper and its code, and why:
- the structure loss uses the CLIP vision tower's output tokens, not DINO-ViT keys (no second
  network: the structure_distance scorer measures with DINO independently);
- no bootstrapping with a relevancy map in the first epochs and no internal dataset of augmented
  input images (G always sees the input itself); crops only, no perspective augmentation;
- Adam instead of MADGRAD (not in torch), the paper's learning rate;
- G is a small conv U-Net written here (the paper's generator is a U-Net too; no library ships an
  image-to-RGBA U-Net of this size: diffusers' UNet2DModel expects a timestep and is far larger).
Weights of the losses and the learning rate follow the paper's image setting (lambda_g 1,
lambda_s 1, lambda_structure 2, lambda_r 5e-2 with gamma 2, lr 2.5e-3).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from editsweep.datasets.base import Sample
from editsweep.diffusion.backbone import Backbone
from editsweep.diffusion.clip_guidance import (
    ClipGuide,
    ClipParams,
    clip_source,
    cosine_distance,
    directional_distance,
    load_clip_guide,
)
from editsweep.diffusion.inputs import images_tensor, source_prompts, target_prompts
from editsweep.diffusion.ledits import sample_concepts
from editsweep.methods.base import Method, Params, State, register_method

GREEN = (0.0, 177 / 255, 64 / 255)  # chroma-key green, as the screen loss composites over


class Text2LiveParams(ClipParams):
    """Training of the edit layer (per image): everything here changes the layer."""

    clip: str = Field(
        "ViT-B-32", description="CLIP of the losses (the paper's ViT-B/32): see diffusion/clip_guidance.py ClipParams"
    )
    steps: int = Field(1000, ge=0, le=100_000, description="Adam steps on the generator")
    learning_rate: float = Field(2.5e-3, gt=0, le=1, description="Adam learning rate")
    width: int = Field(32, ge=4, le=256, description="channels of the generator's first level (doubling per level)")
    depth: int = Field(3, ge=1, le=6, description="levels of the generator U-Net")
    crops: int = Field(8, ge=1, le=64, description="random crops per step for the CLIP losses")
    crop_scale: float = Field(0.6, gt=0, le=1, description="smallest crop side as a fraction of the image side")
    lambda_composition: float = Field(1.0, ge=0, description="lambda_g: composition loss (cosine + directional)")
    lambda_screen: float = Field(1.0, ge=0, description="lambda_s: green-screen loss")
    lambda_structure: float = Field(2.0, ge=0, description="structure loss (token self-similarity)")
    lambda_sparsity: float = Field(5e-2, ge=0, description="lambda_r: alpha sparsity regulariser")
    gamma: float = Field(2.0, ge=0, description="weight of ||alpha||_1 against the L0 term in the regulariser")
    screen_text: str = Field(
        "{edit} over a green screen", description="T_screen; {edit} is the sample's edit words"
    )

    @field_validator("screen_text")
    @classmethod
    def _only_edit_placeholder(cls, text: str) -> str:
        try:
            text.format(edit="")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"screen_text {text!r} may only use the placeholder {{edit}} ({err})") from err
        return text


class Text2LiveEditParams(Params):
    """Compositing only: a sweep over opacity shares the trained layer."""

    opacity: float = Field(
        1.0, ge=0, le=1, description="alpha multiplier: 0 returns the input, 1 the paper's composite"
    )


class EditLayerGenerator(nn.Module):
    """A conv U-Net from an RGB image (B, 3, H, W) to an RGBA edit layer: colours and alpha in (0, 1)."""

    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        channels = [width * 2**i for i in range(depth)]
        self.down = nn.ModuleList()
        previous = 3
        for c in channels:
            self.down.append(_block(previous, c))
            previous = c
        self.up = nn.ModuleList(_block(channels[i + 1] + channels[i], channels[i]) for i in reversed(range(depth - 1)))
        self.out = nn.Conv2d(channels[0], 4, 1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(colours (B, 3, H, W), alpha (B, 1, H, W)) for any H, W (skips are resized to meet)."""
        skips = []
        x = image * 2 - 1
        for k, block in enumerate(self.down):
            x = block(x if k == 0 else F.avg_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            up = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([up, skip], 1))
        out = torch.sigmoid(self.out(x))
        return out[:, :3], out[:, 3:]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(cout, cout, 3, padding=1), nn.LeakyReLU(0.2)
    )


def composite(image: torch.Tensor, colours: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """alpha * colours + (1 - alpha) * image; alpha 0 gives `image` exactly."""
    return torch.where(alpha > 0, alpha * colours + (1 - alpha) * image, image)


def self_similarity(tokens: torch.Tensor) -> torch.Tensor:
    """Cosine self-similarity (B, P, P) of tokens (B, P, D)."""
    t = F.normalize(tokens, dim=-1)
    return t @ t.transpose(1, 2)


def random_crops(images: torch.Tensor, n: int, min_scale: float, generator: torch.Generator) -> list[torch.Tensor]:
    """`n` random square crop boxes applied alike to every image of `images` (K, 3, H, W): n tensors."""
    h, w = images.shape[-2:]
    side_min = max(1, round(min_scale * min(h, w)))
    crops = []
    for _ in range(n):
        side = int(torch.randint(side_min, min(h, w) + 1, (), generator=generator))
        top = int(torch.randint(0, h - side + 1, (), generator=generator))
        left = int(torch.randint(0, w - side + 1, (), generator=generator))
        crops.append(images[..., top : top + side, left : left + side])
    return crops


def text2live_losses(
    guide: ClipGuide,
    image: torch.Tensor,
    colours: torch.Tensor,
    alpha: torch.Tensor,
    texts: torch.Tensor,
    params: Text2LiveParams,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """The paper's four loss terms (scalars) for one image (1, 3, H, W) and its layer.

    `texts` holds the normalised embeddings of (target, source, screen) prompts (3, d)."""
    target, source, screen_text = texts[0:1], texts[1:2], texts[2:3]
    output = composite(image, colours, alpha)
    green = torch.tensor(GREEN, device=image.device).view(1, 3, 1, 1)
    screen = alpha * colours + (1 - alpha) * green
    stacked = torch.cat([output, image, screen])
    crops = random_crops(stacked, params.crops, params.crop_scale, generator)
    emb = torch.stack([guide.image_embeddings(c) for c in crops])  # (crops, 3, d)
    out_e, in_e, screen_e = emb[:, 0], emb[:, 1], emb[:, 2]
    composition = cosine_distance(out_e, target) + directional_distance(out_e, in_e, target, source)
    tokens = guide.image_tokens(torch.cat([image, output]))
    sim = self_similarity(tokens)
    return {
        "composition": composition.mean(),
        "screen": cosine_distance(screen_e, screen_text).mean(),
        "structure": (sim[0] - sim[1]).pow(2).mean(),
        "sparsity": params.gamma * alpha.abs().mean() + (2 * torch.sigmoid(5 * alpha) - 1).mean(),
    }


def total_loss(terms: dict[str, torch.Tensor], params: Text2LiveParams) -> torch.Tensor:
    """The weighted sum of `text2live_losses`' terms."""
    return (
        params.lambda_composition * terms["composition"]
        + params.lambda_screen * terms["screen"]
        + params.lambda_structure * terms["structure"]
        + params.lambda_sparsity * terms["sparsity"]
    )


def train_edit_layer(
    guide: ClipGuide,
    image: torch.Tensor,
    texts: torch.Tensor,
    params: Text2LiveParams,
    generator: torch.Generator,
    losses: list[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train a fresh generator on one image (1, 3, H, W); its layer (colours, alpha) after training.

    The generator's initial weights and the crops come from `generator` (the sample's), so the
    result does not depend on other samples. `losses`, when given, receives the total loss of every step."""
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    with torch.random.fork_rng(devices=[image.device] if image.device.type == "cuda" else []):
        torch.manual_seed(seed)
        net = EditLayerGenerator(params.width, params.depth).to(image.device)
    optimizer = torch.optim.Adam(net.parameters(), lr=params.learning_rate)
    with torch.enable_grad():
        for _ in range(params.steps):
            colours, alpha = net(image)
            loss = total_loss(text2live_losses(guide, image, colours, alpha, texts, params, generator), params)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if losses is not None:
                losses.append(float(loss.detach()))
    with torch.no_grad():
        return net(image)


def screen_prompt(sample: Sample, template: str) -> str:
    """T_screen for a sample: `template` with {edit} = the words its target prompt adds."""
    added, _ = sample_concepts(sample)
    return template.format(edit=added)


@register_method
class Text2Live(Method):
    """A per-image RGBA edit layer trained with CLIP losses, composited on the input."""

    name = "text2live"
    InvertParams = Text2LiveParams
    EditParams = Text2LiveEditParams

    @classmethod
    def model_sources(cls, invert_params: Params) -> dict[str, str]:
        """The CLIP of the losses (the backbone is not used)."""
        return {"clip": clip_source(invert_params.clip, invert_params.clip_tag)}

    def invert(
        self,
        backbone: Backbone,
        samples: Sequence[Sample],
        params: Text2LiveParams,
        generators: Sequence[torch.Generator],
        seeds: Sequence[int] | None = None,
    ) -> State:
        images = images_tensor(samples, backbone.device).float().contiguous()
        guide = load_clip_guide(params.clip, params.clip_tag, backbone.device, self.name)
        layers = []
        for b, (sample, generator) in enumerate(zip(samples, generators)):
            texts = guide.text_embeddings(
                [target_prompts([sample])[0], source_prompts([sample])[0], screen_prompt(sample, params.screen_text)]
            )
            layers.append(train_edit_layer(guide, images[b : b + 1], texts, params, generator))
        colours = torch.cat([c for c, _ in layers])
        alpha = torch.cat([a for _, a in layers])
        return {"images": images, "colours": colours, "alpha": alpha}

    def edit(
        self,
        backbone: Backbone,
        state: State,
        samples: Sequence[Sample],
        invert_params: Text2LiveParams,
        edit_params: Sequence[Text2LiveEditParams],
        generators: Sequence[torch.Generator],
    ) -> list[torch.Tensor]:
        return [
            composite(state["images"], state["colours"], state["alpha"] * p.opacity).clamp(0, 1) for p in edit_params
        ]
