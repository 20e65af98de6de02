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
  image-to-RGBA U-Net of this size: diffusers' UNet2DModel expects a timestep and is far larger);
  the batch's generators run as one network of grouped convolutions, so a batch trains at once.
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
from editsweep.diffusion.inputs import images_tensor
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
    lambda_composition: float = Field(1.0, ge=0, le=1000, description="lambda_g: composition loss (cosine + directional)")
    lambda_screen: float = Field(1.0, ge=0, le=1000, description="lambda_s: green-screen loss")
    lambda_structure: float = Field(2.0, ge=0, le=1000, description="structure loss (token self-similarity)")
    lambda_sparsity: float = Field(5e-2, ge=0, le=1000, description="lambda_r: alpha sparsity regulariser")
    gamma: float = Field(2.0, ge=0, le=1000, description="weight of ||alpha||_1 against the L0 term in the regulariser")
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
    """`copies` independent conv U-Nets, run as one network of grouped convolutions: copy b maps
    RGB image b (of B = copies) to its RGBA edit layer, colours and alpha in (0, 1).

    Grouped convolutions keep the images' generators apart (no weight or activation is shared), so
    a batch trains every image's generator in one pass; Adam being elementwise, the summed per-image
    losses give each copy the updates it would get alone."""

    def __init__(self, width: int, depth: int, copies: int = 1) -> None:
        super().__init__()
        self.copies = copies
        channels = [width * 2**i for i in range(depth)]
        self.down = nn.ModuleList()
        previous = 3
        for c in channels:
            self.down.append(_block(previous, c, copies))
            previous = c
        self.up = nn.ModuleList(
            _block(channels[i + 1] + channels[i], channels[i], copies) for i in reversed(range(depth - 1))
        )
        self.out = nn.Conv2d(copies * channels[0], copies * 4, 1, groups=copies)

    @classmethod
    def stacked(cls, singles: Sequence[EditLayerGenerator]) -> EditLayerGenerator:
        """One grouped network holding the weights of single-copy generators, in order."""
        first = singles[0]
        width, depth = first.out.in_channels, len(first.down)
        grouped = cls(width, depth, copies=len(singles)).to(first.out.weight.device)
        states = [g.state_dict() for g in singles]
        grouped.load_state_dict({k: torch.cat([st[k] for st in states]) for k in states[0]})
        return grouped

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(colours (B, 3, H, W), alpha (B, 1, H, W)) for any H, W (skips are resized to meet)."""
        if images.shape[0] != self.copies:
            raise ValueError(f"{self.copies} generators got {images.shape[0]} images")
        skips = []
        x = (images * 2 - 1).reshape(1, -1, *images.shape[-2:])
        for k, block in enumerate(self.down):
            x = block(x if k == 0 else F.avg_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            up = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(_cat_per_copy(up, skip, self.copies))
        out = torch.sigmoid(self.out(x)).reshape(self.copies, 4, *images.shape[-2:])
        return out[:, :3], out[:, 3:]


def _cat_per_copy(a: torch.Tensor, b: torch.Tensor, copies: int) -> torch.Tensor:
    """Concatenate the channels of two grouped activations (1, copies * c, h, w) copy by copy."""
    return torch.cat([a.unflatten(1, (copies, -1)), b.unflatten(1, (copies, -1))], 2).flatten(1, 2)


def _block(cin: int, cout: int, copies: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(copies * cin, copies * cout, 3, padding=1, groups=copies),
        nn.LeakyReLU(0.2),
        nn.Conv2d(copies * cout, copies * cout, 3, padding=1, groups=copies),
        nn.LeakyReLU(0.2),
    )


def composite(image: torch.Tensor, colours: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """alpha * colours + (1 - alpha) * image; alpha 0 gives `image` exactly."""
    return torch.where(alpha > 0, alpha * colours + (1 - alpha) * image, image)


def self_similarity(tokens: torch.Tensor) -> torch.Tensor:
    """Cosine self-similarity (B, P, P) of tokens (B, P, D)."""
    t = F.normalize(tokens, dim=-1)
    return t @ t.transpose(1, 2)


def random_crops(
    images: torch.Tensor, n: int, min_scale: float, size: int, generator: torch.Generator
) -> torch.Tensor:
    """`n` random square crops, the same boxes for every image of `images` (K, 3, H, W), each resized
    (bicubic) to `size`: (n, K, 3, size, size)."""
    h, w = images.shape[-2:]
    side_min = max(1, round(min_scale * min(h, w)))
    crops = []
    for _ in range(n):
        side = int(torch.randint(side_min, min(h, w) + 1, (), generator=generator))
        top = int(torch.randint(0, h - side + 1, (), generator=generator))
        left = int(torch.randint(0, w - side + 1, (), generator=generator))
        crop = images[..., top : top + side, left : left + side]
        crops.append(F.interpolate(crop, size=(size, size), mode="bicubic", align_corners=False))
    return torch.stack(crops)


def text2live_losses(
    guide: ClipGuide,
    images: torch.Tensor,
    colours: torch.Tensor,
    alpha: torch.Tensor,
    texts: torch.Tensor,
    params: Text2LiveParams,
    generators: Sequence[torch.Generator],
) -> dict[str, torch.Tensor]:
    """The paper's four loss terms per image (B,) for images (B, 3, H, W) and their layers.

    `texts` (B, 3, d) holds each image's normalised (target, source, screen) prompt embeddings;
    each image's crops come from its own generator, and every CLIP call covers the whole batch."""
    batch = images.shape[0]
    output = composite(images, colours, alpha)
    green = torch.tensor(GREEN, device=images.device).view(1, 3, 1, 1)
    screen = alpha * colours + (1 - alpha) * green
    views = torch.stack([output, images, screen], 1)  # (B, 3 views, 3, H, W)
    crops = torch.stack(
        [random_crops(v, params.crops, params.crop_scale, guide.image_size, g) for v, g in zip(views, generators)]
    )  # (B, crops, 3 views, 3, S, S)
    emb = guide.image_embeddings(crops.flatten(0, 2)).unflatten(0, (batch, params.crops, 3))
    out_e, in_e, screen_e = emb[:, :, 0], emb[:, :, 1], emb[:, :, 2]
    target, source, screen_text = (texts[:, None, k] for k in range(3))
    composition = cosine_distance(out_e, target) + directional_distance(out_e, in_e, target, source)
    sim = self_similarity(guide.image_tokens(torch.cat([images, output]))).unflatten(0, (2, batch))
    sparsity = params.gamma * alpha.abs().flatten(1).mean(1) + (2 * torch.sigmoid(5 * alpha) - 1).flatten(1).mean(1)
    return {
        "composition": composition.mean(1),
        "screen": cosine_distance(screen_e, screen_text).mean(1),
        "structure": (sim[0] - sim[1]).pow(2).flatten(1).mean(1),
        "sparsity": sparsity,
    }


def total_loss(terms: dict[str, torch.Tensor], params: Text2LiveParams) -> torch.Tensor:
    """The weighted sum of `text2live_losses`' terms, per image."""
    return (
        params.lambda_composition * terms["composition"]
        + params.lambda_screen * terms["screen"]
        + params.lambda_structure * terms["structure"]
        + params.lambda_sparsity * terms["sparsity"]
    )


def train_edit_layers(
    guide: ClipGuide,
    images: torch.Tensor,
    texts: torch.Tensor,
    params: Text2LiveParams,
    generators: Sequence[torch.Generator],
    losses: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train a fresh generator per image (B, 3, H, W), all at once; their layers (colours, alpha).

    Each generator's initial weights and crops come from its sample's generator, so a result does
    not depend on the other samples. `losses`, when given, receives each step's per-image losses (B,)."""
    singles = []
    for g in generators:
        seed = int(torch.randint(0, 2**62, (), generator=g))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            singles.append(EditLayerGenerator(params.width, params.depth))
    net = EditLayerGenerator.stacked(singles).to(images.device)
    optimizer = torch.optim.Adam(net.parameters(), lr=params.learning_rate)
    with torch.enable_grad():
        for _ in range(params.steps):
            colours, alpha = net(images)
            per_image = total_loss(text2live_losses(guide, images, colours, alpha, texts, params, generators), params)
            optimizer.zero_grad(set_to_none=True)
            per_image.sum().backward()
            optimizer.step()
            if losses is not None:
                losses.append(per_image.detach().cpu())
    with torch.no_grad():
        return net(images)


def screen_prompt(sample: Sample, template: str) -> str:
    """T_screen for a sample: `template` with {edit} = the words its target prompt adds."""
    added, _ = sample_concepts(sample)
    return template.format(edit=added)


@register_method
class Text2Live(Method):
    """A per-image RGBA edit layer trained with CLIP losses, composited on the input."""

    name = "text2live"
    families = ("sd", "sd3", "flux", "sdxl", "qwen-image")  # uses only the backbone's device: no diffusion model at all
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
        prompts = [[s.target_prompt, s.source_prompt or "", screen_prompt(s, params.screen_text)] for s in samples]
        texts = torch.stack([guide.text_embeddings(p) for p in prompts])
        colours, alpha = train_edit_layers(guide, images, texts, params, generators)
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
