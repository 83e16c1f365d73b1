"""The FLUX transparent decoder and encoder: the release's keys and shapes, decode and encode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.layerdiffuse.flux_transparent_vae import (
    FLUX_OFFSET_SCALE,
    FluxTransparentVAEDecoder,
    FluxTransparentVAEEncoder,
    decode_transparent,
    encode_transparent,
    flux_encoder_input,
)
from backend.layerdiffuse.flux_weights import (
    load_flux_transparent_decoder,
    load_flux_transparent_encoder,
    split_transparent_vae,
)
from backend.model_set import FluxModelSet


def _meta_state(shapes: dict[str, tuple[int, ...]], prefix: str) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}{key}": torch.empty(shape, device="meta", dtype=torch.bfloat16)
        for key, shape in shapes.items()
    }


def test_released_decoder_and_encoder_keys_and_shapes() -> None:
    """538 decoder tensors with a 16-channel latent_conv_in; the encoder's 16-channel output."""
    with torch.device("meta"):
        decoder = FluxTransparentVAEDecoder().state_dict()
        encoder = FluxTransparentVAEEncoder().state_dict()
    assert len(decoder) == 538
    assert sum(t.numel() for t in decoder.values()) == 104_105_572  # SD's + 12·64 weights
    assert tuple(decoder["latent_conv_in.weight"].shape) == (64, 16, 1, 1)
    assert tuple(decoder["conv_out.weight"].shape) == (4, 32, 3, 3)
    assert tuple(decoder["down_blocks.4.attentions.1.to_q.weight"].shape) == (256, 256)
    assert sorted(encoder) == sorted(
        f"blocks.{i}.{p}" for i in range(0, 17, 2) for p in ("weight", "bias")
    )
    assert tuple(encoder["blocks.0.weight"].shape) == (32, 4, 3, 3)
    assert tuple(encoder["blocks.16.weight"].shape) == (16, 256, 3, 3)
    assert sum(t.numel() for t in encoder.values()) == 1_209_424


def test_release_size_is_decoder_encoder_and_the_flux_vae_in_bf16(
    flux_dev_vae_shapes: dict[str, tuple[int, ...]],
) -> None:
    """The 379 MB `.pth` holds decoder + encoder + a FLUX VAE copy (sd_vae.*) in bf16."""
    with torch.device("meta"):
        decoder = FluxTransparentVAEDecoder().state_dict()
        encoder = FluxTransparentVAEEncoder().state_dict()
    vae_parameters = sum(int(np.prod(shape)) for shape in flux_dev_vae_shapes.values())
    assert vae_parameters == 83_819_683
    total = sum(t.numel() for t in (*decoder.values(), *encoder.values())) + vae_parameters
    assert total * 2 == 378_269_358  # + pickle records ≈ 378.6 MB, listed as "379 MB"
    without_vae = (total - vae_parameters) * 2
    assert without_vae < 211_000_000  # far from 379 MB: the copy must be in the file


def test_released_layout_splits_and_loads_strictly(
    flux_dev_vae_shapes: dict[str, tuple[int, ...]],
) -> None:
    with torch.device("meta"):
        decoder = FluxTransparentVAEDecoder().state_dict()
        encoder = FluxTransparentVAEEncoder().state_dict()
    state = {
        **_meta_state({k: tuple(v.shape) for k, v in decoder.items()}, "decoder."),
        **_meta_state({k: tuple(v.shape) for k, v in encoder.items()}, "encoder."),
        **_meta_state(flux_dev_vae_shapes, "sd_vae."),
    }
    parts = split_transparent_vae(state)
    assert len(parts.decoder) == 538 and len(parts.encoder) == 18
    assert len(parts.vae) == len(flux_dev_vae_shapes)
    loaded = load_flux_transparent_decoder(parts.decoder)
    assert tuple(loaded.latent_conv_in.weight.shape) == (64, 16, 1, 1)
    assert loaded.conv_in.weight.dtype == torch.bfloat16  # the file's tensors, assigned
    assert tuple(load_flux_transparent_encoder(parts.encoder).blocks[16].weight.shape) == (
        16,
        256,
        3,
        3,
    )


def test_split_refuses_unknown_and_missing_parts() -> None:
    tensor = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unknown key 'vae\.x': expected decoder\.\*"):
        split_transparent_vae({"decoder.a": tensor, "encoder.b": tensor, "vae.x": tensor})
    with pytest.raises(ValueError, match=r"the file holds no encoder\.\* tensors"):
        split_transparent_vae({"decoder.a": tensor})


def test_strict_load_refuses_a_missing_or_misshapen_tensor() -> None:
    torch.manual_seed(0)
    state = FluxTransparentVAEDecoder(block_out_channels=(4, 4, 8, 8, 16, 16, 16)).state_dict()
    del state["conv_out.bias"]
    with pytest.raises(
        ValueError, match=r"(?s)not a transparent decoder of the released format.*conv_out\.bias"
    ):
        load_flux_transparent_decoder(state)
    encoder = FluxTransparentVAEEncoder(channels=(8, 8, 16, 16)).state_dict()
    encoder["blocks.2.weight"] = torch.zeros(8, 8, 1, 1)
    with pytest.raises(ValueError, match="not a transparent encoder of the released format"):
        load_flux_transparent_encoder(encoder)


def test_encoder_input_is_colour_first_then_alpha() -> None:
    rgba = np.zeros((16, 8, 4), dtype=np.uint8)
    rgba[:8, :, :3] = (255, 0, 51)
    rgba[:8, :, 3] = 255
    rgba[8:, :, 3] = 0
    vae_input, offset_input = flux_encoder_input(rgba)
    assert vae_input.shape == (1, 3, 16, 8) and offset_input.shape == (1, 4, 16, 8)
    # opaque red: (2·1 − 1)·1 = 1, (2·0 − 1)·1 = −1; transparent: mid-grey 0
    assert vae_input[0, :, 0, 0].tolist() == pytest.approx([1.0, -1.0, 2 * 0.2 - 1])
    assert vae_input[0, :, 15, 0].tolist() == [0.0, 0.0, 0.0]
    assert offset_input[0, 3, 0, 0] == 1.0 and offset_input[0, 3, 15, 0] == 0.0
    assert offset_input[0, :3, 0, 0].tolist() == pytest.approx([1.0, 0.0, 0.2])
    # pad_rgb carries the visible colour into the transparent half
    assert offset_input[0, 0, 15, 0] > 0.9


def test_decode_returns_rgba_from_the_decoders_alpha_first_output(
    flux_demo: FluxModelSet,
) -> None:
    torch.manual_seed(3)
    latents = torch.randn(2, 16, 8, 16)
    rgba = decode_transparent(flux_demo.vae, flux_demo.decoder, latents, augment=False)
    assert rgba.shape == (2, 4, 64, 128) and rgba.dtype == torch.float32
    with torch.no_grad():
        pixel = flux_demo.vae.decode(latents).sample * 0.5 + 0.5  # not clipped
        raw = flux_demo.decoder(pixel, latents).clip(0, 1)
    assert torch.equal(rgba[:, 3], raw[:, 0])
    assert torch.equal(rgba[:, :3], raw[:, 1:4])
    augmented = decode_transparent(flux_demo.vae, flux_demo.decoder, latents)
    expected = flux_demo.decoder.estimate_augmented_sequential(pixel, latents)
    torch.testing.assert_close(augmented[:, 3], expected[:, 0], atol=1e-5, rtol=0)


def test_encode_replaces_the_posterior_noise_with_the_scaled_offset(
    flux_demo: FluxModelSet,
) -> None:
    rgba = np.random.default_rng(0).integers(0, 256, (64, 64, 4), dtype=np.uint8)
    latents = encode_transparent(flux_demo.vae, flux_demo.encoder, rgba)
    assert latents.shape == (1, 16, 8, 8)
    vae_input, offset_input = flux_encoder_input(rgba)
    with torch.no_grad():
        posterior = flux_demo.vae.encode(vae_input).latent_dist
        offset = flux_demo.encoder(offset_input) * FLUX_OFFSET_SCALE
    z = posterior.mean + posterior.std * offset
    torch.testing.assert_close(latents, (z - 0.1159) * 0.3611)
    plain = (posterior.mean - 0.1159) * 0.3611
    assert (latents - plain).abs().max() > 1e-3  # the offset moves the latent
