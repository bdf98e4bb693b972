"""FERSNet: facial expression recognition and synthesis with selective feature sharing.

Zhao, Liu, Xiao, Lun, Lam, "Deep Multi-task Learning for Facial Expression Recognition and
Synthesis Based on Selective Feature Sharing" (ICPR 2020), Fig. 1 and section IV-A.

Two streams over the same gray face:

* FER stream: four blocks (two 3x3 conv + BN + ReLU, then 2x2 stride-2 max-pool), then the
  classifier f_cls of two fully connected layers -> E logits.
* FES stream: the same four encoder blocks; the one-hot target expression goes through the
  "transformer" f_tra (FC + 2x2 stride-2 transposed conv) to a map of the encoder's output size;
  both are concatenated and the decoder f_dec (four blocks whose max-pool is replaced by a 2x2
  stride-2 transposed convolution) rebuilds the face with the target expression.
* After each of the four encoder blocks a pair of ConvFLUs (eqs. 1-4) exchanges features in both
  directions (FER <- FES and FES <- FER), both computed from the maps before the exchange.

Choices the paper leaves open (written down so they can be changed knowingly): the hidden width
of f_cls (``fc_dim``, ReLU between the two layers); f_tra maps E -> C x (s/2) x (s/2) by FC, then
ReLU, one transposed conv, BN, ReLU (s = encoder output side; see :class:`LabelTransformer`); the decoder ends with a 3x3 conv to the image channels and tanh, which is exactly the
normalised input range of the shipped preprocessing (mean 0.5, std 0.5 -> [-1, 1]).

Ablations (paper Table VI), as constructor options:

* ``mtl=False`` - "FERSNet w/o MTL": the single-task network, i.e. the FER stream and classifier
  only (no FES encoder, ConvFLUs, transformer or decoder).
* ``convflu=False`` - "FERSNet w/o ConvFLU": hard parameter sharing (section I: "shares the
  feature maps at the bottom layers ... separates different branches for different tasks at the
  top"): ONE encoder of four blocks whose output feeds both the classifier and the FES head
  (transformer + decoder). It therefore has no separate FES encoder and no ConvFLUs.
  The paper also enlarged the ablated networks to match FERSNet's capacity without saying how;
  ``width`` can be raised for that.

One option beyond the paper, off in the paper's configuration: ``skips=True`` also feeds the FES
encoder's level-1..3 maps (after the ConvFLU exchange) to the decoder block of the same size,
concatenated with its input, as in U-Net / pix2pix generators. Without them the decoder must
rebuild the person from the last 6x6 map alone; at 16 filters that map holds too little (see
:func:`fersnet_light`), so the light configuration turns them on.

A second option beyond the paper, also off there: ``output="masked"`` (GANimation's attention
mask: Pumarola et al., ECCV 2018) gives the decoder a second head, a one-channel sigmoid mask M,
and the synthesised face is ``M * C + (1 - M) * I``: the decoder's image C where it paints, the input
face I copied pixel for pixel elsewhere. Why: the decoder's C is a little blurred everywhere, and
the identity of the person (skin, eye shape, hair) lives in the pixels an expression does not move;
with the mask those pixels are the source's own, so edits stay local to brows, eyes and mouth.

Gate maps are keyed ``"{r|z}/{fer<-fes|fes<-fer}/{level}"`` with levels 1..4.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ferkit.errors import UsageError
from ferkit.models.base import FerModel
from ferkit.models.convflu import ConvFLU
from ferkit.models.outputs import ModelOutput
from ferkit.models.registry import register_model

PAPER = "Zhao et al., Deep Multi-task Learning for FER and FES Based on Selective Feature Sharing, ICPR 2020"
LEVELS = 4
#: gate-map directions: FER stream receiving from FES, and FES receiving from FER
DIRECTIONS = ("fer<-fes", "fes<-fer")


class SynthesisParts(NamedTuple):
    """A synthesis with what it is made of (``output="masked"``: ``image = mask * painted + (1 - mask) * source``)."""

    image: torch.Tensor
    #: [B, 1, H, W] in (0, 1), None for the direct output
    mask: Optional[torch.Tensor]
    #: the decoder's own image before any blending (= ``image`` for the direct output)
    painted: torch.Tensor


def gate_key(gate: str, direction: str, level: int) -> str:
    return f"{gate}/{direction}/{level}"


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


def encoder_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 conv + BN + ReLU, then 2x2 stride-2 max-pool (section IV-A)."""
    return nn.Sequential(*_conv_bn_relu(in_channels, out_channels), *_conv_bn_relu(out_channels, out_channels),
                         nn.MaxPool2d(2, 2))


#: how the decoder's image becomes the synthesised face: all of it (paper), or blended with the
#: input face through a learned mask (see the module docstring)
OUTPUTS = ("direct", "masked")

#: how a decoder block doubles its map: the paper's 2x2 stride-2 transposed convolution, or a
#: resize-convolution (nearest x2, then 3x3 conv), which cannot make checkerboard artefacts
UPSAMPLING = ("transposed", "resize")


def decoder_block(in_channels: int, out_channels: int, upsample: str = "transposed") -> nn.Sequential:
    """The encoder block with the max-pool replaced by an upsampling step (paper: 2x2 stride-2 transposed conv).

    ``upsample="resize"`` (Odena et al., "Deconvolution and Checkerboard Artifacts", 2016): a 2x2
    stride-2 transposed convolution paints each output pixel from exactly one kernel tap, so
    neighbouring pixels come from different weights and the synthesised faces show a 2-pixel grid
    (seen around the mouth of the 16-filter model); nearest-neighbour doubling followed by a 3x3
    convolution mixes the same input into every output pixel.
    """
    if upsample not in UPSAMPLING:
        raise ValueError(f"upsample must be one of {UPSAMPLING}, got {upsample!r}")
    up: list[nn.Module] = ([nn.ConvTranspose2d(out_channels, out_channels, 2, stride=2)] if upsample == "transposed"
                           else [nn.Upsample(scale_factor=2, mode="nearest"),
                                 nn.Conv2d(out_channels, out_channels, 3, padding=1)])
    return nn.Sequential(*_conv_bn_relu(in_channels, out_channels), *_conv_bn_relu(out_channels, out_channels), *up)


class LabelTransformer(nn.Module):
    """f_tra: one-hot target [B, E] -> feature map [B, C, s, s] (the FES encoder's output size).

    FC to a smaller map, then one transposed convolution up to s: 2x2 stride 2 (as in the decoder)
    from s/2 when s is even, 3x3 stride 1 from s-2 when s is odd (48x48 faces give s = 3).
    """

    def __init__(self, num_classes: int, channels: int, side: int) -> None:
        super().__init__()
        if side < 1:
            raise ValueError(f"encoder output side must be positive, got {side}")
        self.channels = channels
        if side % 2 == 0:
            self.start, up = side // 2, nn.ConvTranspose2d(channels, channels, 2, stride=2, bias=False)
        else:
            self.start, up = max(1, side - 2), nn.ConvTranspose2d(channels, channels, 3 if side > 1 else 1,
                                                                  stride=1, bias=False)
        self.fc = nn.Linear(num_classes, channels * self.start * self.start)
        self.up = nn.Sequential(up, nn.BatchNorm2d(channels), nn.ReLU(inplace=True))

    def forward(self, onehot: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc(onehot)).view(-1, self.channels, self.start, self.start)
        return self.up(x)


class FERSNet(FerModel):
    """Two-stream FER + FES network with ConvFLU feature sharing; see the module docstring."""

    def __init__(self, num_classes: int = 7, *, in_channels: int = 1, input_size: int = 96, width: int = 256,
                 fc_dim: int = 512, mtl: bool = True, convflu: bool = True, skips: bool = False,
                 upsample: str = "transposed", output: str = "direct") -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if input_size % 16:
            raise UsageError(f"FERSNet input_size must be a multiple of 16 (four 2x2 poolings), got {input_size}")
        self.num_classes, self.in_channels, self.input_size, self.width = num_classes, in_channels, input_size, width
        self.mtl = bool(mtl)
        self.convflu = bool(convflu) and self.mtl
        self.skips = bool(skips) and self.mtl
        self.upsample = upsample
        self.output = output if self.mtl else "direct"
        # instance flags: an ablated model cannot show gates / synthesise, and panels must say so
        self.has_gates = self.convflu
        self.has_synthesis = self.mtl
        side = input_size // 16

        self.fer_blocks = nn.ModuleList(encoder_block(in_channels if i == 0 else width, width) for i in range(LEVELS))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(width * side * side, fc_dim), nn.ReLU(inplace=True),
                                        nn.Linear(fc_dim, num_classes))
        if self.convflu:
            self.fes_blocks = nn.ModuleList(encoder_block(in_channels if i == 0 else width, width)
                                            for i in range(LEVELS))
            self.flu_fer = nn.ModuleList(ConvFLU(width) for _ in range(LEVELS))  # FER <- FES
            self.flu_fes = nn.ModuleList(ConvFLU(width) for _ in range(LEVELS))  # FES <- FER
        if self.mtl:
            self.transformer = LabelTransformer(num_classes, width, side)
            # block 0 takes [FES map, label map]; with skips every later block also takes the
            # FES encoder map of its input size
            self.decoder = nn.ModuleList([decoder_block(2 * width, width, upsample)]
                                         + [decoder_block((2 if self.skips else 1) * width, width, upsample)
                                            for _ in range(LEVELS - 1)])
            self.to_image = nn.Sequential(nn.Conv2d(width, in_channels, 3, padding=1), nn.Tanh())
            if self.output == "masked":
                # a separate head, so an --init from a direct-output FERSNet still fills to_image
                self.to_mask = nn.Sequential(nn.Conv2d(width, 1, 3, padding=1), nn.Sigmoid())

    # ---- the two streams ------------------------------------------------------------------
    def encode(self, x: torch.Tensor, return_gates: bool = False, shield_recognition: bool = False
               ) -> tuple[torch.Tensor, Optional[list[torch.Tensor]], dict[str, torch.Tensor]]:
        """(FER features, FES features of levels 1..4 or None, gate maps) of the four encoder levels.

        The last FES map feeds the decoder; the earlier ones are its skip inputs (``skips=True``).
        ``shield_recognition``: the FES stream reads the FER features through a stop-gradient, so the
        values are unchanged but losses on the synthesis do not reach the recognition stream (which
        then learns from L_cls alone, while L_cls still trains the FES stream through the FER <- FES
        gates). Training only; needs the ConvFLU pair (hard sharing has one encoder).
        """
        if shield_recognition and not self.convflu:
            raise ValueError("shield_recognition needs the two streams of the ConvFLU model")
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size or x.shape[1] != self.in_channels:
            raise ValueError(f"FERSNet expects [B, {self.in_channels}, {self.input_size}, {self.input_size}] input, "
                             f"got {tuple(x.shape)}; resize the faces (Preprocessing.input_size)")
        gates: dict[str, torch.Tensor] = {}
        if not self.convflu:  # single task or hard sharing: one encoder
            f, levels = x, []
            for block in self.fer_blocks:
                f = block(f)
                levels.append(f)
            return f, (levels if self.mtl else None), gates
        f_fer, f_fes, fes_levels = x, x, []
        for level, (b_fer, b_fes, flu_fer, flu_fes) in enumerate(
                zip(self.fer_blocks, self.fes_blocks, self.flu_fer, self.flu_fes), start=1):
            f_fer, f_fes = b_fer(f_fer), b_fes(f_fes)
            to_fer = flu_fer(f_fer, f_fes)
            to_fes = flu_fes(f_fes, f_fer.detach() if shield_recognition else f_fer)
            f_fer, f_fes = to_fer.features, to_fes.features
            fes_levels.append(f_fes)
            if return_gates:
                for direction, out in zip(DIRECTIONS, (to_fer, to_fes)):
                    gates[gate_key("r", direction, level)] = out.r
                    gates[gate_key("z", direction, level)] = out.z
        return f_fer, fes_levels, gates

    def decode(self, fes_levels: list[torch.Tensor], target: torch.Tensor, source: Optional[torch.Tensor] = None,
               return_parts: bool = False) -> Union[torch.Tensor, SynthesisParts]:
        """Face with expression ``target`` (class indices [B]) from the FES maps of :meth:`encode`.

        ``source``: the input faces the maps came from, which ``output="masked"`` copies where its
        mask is 0 (required there, unused otherwise). ``return_parts``: return the :class:`SynthesisParts`
        (mask and painted image too), which training regularises.
        """
        if not self.mtl:
            raise NotImplementedError("FERSNet w/o MTL has no synthesis stream")
        f_fes = fes_levels[-1]
        onehot = F.one_hot(target.to(f_fes.device).long(), self.num_classes).to(f_fes.dtype)
        h = self.decoder[0](torch.cat([f_fes, self.transformer(onehot)], dim=1))
        for block, skip in zip(self.decoder[1:], reversed(fes_levels[:-1])):
            h = block(torch.cat([h, skip], dim=1) if self.skips else h)
        painted = self.to_image(h)
        parts = SynthesisParts(painted, None, painted)
        if self.output == "masked":
            if source is None:
                raise ValueError("the masked output blends with the input face: pass source=")
            mask = self.to_mask(h)
            parts = SynthesisParts(mask * painted + (1 - mask) * source, mask, painted)
        return parts if return_parts else parts.image

    def forward(self, x: torch.Tensor, *, return_gates: bool = False,
                target: Optional[torch.Tensor] = None, shield_recognition: bool = False) -> ModelOutput:
        """Logits (and gates when asked); ``target`` also synthesises the face with that expression
        (``shield_recognition``: see :meth:`encode`)."""
        f_fer, f_fes, gates = self.encode(x, return_gates=return_gates, shield_recognition=shield_recognition)
        hidden = self.classifier[:3](f_fer)
        logits = self.classifier[3](hidden)
        out = ModelOutput(logits=logits, embedding=hidden, gates=gates)
        if target is not None:
            parts = self.decode(f_fes, self._targets(target, x.shape[0], x.device), source=x, return_parts=True)
            out.synthesis, out.synthesis_mask, out.synthesis_painted = parts
        return out

    def _targets(self, target: Union[int, torch.Tensor], batch: int, device: torch.device) -> torch.Tensor:
        t = torch.as_tensor(target, dtype=torch.long, device=device)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"target must be one class index or [B={batch}] indices, got shape {tuple(t.shape)}")
        if int(t.min()) < 0 or int(t.max()) >= self.num_classes:
            raise ValueError(f"target classes must lie in 0..{self.num_classes - 1}")
        return t

    def synthesize(self, x: torch.Tensor, target: Union[int, torch.Tensor]) -> torch.Tensor:
        """Faces ``x`` re-expressed as ``target`` (one index or [B] indices), in the input's range."""
        if not self.mtl:
            raise NotImplementedError("FERSNet w/o MTL has no synthesis stream")
        _, fes_levels, _ = self.encode(x)
        return self.decode(fes_levels, self._targets(target, x.shape[0], x.device), source=x)

    def synthesize_all(self, x: torch.Tensor) -> torch.Tensor:
        """Every expression of every face: ``[B, E, C, H, W]``; the encoder runs once per face."""
        if not self.mtl:
            raise NotImplementedError("FERSNet w/o MTL has no synthesis stream")
        _, fes_levels, _ = self.encode(x)
        b, e = x.shape[0], self.num_classes
        *feats, sources = [f.unsqueeze(1).expand(b, e, *f.shape[1:]).reshape(b * e, *f.shape[1:])
                           for f in [*fes_levels, x]]
        targets = torch.arange(e, device=x.device).repeat(b)
        return self.decode(feats, targets, source=sources).view(b, e, *x.shape[1:])


@register_model("fersnet", paper=PAPER, small_cfg={"width": 8, "input_size": 64}, cpu_sized=False,
                description="FERSNet as published: 256 filters, 96x96 gray, ConvFLU + FES stream (GPU training)")
def fersnet(num_classes: int = 7, in_channels: int = 1, input_size: int = 96, width: int = 256, fc_dim: int = 512,
            mtl: bool = True, convflu: bool = True, skips: bool = False, upsample: str = "transposed",
            output: str = "direct") -> FERSNet:
    """FERSNet with the paper's sizes (and no skip connections, as published)."""
    return FERSNet(num_classes, in_channels=in_channels, input_size=input_size, width=width, fc_dim=fc_dim,
                   mtl=mtl, convflu=convflu, skips=skips, upsample=upsample, output=output)


@register_model("fersnet_light", paper=PAPER, small_cfg={"width": 8, "input_size": 64},
                description="FERSNet for real-time CPU use: 96x96 gray input, 16 filters, FES skip connections")
def fersnet_light(num_classes: int = 7, in_channels: int = 1, input_size: int = 96, width: int = 16,
                  fc_dim: int = 128, mtl: bool = True, convflu: bool = True, skips: bool = True,
                  upsample: str = "transposed", output: str = "direct") -> FERSNet:
    """FERSNet with 16 filters instead of 256 and FES skip connections; input and depth as in the paper.

    Why: the decoder of the published network rebuilds the face from the FES encoder's last map
    alone, so that map decides how much of the person survives. Plain autoencoders trained for the
    same 75 s on an idle 2-core CPU on CK+48 (held-out subjects, MSE in [-1, 1]): 48x48/16
    filters (3x3x16 code) 0.087, 48x48/32 0.084, 64x64/16 0.070, 64x64/24 0.065, 96x96/8 0.082,
    96x96/16 (6x6x16 code) 0.052 - hence 96x96. But even a full eq. 10 run at 96x96/16 without
    skips (22 epochs) reached only 0.059 on held-out faces, which is a blurred average face in
    which nobody is recognisable; with ``skips`` the decoder gets the person from the level-1..3
    maps and the 6x6 map + label only have to carry the expression.
    """
    return FERSNet(num_classes, in_channels=in_channels, input_size=input_size, width=width, fc_dim=fc_dim,
                   mtl=mtl, convflu=convflu, skips=skips, upsample=upsample, output=output)
