"""The vision model V: the World Models paper's convolutional VAE for 64×64×3 frames.

Encoder: 4 convolutions (32, 64, 128, 256 channels, kernel 4, stride 2, no padding, ReLU):
64 → 31 → 14 → 6 → 2, flattened to 256·2·2 = 1024 → linear heads μ and log σ² (``latent_size`` each).
Decoder: linear ``latent_size`` → 1024, viewed as (1024, 1, 1), then 4 transposed convolutions
(128 k5, 64 k5, 32 k6, 3 k6, stride 2; ReLU, sigmoid output): 1 → 5 → 13 → 30 → 64.
With the default sizes the model has exactly 4,348,547 parameters, the paper's count.

Images are float in [0, 1], NCHW; :func:`frames_to_tensor` converts the uint8 NHWC frames from ``data/``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

FRAME_SIZE = 64


class VAE(nn.Module):
    """Convolutional VAE (paper defaults). All sizes are constructor arguments so a checkpoint's
    ``model_args`` rebuilds it exactly.

    Args:
        latent_size: L, size of z.
        image_channels: C of the input/output images (3 for RGB).
        encoder_channels: output channels of the 4 stride-2 encoder convolutions.
        encoder_kernel: kernel size of the encoder convolutions.
        decoder_channels: output channels of the transposed convolutions before the last one (which
            outputs ``image_channels``).
        decoder_kernels: kernel sizes of all transposed convolutions (one more than ``decoder_channels``).
        dense_size: width of the flattened encoder output and of the decoder's first linear layer
            (must equal encoder_channels[-1] · 2 · 2 for 64×64 inputs with the default kernels).
    """

    def __init__(self, latent_size: int = 32, image_channels: int = 3,
                 encoder_channels: Sequence[int] = (32, 64, 128, 256), encoder_kernel: int = 4,
                 decoder_channels: Sequence[int] = (128, 64, 32), decoder_kernels: Sequence[int] = (5, 5, 6, 6),
                 dense_size: int = 1024):
        super().__init__()
        encoder_channels = tuple(int(c) for c in encoder_channels)
        decoder_channels = tuple(int(c) for c in decoder_channels)
        decoder_kernels = tuple(int(k) for k in decoder_kernels)
        if len(decoder_kernels) != len(decoder_channels) + 1:
            raise ValueError(f"decoder_kernels needs {len(decoder_channels) + 1} entries, got {len(decoder_kernels)}")
        self.latent_size = int(latent_size)
        self.image_channels = int(image_channels)
        self.dense_size = int(dense_size)

        layers: list[nn.Module] = []
        in_channels = self.image_channels
        for channels in encoder_channels:
            layers += [nn.Conv2d(in_channels, channels, encoder_kernel, stride=2), nn.ReLU(inplace=True)]
            in_channels = channels
        layers.append(nn.Flatten())
        self.encoder = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.encoder(torch.zeros(1, self.image_channels, FRAME_SIZE, FRAME_SIZE)).shape[1]
        if flat != self.dense_size:
            raise ValueError(f"encoder output is {flat} wide for {FRAME_SIZE}×{FRAME_SIZE} inputs, "
                             f"but dense_size is {self.dense_size}")
        self.fc_mu = nn.Linear(self.dense_size, self.latent_size)
        self.fc_logvar = nn.Linear(self.dense_size, self.latent_size)

        self.fc_decode = nn.Linear(self.latent_size, self.dense_size)
        layers = []
        in_channels = self.dense_size
        for channels, kernel in zip(decoder_channels, decoder_kernels):
            layers += [nn.ConvTranspose2d(in_channels, channels, kernel, stride=2), nn.ReLU(inplace=True)]
            in_channels = channels
        layers += [nn.ConvTranspose2d(in_channels, self.image_channels, decoder_kernels[-1], stride=2), nn.Sigmoid()]
        self.decoder = nn.Sequential(*layers)
        with torch.no_grad():
            out = self.decoder(torch.zeros(1, self.dense_size, 1, 1)).shape[-2:]
        if tuple(out) != (FRAME_SIZE, FRAME_SIZE):
            raise ValueError(f"decoder produces {tuple(out)} images, expected {FRAME_SIZE}×{FRAME_SIZE}")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, 64, 64) float in [0, 1] → (μ (B, L), log σ² (B, L))."""
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_logvar(h)

    @staticmethod
    def sample(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterisation: z = μ + σ·ε, ε ~ N(0, I). mu, logvar (B, L) → z (B, L)."""
        eps = torch.randn(mu.shape, dtype=mu.dtype, device=mu.device, generator=generator)
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, L) → images (B, C, 64, 64) in [0, 1]."""
        h = self.fc_decode(z).view(-1, self.dense_size, 1, 1)
        return self.decoder(h)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, C, 64, 64) in [0, 1] → (reconstruction (B, C, 64, 64), μ (B, L), log σ² (B, L))."""
        mu, logvar = self.encode(x)
        return self.decode(self.sample(mu, logvar)), mu, logvar


def kl_per_image(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) summed over latent dimensions: mu, logvar (B, L) → (B,) nats."""
    mu = mu.float()
    logvar = logvar.float()
    return -0.5 * torch.sum(1.0 + logvar - mu.pow(2) - logvar.exp(), dim=-1)


def vae_loss(recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             free_bits: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The two terms of the VAE objective, returned separately (train with ``recon + β·kl``).

    Args:
        recon, x: (B, C, 64, 64) reconstruction and target in [0, 1].
        mu, logvar: (B, L) encoder outputs.
        free_bits: the paper's KL floor in nats per latent dimension (0.5 in World Models; 0 = off):
            each image's KL is clamped from below at ``free_bits · L`` (``max(KL, τ·L)`` as in the
            paper's code), so the encoder is not pushed to encode less than that.

    Returns:
        recon_loss: scalar, sum of squared error per image, averaged over the batch.
        kl: scalar, KL per image (floored when ``free_bits > 0``), averaged over the batch.
    """
    recon_loss = (recon.float() - x.float()).pow(2).flatten(1).sum(dim=1).mean()
    kl = kl_per_image(mu, logvar)
    if free_bits > 0:
        kl = torch.clamp(kl, min=float(free_bits) * mu.shape[-1])
    return recon_loss, kl.mean()


def frames_to_tensor(frames: np.ndarray | torch.Tensor, device: torch.device | str | None = None,
                     channels_last: bool = False) -> torch.Tensor:
    """uint8 frames (B, 64, 64, 3) NHWC (numpy or tensor) → float32 (B, 3, 64, 64) in [0, 1] on ``device``.

    The uint8 array travels to the device first (4× less to copy), then is converted there. With
    ``channels_last=True`` the result keeps NHWC memory order (``torch.channels_last``), which is
    free here and faster for the convolutions on CPU; otherwise it is contiguous NCHW.
    """
    if isinstance(frames, np.ndarray):
        frames = np.ascontiguousarray(frames)
        tensor = torch.from_numpy(frames if frames.flags.writeable else frames.copy())  # e.g. a memory map
    else:
        tensor = frames
    if tensor.dtype != torch.uint8:
        raise TypeError(f"frames_to_tensor expects uint8 frames, got {tensor.dtype}")
    if tensor.ndim != 4 or tensor.shape[-1] not in (1, 3):
        raise ValueError(f"frames_to_tensor expects (B, H, W, C) frames, got shape {tuple(tensor.shape)}")
    if device is not None:
        tensor = tensor.to(device, non_blocking=True)
    images = tensor.permute(0, 3, 1, 2).float().div_(255.0)  # the permuted view is channels_last in memory
    return images.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


__all__ = ["VAE", "vae_loss", "kl_per_image", "frames_to_tensor"]


def to_images(x: torch.Tensor) -> np.ndarray:
    """(B, 3, 64, 64) float in [0, 1] → uint8 (B, 64, 64, 3)."""
    return (x.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
