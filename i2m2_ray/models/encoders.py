"""Per-modality encoders: each maps one modality's batch to a flat feature vector (B, out_dim)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LeNet(nn.Module):
    """The AV-MNIST encoder: a 5x5 conv then ``layers`` 3x3 convs, each bias-free + BN + ReLU +
    2x2 max-pool, channels doubling per block, global average pool.

    Output width is ``base_channels * 2**layers``: image (3 extra blocks) 3 -> 24, 6 -> 48;
    112x112 spectrogram (5 extra blocks) 3 -> 96, 6 -> 192.
    """

    def __init__(self, in_channels: int, base_channels: int, layers: int) -> None:
        super().__init__()
        chans = [in_channels] + [base_channels * 2**i for i in range(layers + 1)]
        blocks = []
        for i in range(layers + 1):
            k = 5 if i == 0 else 3
            blocks += [
                nn.Conv2d(chans[i], chans[i + 1], k, padding=k // 2, bias=False),
                nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
        self.blocks = nn.Sequential(*blocks)
        self.out_dim = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).mean(dim=(2, 3))


def lenet_layers_for(height: int, width: int) -> int:
    """Extra conv blocks that pool a grid down to about 1x1: 28 -> 3, 64 or 112 -> 5."""
    return max(1, int(math.log2(min(height, width))) - 1)


class _PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.gn1 = nn.GroupNorm(groups, in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.gn2 = nn.GroupNorm(groups, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.gn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.gn2(out)))
        return out + skip


class PreActResNet18(nn.Module):
    """PreActResNet-18 with GroupNorm (the paper's fastMRI encoder): 3x3 stem, no stem downsampling."""

    def __init__(self, in_channels: int = 1, width: int = 64, groups: int = 32) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        layers, planes = [], width
        in_planes = width
        for i, stride in enumerate((1, 2, 2, 2)):
            planes = width * 2**i
            layers += [_PreActBlock(in_planes, planes, stride, groups), _PreActBlock(planes, planes, 1, groups)]
            in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.norm = nn.GroupNorm(groups, in_planes)
        self.out_dim = in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.stem(x))
        return F.relu(self.norm(out)).mean(dim=(2, 3))


class MLPEncoder(nn.Module):
    """For precomputed feature vectors (e.g. frozen vision-language embeddings)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class AudioFrontEnd(nn.Module):
    """Raw waveforms (B, T) -> (B, 1, F, frames) power or log-power spectrograms.

    Per-utterance normalisation (on by default) keeps quiet speakers from looking like
    silence: the AV-MNIST rebuild showed a 30x level gap between train and test speakers.
    Time/frequency masking (SpecAugment) applies only in training mode.
    """

    def __init__(self, n_fft: int, hop_length: int, log: bool = True, normalize: bool = True,
                 freq_mask: int = 0, time_mask: int = 0) -> None:
        import torchaudio  # lazy: only waveform models need it; the GPU bench runs without it

        super().__init__()
        self.spec = torchaudio.transforms.Spectrogram(n_fft=n_fft, hop_length=hop_length, power=2.0)
        self.log, self.normalize = log, normalize
        self.freq_mask = torchaudio.transforms.FrequencyMasking(freq_mask) if freq_mask else None
        self.time_mask = torchaudio.transforms.TimeMasking(time_mask) if time_mask else None

    def output_shape(self, num_samples: int) -> tuple[int, int, int]:
        return (1, self.spec.n_fft // 2 + 1, num_samples // self.spec.hop_length + 1)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = self.spec(wave.float())
        if self.log:
            x = torch.log(x + 1e-6)
        if self.normalize:
            mean = x.mean(dim=(1, 2), keepdim=True)
            std = x.std(dim=(1, 2), keepdim=True)
            x = (x - mean) / (std + 1e-5)
        x = x.unsqueeze(1)
        if self.training:
            if self.freq_mask is not None:
                x = self.freq_mask(x)
            if self.time_mask is not None:
                x = self.time_mask(x)
        return x


class WaveformEncoder(nn.Module):
    """Front end then a 2-D encoder, so raw audio trains end to end (and on GPU)."""

    def __init__(self, frontend: AudioFrontEnd, encoder: nn.Module) -> None:
        super().__init__()
        self.frontend = frontend
        self.encoder = encoder
        self.out_dim = encoder.out_dim

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.frontend(wave))


class MLPHead(nn.Module):
    """MLP(d, hidden, classes); with ``heads`` set, reshapes to (B, heads, classes) for multi-label."""

    def __init__(self, in_dim: int, hidden: int, num_classes: int, heads: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.num_classes = num_classes
        out = num_classes * (heads or 1)
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        return logits if self.heads is None else logits.view(len(x), self.heads, self.num_classes)
