"""The transparent VAE encoder: alpha + padded RGB → a latent offset.

Architecture of the released `vae_transparent_encoder` and
`layer_sd15_vae_transparent_encoder` files (layerdiffuse.md §2.2): a plain stack
of 3×3 convs with SiLU, three stride-2 steps, and a zero-initialised output conv.
Its output replaces the noise of the SD VAE's posterior sample:
`z = mean + std * offset_scale * encoder(x)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

RELEASED_ENCODER_CHANNELS = (32, 64, 128, 256)


class TransparentVAEEncoder(nn.Module):
    """The released latent-offset encoder.

    Built with no arguments it has the released architecture; the state dict keys
    are `blocks.{0,2,…,16}.{weight,bias}`.

    Args:
        channels: channels of the four resolutions; every step after the first halves
            the resolution.
        in_channels: alpha + RGB.
        latent_channels: channels of the SD latent.
    """

    def __init__(
        self,
        channels: Sequence[int] = RELEASED_ENCODER_CHANNELS,
        in_channels: int = 4,
        latent_channels: int = 4,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for level, width in enumerate(channels):
            stride = 1 if level == 0 else 2
            layers += [
                nn.Conv2d(previous, width, kernel_size=3, padding=1, stride=stride),
                nn.SiLU(),
                nn.Conv2d(width, width, kernel_size=3, padding=1),
                nn.SiLU(),
            ]
            previous = width
        layers.append(nn.Conv2d(previous, latent_channels, kernel_size=3, padding=1))
        self.blocks = nn.Sequential(*layers)

    @property
    def downscale(self) -> int:
        """Input height and width are divided by this."""
        strided = sum(1 for m in self.blocks if isinstance(m, nn.Conv2d) and m.stride[0] == 2)
        return 2**strided

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode.

        Args:
            x: (B, 4, H, W) in [0, 1]: channel 0 alpha, 1–3 `pad_rgb` colour.

        Returns:
            (B, 4, H/8, W/8) latent offset, before any offset scale.
        """
        return self.blocks(x)
