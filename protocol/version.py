"""The protocol version and the rule for talking to a peer of another version.

Versions are `(major, minor)`. Peers of different major versions cannot talk: the one
that notices sends `unsupported_version` and the server closes. Within a major version
a newer minor may add fields; the older side ignores fields it does not know from a
newer peer, and refuses them (`invalid_field`) from a peer of its own or an older minor.
"""

from __future__ import annotations

from .errors import InvalidField, UnsupportedVersion, describe

__all__ = ["PROTOCOL_VERSION", "check_compatible", "is_newer_minor"]

PROTOCOL_VERSION: tuple[int, int] = (1, 3)
"""The version this package speaks, `(major, minor)`.

1.1 added the optional request fields `noise_source`, `second_*`, `hires` and
`hires_strength`; a 1.0 peer leaves them out (their defaults apply) or, talking to a 1.1
one, ignores them. 1.1 also added the input role `mask`, which a 1.0 server refuses
(`invalid_field`): a client sends a mask only to a server whose `welcome` says 1.1 or
later.

1.2 added the request fields `lora` and `lora_weight`, the samplers `lcm`,
`lcm_sgm_uniform` and `euler_sgm_uniform` (few-step mode) and `capabilities.loras`; a
client names a LoRA or one of those samplers only if the server's `welcome` offers it.
1.2 also added the model family `flux` and its method `flux_transparent`: a 1.1 client
cannot read a FLUX server's `welcome` (an unknown family) and says so.

1.3 added the family `qwen_layered` with its method `split_layers` (the role `layer`, in
and out, and the request field `layers`), the fallback methods `sd15_matted` and
`sdxl_matted`, and `model.warning`; a 1.2 client ignores the warning and the methods it
does not know, and cannot read a `qwen_layered` server's `welcome`."""


def check_compatible(peer: tuple[int, int]) -> None:
    """Check that a peer's version can talk to ours.

    Args:
        peer: the peer's `(major, minor)`, from its `hello` or `welcome`.

    Raises:
        InvalidField: `peer` is not two non-negative integers.
        UnsupportedVersion: the major versions differ.
    """
    major, minor = _split(peer)
    if major != PROTOCOL_VERSION[0]:
        ours = f"{PROTOCOL_VERSION[0]}.{PROTOCOL_VERSION[1]}"
        raise UnsupportedVersion(
            f"protocol version {major}.{minor} is not supported, this side speaks {ours}"
        )


def is_newer_minor(peer: tuple[int, int]) -> bool:
    """Whether a compatible peer has a newer minor version (its unknown fields are ignored).

    Args:
        peer: the peer's `(major, minor)`.

    Returns:
        True when the majors match and the peer's minor is above ours.

    Raises:
        InvalidField: `peer` is not two non-negative integers.
    """
    major, minor = _split(peer)
    return major == PROTOCOL_VERSION[0] and minor > PROTOCOL_VERSION[1]


def _split(peer: object) -> tuple[int, int]:
    if (
        isinstance(peer, (tuple, list))
        and len(peer) == 2
        and all(type(part) is int and part >= 0 for part in peer)
    ):
        return peer[0], peer[1]
    raise InvalidField(f"protocol: expected [major, minor], got {describe(peer)}")
