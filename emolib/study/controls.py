"""Random-direction controls: the yardstick every causal effect of stage 06 is held against.

Adding *anything* of a given size to the residual stream changes a model's outputs. An emotion
vector's effect means something only where it exceeds what random unit directions of the same
norm do at the same strength, layer and positions. This module makes those directions
(reproducibly, by seed) and summarises their spread, so each experiment states its effect next to
the random band rather than next to zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch


def random_directions(width: int, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` random unit vectors ``[n, width]`` (float32), isotropic Gaussian then normalised.

    Seeded with a private generator: the global RNG is untouched, and seed ``s`` always gives the
    same directions whatever ran before.
    """
    if n < 0 or width <= 0:
        raise ValueError(f"Need n >= 0 and width > 0, got n={n}, width={width}.")
    g = torch.Generator().manual_seed(int(seed))
    v = torch.randn(n, width, generator=g, dtype=torch.float32)
    return v / v.norm(dim=-1, keepdim=True)


def random_labels(n: int) -> list[str]:
    """Names of the random controls, as they appear in tables and figures."""
    return [f"random{i}" for i in range(n)]


@dataclass
class RandomSpread:
    """Summary of one effect measured under several random directions."""

    n: int
    mean: float
    sd: float
    lo: float  # smallest value
    hi: float  # largest value
    q025: float
    q975: float

    @classmethod
    def of(cls, values: Sequence[float] | np.ndarray | torch.Tensor) -> RandomSpread:
        if isinstance(values, torch.Tensor):
            x = values.detach().double().flatten().cpu().numpy()
        else:
            x = np.asarray(values, dtype=np.float64).ravel()
        x = x[np.isfinite(x)]
        if x.size == 0:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan, nan, nan)
        return cls(int(x.size), float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else 0.0, float(x.min()),
                   float(x.max()), float(np.quantile(x, 0.025)), float(np.quantile(x, 0.975)))

    def exceeded_by(self, effect: float, side: str = "both") -> bool:
        """Whether ``effect`` lies outside every random value: above the largest (``"up"``), below
        the smallest (``"down"``), or either (``"both"``). With no random values, False."""
        if self.n == 0:
            return False
        if side == "up":
            return effect > self.hi
        if side == "down":
            return effect < self.lo
        return effect > self.hi or effect < self.lo

    def to_dict(self) -> dict:
        return asdict(self)
