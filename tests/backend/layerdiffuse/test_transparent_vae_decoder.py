"""The transparent decoder: released architecture, strict loading, and its 8-view TTA."""

from __future__ import annotations

import pytest
import torch

from backend.layerdiffuse import TTA_VIEWS, TransparentVAEDecoder, load_transparent_decoder
from backend.layerdiffuse.transparent_vae_decoder import views_per_batch

TINY_CHANNELS = (8, 8, 16, 16, 32, 32, 32)


@pytest.fixture(scope="module")
def tiny_decoder() -> TransparentVAEDecoder:
    torch.manual_seed(0)
    decoder = TransparentVAEDecoder(block_out_channels=TINY_CHANNELS).eval()
    # The released latent_conv_in is trained; a non-zero one shows the latent matters.
    torch.nn.init.normal_(decoder.latent_conv_in.weight, std=0.5)
    return decoder


def test_released_architecture_keys_and_size() -> None:
    with torch.device("meta"):
        decoder = TransparentVAEDecoder()
    state = decoder.state_dict()
    # 538 tensors and 104,104,804 parameters: × 2 bytes = the released 208 MB fp16 files.
    assert len(state) == 538
    assert sum(t.numel() for t in state.values()) == 104_104_804
    expected_shapes = {
        "conv_in.weight": (32, 3, 3, 3),
        "latent_conv_in.weight": (64, 4, 1, 1),
        "down_blocks.0.downsamplers.0.conv.weight": (32, 32, 3, 3),
        "down_blocks.4.attentions.1.to_q.weight": (256, 256),
        "down_blocks.6.resnets.1.conv2.weight": (512, 512, 3, 3),
        "mid_block.attentions.0.group_norm.weight": (512,),
        "up_blocks.0.attentions.2.to_out.0.weight": (512, 512),
        "up_blocks.5.upsamplers.0.conv.weight": (32, 32, 3, 3),
        "up_blocks.6.resnets.2.conv_shortcut.weight": (32, 64, 1, 1),
        "conv_norm_out.weight": (32,),
        "conv_out.weight": (4, 32, 3, 3),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(key.startswith("down_blocks.6.downsamplers") for key in state)
    assert not any(key.startswith("up_blocks.6.upsamplers") for key in state)
    assert not any(".attentions." in key for key in state if key.startswith("down_blocks.3"))


def test_forward_shape_and_size_check(tiny_decoder: TransparentVAEDecoder) -> None:
    with torch.no_grad():
        output = tiny_decoder(torch.rand(2, 3, 64, 128), torch.randn(2, 4, 8, 16))
    assert output.shape == (2, 4, 64, 128)
    with pytest.raises(ValueError, match="not a multiple of 64"):
        tiny_decoder(torch.rand(1, 3, 64, 96), torch.randn(1, 4, 8, 12))


def test_latent_enters_at_latent_resolution(tiny_decoder: TransparentVAEDecoder) -> None:
    pixel = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        first = tiny_decoder(pixel, torch.zeros(1, 4, 8, 8))
        second = tiny_decoder(pixel, torch.randn(1, 4, 8, 8))
    assert not torch.allclose(first, second)


def _reference_tta(
    decoder: TransparentVAEDecoder, pixel: torch.Tensor, latent: torch.Tensor
) -> torch.Tensor:
    """The reference's loop as layerdiffuse.md §2.1 states it, written out literally."""
    results = []
    for flip in (False, True):
        for turns in range(4):
            feed_pixel, feed_latent = pixel.clone(), latent.clone()
            if flip:
                feed_pixel = torch.flip(feed_pixel, dims=(3,))
                feed_latent = torch.flip(feed_latent, dims=(3,))
            feed_pixel = torch.rot90(feed_pixel, k=turns, dims=(2, 3))
            feed_latent = torch.rot90(feed_latent, k=turns, dims=(2, 3))
            out = decoder(feed_pixel, feed_latent).clip(0, 1)
            out = torch.rot90(out, k=-turns, dims=(2, 3))
            if flip:
                out = torch.flip(out, dims=(3,))
            results.append(out)
    return torch.median(torch.stack(results, dim=0), dim=0).values


@pytest.mark.parametrize("size", [(64, 64), (64, 128)])
@pytest.mark.parametrize("views", [1, 3, 8])
def test_batched_tta_equals_the_sequential_algorithm(
    tiny_decoder: TransparentVAEDecoder, size: tuple[int, int], views: int
) -> None:
    torch.manual_seed(1)
    height, width = size
    pixel = torch.rand(2, 3, height, width)
    latent = torch.randn(2, 4, height // 8, width // 8)
    with torch.no_grad():
        reference = _reference_tta(tiny_decoder, pixel, latent)
        sequential = tiny_decoder.estimate_augmented_sequential(pixel, latent)
        batched = tiny_decoder.estimate_augmented(pixel, latent, max_views_per_batch=views)
    torch.testing.assert_close(sequential, reference, atol=0, rtol=0)
    torch.testing.assert_close(batched, reference, atol=1e-6, rtol=1e-5)
    assert batched.shape == (2, 4, height, width)
    assert batched.min() >= 0 and batched.max() <= 1


def test_tta_views_are_the_reference_eight() -> None:
    assert TTA_VIEWS == (
        (False, 0),
        (False, 1),
        (False, 2),
        (False, 3),
        (True, 0),
        (True, 1),
        (True, 2),
        (True, 3),
    )


def test_views_per_batch_is_bounded_by_memory() -> None:
    """Off CUDA (here on the meta device, which holds no memory) a 2 GiB budget."""
    assert views_per_batch(torch.zeros(1, 3, 64, 64, device="meta")) == 8
    # 4096² fp32 at ~1.8 kB per pixel per view is far over the 2 GiB budget.
    assert views_per_batch(torch.zeros(1, 3, 4096, 4096, device="meta")) == 1


def test_a_cpu_runs_one_view_per_pass() -> None:
    """Batching views only costs on a CPU (2.1x at 512² on the dev VM)."""
    assert views_per_batch(torch.zeros(1, 3, 64, 64)) == 1


def test_load_infers_the_architecture_and_is_strict(tiny_decoder: TransparentVAEDecoder) -> None:
    loaded = load_transparent_decoder(tiny_decoder.state_dict())
    pixel, latent = torch.rand(1, 3, 64, 64), torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(pixel, latent), tiny_decoder(pixel, latent))
    wrong = dict(tiny_decoder.state_dict())
    wrong["conv_out.weight"] = torch.zeros(3, 8, 3, 3)
    with pytest.raises(ValueError, match="transparent decoder"):
        load_transparent_decoder(wrong)
    with pytest.raises(ValueError, match="not a transparent decoder"):
        load_transparent_decoder({"blocks.0.weight": torch.zeros(1)})
