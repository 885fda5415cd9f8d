"""Input layouts as views: every tensor is seen as (batch, heads, seq, dim) through strides.

``input_layout`` names the query/key/value layout and, after an underscore, a different output layout
(``BNSD_BSND``: BNSD in, BSND out). The views below never copy, so kernels read the caller's memory
with the strides of the view and write the output through the output layout's strides.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange

from .errors import require

# Layout name -> einops pattern from that layout to (b, n, s, d).
_TO_BNSD = {
    "BSH": "b s (n d) -> b n s d",
    "BSND": "b s n d -> b n s d",
    "BNSD": "b n s d -> b n s d",
    "NBSD": "n b s d -> b n s d",
    # token-major layouts hold one sequence of T tokens; batches are offsets into it
    "TND": "t n d -> 1 n t d",
    "NTD": "n t d -> 1 n t d",
    "NSD": "n s d -> 1 n s d",
}
_FROM_BNSD = {name: " -> ".join(reversed(p.split(" -> "))) for name, p in _TO_BNSD.items()}

PROMPT_LAYOUTS = ("BSH", "BSND", "BNSD", "BNSD_BSND")
FUSED_LAYOUTS = ("BSH", "BSND", "BNSD", "BNSD_BSND", "TND", "NTD_TND", "TND_NTD", "BSH_NBSD", "BSND_NBSD",
                 "BNSD_NBSD", "NSD")
TOKEN_LAYOUTS = ("TND", "NTD")     # variable-length batches addressed by cumulative lengths


@dataclass(frozen=True)
class Layout:
    name: str      # as given, e.g. "BNSD_BSND"
    inp: str       # layout of query/key/value
    out: str       # layout of the output

    @staticmethod
    def parse(name: str, allowed: tuple[str, ...]) -> "Layout":
        require(isinstance(name, str) and name in allowed, "input_layout", name,
                f"expected one of {', '.join(allowed)}")
        inp, _, out = name.partition("_")
        return Layout(name, inp, out or inp)


def as_bnsd(t: torch.Tensor, layout: str, heads: int) -> torch.Tensor:
    """View of ``t`` (in ``layout``) as (B, heads, S, D); never a copy. The same as
    ``rearrange(t, _TO_BNSD[layout])``, with plain view ops: this is on every launch."""
    if layout == "BSH":
        return t.unflatten(2, (heads, t.shape[2] // heads)).transpose(1, 2)
    if layout == "BSND":
        return t.transpose(1, 2)
    if layout == "NBSD":
        return t.transpose(0, 1)
    if layout == "TND":
        return t.transpose(0, 1).unsqueeze(0)
    if layout in ("NTD", "NSD"):
        return t.unsqueeze(0)
    return t


def from_bnsd(t: torch.Tensor, layout: str) -> torch.Tensor:
    """Inverse of ``as_bnsd`` for a (B, N, S, D) tensor (B = 1 for the token-major layouts)."""
    return rearrange(t, _FROM_BNSD[layout])


def ndim(layout: str) -> int:
    return 3 if layout in ("BSH", "TND", "NTD", "NSD") else 4


def bnsd_shape(t: torch.Tensor, layout: str, heads: int) -> tuple[int, int, int, int]:
    """(B, heads, S, D) of ``t`` read in ``layout``; for BSH, D = H / heads."""
    if layout == "BSH":
        b, s, h = t.shape
        return b, heads, s, h // heads
    if layout == "BSND":
        b, s, n, d = t.shape
        return b, n, s, d
    if layout == "TND":
        s, n, d = t.shape
        return 1, n, s, d
    if layout in ("NTD", "NSD"):
        n, s, d = t.shape
        return 1, n, s, d
    if layout == "NBSD":
        n, b, s, d = t.shape
        return b, n, s, d
    b, n, s, d = t.shape
    return b, n, s, d


def out_shape(layout: str, b: int, n: int, s: int, d: int) -> tuple[int, ...]:
    """Shape of a (b, n, s, d) result stored in ``layout``."""
    return {"BSH": (b, s, n * d), "BSND": (b, s, n, d), "BNSD": (b, n, s, d), "NBSD": (n, b, s, d),
            "TND": (s, n, d), "NTD": (n, s, d), "NSD": (n, s, d)}[layout]


def strides4(t: torch.Tensor) -> tuple[int, int, int, int]:
    """Strides of a 4-D view as a plain tuple (b, n, s, d)."""
    return tuple(int(x) for x in t.stride())
