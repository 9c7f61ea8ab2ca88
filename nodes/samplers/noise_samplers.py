"""Per-step noise sources of the stochastic samplers (ComfyUI-exact seeding).

A noise source is a callable ``noise(sigma, sigma_next) -> Tensor`` returning one standard-normal tensor of the
latent's shape for the interval (sigma, sigma_next).  Two kinds exist, both seeded with the KSampler seed:

* :class:`GeneratorNoise` - a private ``torch.Generator`` on the latent's device, seeded once per sampling call;
  every request is one ``randn`` of the full latent shape (the interval is ignored).
* :class:`BrownianTreeNoise` - increments of one Brownian motion over [smallest non-zero sigma, largest sigma],
  realised by ``torchsde.BrownianTree`` (entropy = seed), normalised by sqrt(|sigma_next - sigma|), so that nested
  sub-intervals (dpmpp_sde's midpoints) get correlated draws.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch

NoiseSource = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class GeneratorNoise:
    """One ``randn`` of the latent shape per request from a generator seeded once with ``seed``.

    With ``seed=None`` the draws come from torch's global generator instead (non-reproducible use).
    """

    def __init__(self, like: torch.Tensor, seed: Optional[int]):
        self.shape = tuple(like.shape)
        self.dtype = like.dtype
        self.device = like.device
        self.generator: Optional[torch.Generator] = None
        if seed is not None:
            self.generator = torch.Generator(device=like.device)
            self.generator.manual_seed(int(seed))

    def __call__(self, sigma=None, sigma_next=None) -> torch.Tensor:
        return torch.randn(self.shape, dtype=self.dtype, device=self.device, generator=self.generator)


def _ordered(a: torch.Tensor, b: torch.Tensor):
    """(low, high, sign) with sign = +1 when a < b (the increment runs forward)."""
    return (a, b, 1) if a < b else (b, a, -1)


class BrownianTreeNoise:
    """Normalised Brownian increments W(sigma_next) - W(sigma) / sqrt(|sigma_next - sigma|).

    ``on_cpu=True`` builds the tree on the CPU whatever the latent's device (the non-``_gpu`` samplers);
    ``on_cpu=False`` builds it on the latent's device (the ``_gpu`` variants).  Both give identical numbers on a
    CPU latent.  The tree itself is created at the first request (same numbers: it is a pure function of seed and
    interval), so a schedule without any stochastic step never needs a valid interval.
    """

    def __init__(self, like: torch.Tensor, sigma_min, sigma_max, seed: Optional[int], on_cpu: bool = True):
        self.like_zeros = torch.zeros_like(like)
        self.sigma_min = torch.as_tensor(sigma_min)
        self.sigma_max = torch.as_tensor(sigma_max)
        if seed is None:
            seed = int(torch.randint(0, 2**63 - 1, ()).item())
        self.seed = int(seed)
        self.on_cpu = on_cpu
        self._tree = None
        self._tree_sign = 1

    def _build_tree(self):
        try:
            import torchsde  # only the Brownian-tree samplers need it
        except ImportError as error:
            raise ImportError("the Brownian-tree samplers (dpmpp_sde, dpmpp_2m_sde, dpmpp_3m_sde, ...) need the "
                              "torchsde package (pip install torchsde)") from error

        t0, t1, self._tree_sign = _ordered(self.sigma_min, self.sigma_max)
        w0 = self.like_zeros
        if self.on_cpu:
            t0, t1, w0 = t0.detach().cpu(), t1.detach().cpu(), w0.detach().cpu()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._tree = torchsde.BrownianTree(t0, w0, t1, entropy=self.seed)

    def increment(self, sigma, sigma_next) -> torch.Tensor:
        """Signed Brownian increment between the two sigmas (not normalised)."""
        if self._tree is None:
            self._build_tree()
        low, high, sign = _ordered(torch.as_tensor(sigma), torch.as_tensor(sigma_next))
        device, dtype = low.device, low.dtype
        if self.on_cpu:
            low, high = low.detach().cpu().float(), high.detach().cpu().float()
        # torchsde warns when a query lies a rounding error outside [t0, t1]; it clamps, which is what we want.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = self._tree(low, high)
        return w.to(device=device, dtype=dtype) * (self._tree_sign * sign)

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        sigma, sigma_next = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        return self.increment(sigma, sigma_next) / (sigma_next - sigma).abs().sqrt()


def brownian_noise_for(x: torch.Tensor, sigmas: torch.Tensor, seed: Optional[int], on_cpu: bool) -> BrownianTreeNoise:
    """The Brownian source the SDE samplers use: interval [smallest non-zero sigma, largest sigma]."""
    positive = sigmas[sigmas > 0]
    sigma_min = positive.min() if positive.numel() else sigmas.max()
    return BrownianTreeNoise(x, sigma_min, sigmas.max(), seed, on_cpu=on_cpu)


class RecordedNoise:
    """Replays a fixed list of draws in order (tests, or re-running a traced sampling); records the requests."""

    def __init__(self, draws):
        self.draws = list(draws)
        self.requests: list = []

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        if len(self.requests) >= len(self.draws):
            raise IndexError(f"noise request {len(self.requests) + 1} but only {len(self.draws)} recorded draws")
        self.requests.append((float(sigma), float(sigma_next)))
        return self.draws[len(self.requests) - 1]


class RecordingNoise:
    """Wraps a noise source and keeps every (sigma, sigma_next, draw) it hands out."""

    def __init__(self, source: NoiseSource):
        self.source = source
        self.requests: list = []
        self.draws: list = []

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        draw = self.source(sigma, sigma_next)
        self.requests.append((float(sigma), float(sigma_next)))
        self.draws.append(draw)
        return draw
