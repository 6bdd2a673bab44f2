"""Background-capture realism: the bg input is a separate capture of the empty scene, not the composite's own pixels.

Before that, `apply_camera` gives `image` and `bg` alike the look of one real camera (the same draw for both
captures, except for their sensor noise): a lighting gradient across the frame, vignetting, over- or
under-exposure that clips, a slight blur, sensor noise and JPEG. Then every training batch's `bg` passes through
`apply_capture`, the way BackgroundMattingV2 trains its background input: a nudged camera (shift, small rotation and scale, all in one affine `grid_sample`), a colour change
(exposure, white balance, contrast, gamma), sensor noise and JPEG re-compression, each with its own probability
and a fresh draw per sample. Without it a model could find the foreground by thresholding |image - bg|. Batched
torch, the same on CPU and CUDA, and no host syncs, so it can run inside the on-the-fly generator.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class CaptureConfig:
    # camera nudge: shift in pixels (a 1-3 px shift at 192x192 is common), rotation about the image centre,
    # scale (zoom); one draw of each, applied together as one affine warp
    shift_p: float = 0.8
    shift_px: float = 3.0  # largest shift in each direction, pixels
    rotate_p: float = 0.5
    rotate_deg: float = 0.75  # largest rotation either way, degrees
    scale_p: float = 0.5
    scale: float = 0.01  # largest zoom either way, as a fraction (0.01: 0.99x .. 1.01x)
    # colour: wide enough to cover a real second capture (auto exposure and white balance move by 15% or more)
    exposure_p: float = 0.6
    exposure: tuple[float, float] = (0.8, 1.2)  # gain on all channels
    white_balance_p: float = 0.6
    white_balance: tuple[float, float] = (0.85, 1.15)  # gain per channel
    contrast_p: float = 0.4
    contrast: tuple[float, float] = (0.85, 1.15)  # stretch about the picture's mean grey
    gamma_p: float = 0.4
    gamma: tuple[float, float] = (0.85, 1.15)  # x -> x ** gamma
    noise_p: float = 0.5
    noise_sigma: tuple[float, float] = (0.0, 0.02)  # gaussian sensor noise, in [0,1] units
    jpeg_p: float = 0.5
    jpeg_quality: tuple[float, float] = (60.0, 95.0)
    # camera response, the same on image and bg (apply_camera, before the above)
    gradient_p: float = 0.5
    gradient: float = 0.3  # gain 1 -+ this from one side of the frame to the other, in a random direction
    vignette_p: float = 0.4
    vignette: float = 0.4  # largest darkening in the corners
    clip_exposure_p: float = 0.3
    clip_exposure: tuple[float, float] = (0.6, 1.8)  # gain of an under- or over-exposed camera; highlights clip
    blur_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.0)  # gaussian, pixels
    sensor_noise_p: float = 0.3
    sensor_noise: tuple[float, float] = (0.0, 0.015)  # sigma; each capture draws its own noise
    camera_jpeg_p: float = 0.2  # low: bg's capture adds JPEG too, and data make stores image as JPEG already
    camera_jpeg_quality: tuple[float, float] = (70.0, 95.0)

    @classmethod
    def off(cls) -> CaptureConfig:
        """Every effect off: `apply_capture` returns its input unchanged."""
        return cls(**{name: 0.0 for name in cls.__dataclass_fields__ if name.endswith("_p")})


def _draw(n: int, p: float, lo_hi: tuple[float, float], neutral: float, generator, device,
          shape: tuple[int, ...] = ()) -> torch.Tensor:
    """(n, *shape) values uniform in lo_hi where an effect is on (probability p per sample), `neutral` elsewhere."""
    on = torch.rand(n, generator=generator, device=device) < p
    lo, hi = lo_hi
    val = lo + (hi - lo) * torch.rand((n, *shape), generator=generator, device=device)
    return torch.where(on.view(n, *([1] * len(shape))), val, torch.full_like(val, neutral))


def _where_on(x: torch.Tensor, on: torch.Tensor, fn) -> torch.Tensor:
    """x with `fn(x[sel], sel)` in the samples where `on` (N,) is true.

    On the CPU only those samples are computed (the effects cost more than the bookkeeping); elsewhere all are
    computed and selected, since picking the subset would read `on` back to the host and stall the GPU.
    """
    if x.device.type == "cpu":
        sel = on.nonzero()[:, 0]
        if sel.numel() == 0:
            return x
        out = x.clone()
        out[sel] = fn(x[sel], sel)
        return out
    return torch.where(on.view(-1, 1, 1, 1), fn(x, slice(None)), x)


def warp(x: torch.Tensor, shift: torch.Tensor, angle: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Each image as a camera moved by a similarity transform sees it: content at pixel q appears at
    c + scale * R(angle) (q - c) + shift, with c the image centre, `shift` (n,2) pixels (x, y), `angle` (n,)
    radians (positive turns x towards y, i.e. clockwise on screen), `scale` (n,). Bilinear, border pixels
    repeated; works in pixels, so a rotation stays a rotation on a non-square picture."""
    n, _, h, w = x.shape
    dev, dt = x.device, x.dtype
    cos, sin = torch.cos(angle).view(n, 1, 1), torch.sin(angle).view(n, 1, 1)
    inv = (1 / scale).view(n, 1, 1)
    # output pixel centre p, relative to the centre and less the shift, rotated back and unscaled
    px = (torch.arange(w, device=dev, dtype=dt) + 0.5 - w / 2).view(1, 1, w) - shift[:, 0].view(n, 1, 1)
    py = (torch.arange(h, device=dev, dtype=dt) + 0.5 - h / 2).view(1, h, 1) - shift[:, 1].view(n, 1, 1)
    qx = (cos * px + sin * py) * inv
    qy = (cos * py - sin * px) * inv
    grid = torch.stack([qx * (2 / w), qy * (2 / h)], dim=-1)  # normalised, align_corners=False
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable gaussian blur of each image (N,C,H,W) with its own sigma (N,) (5 taps: sigma <= 1 px)."""
    n, c, h, w = x.shape
    taps = torch.arange(-2, 3, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (taps / sigma.view(n, 1).clamp(min=1e-3)) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (N*C,5)
    y = F.pad(x.reshape(1, n * c, h, w), (2, 2, 2, 2), mode="replicate")
    y = F.conv2d(y, k.view(n * c, 1, 1, 5), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, 5, 1), groups=n * c)
    return y.view(n, c, h, w)


def apply_camera(image: torch.Tensor, bg: torch.Tensor, cfg: CaptureConfig, generator: torch.Generator | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, bg), both (N,3,H,W) in [0,1], as one camera would record them: the same lighting gradient,
    vignetting, clipping exposure, blur and JPEG quality on both, and sensor noise drawn for each. Mask and depth
    are untouched (these change colours, never where things are)."""
    n, _, h, w = image.shape
    dev, dt = image.device, image.dtype
    grad = _draw(n, cfg.gradient_p, (-cfg.gradient, cfg.gradient), 0.0, generator, dev)
    theta = 2 * math.pi * torch.rand(n, generator=generator, device=dev)
    vig = _draw(n, cfg.vignette_p, (0.0, cfg.vignette), 0.0, generator, dev)
    gain = _draw(n, cfg.clip_exposure_p, cfg.clip_exposure, 1.0, generator, dev)
    sigma = _draw(n, cfg.blur_p, cfg.blur_sigma, 0.0, generator, dev)
    noise = _draw(n, cfg.sensor_noise_p, cfg.sensor_noise, 0.0, generator, dev)
    jpeg_on = torch.rand(n, generator=generator, device=dev) < cfg.camera_jpeg_p
    lo, hi = cfg.camera_jpeg_quality
    quality = lo + (hi - lo) * torch.rand(n, generator=generator, device=dev)
    # one gain field per sample: exposure x gradient along direction theta x vignette, coordinates in [-1, 1]
    xs = ((torch.arange(w, device=dev, dtype=dt) + 0.5) * (2 / w) - 1).view(1, 1, 1, w)
    ys = ((torch.arange(h, device=dev, dtype=dt) + 0.5) * (2 / h) - 1).view(1, 1, h, 1)
    along = torch.cos(theta).view(n, 1, 1, 1) * xs + torch.sin(theta).view(n, 1, 1, 1) * ys  # in [-1.4, 1.4]
    r2 = (xs * xs + ys * ys) / 2  # 1 in the corners
    field = gain.view(n, 1, 1, 1) * (1 + grad.view(n, 1, 1, 1) * along / math.sqrt(2)) \
        * (1 - vig.view(n, 1, 1, 1) * r2)
    out = []
    for x in (image, bg):
        y = _where_on(x, sigma > 0, lambda t, s: _gaussian_blur(t, sigma[s]))
        y = y * field
        y = _where_on(y, noise > 0, lambda t, s: t + noise[s].view(-1, 1, 1, 1) * torch.randn(
            t.shape, generator=generator, device=dev, dtype=t.dtype))
        y = y.clamp(0, 1)  # highlights clip, as a sensor's do
        out.append(_where_on(y, jpeg_on, lambda t, s: jpeg_roundtrip(t, quality[s])))
    return out[0], out[1]


def apply_capture(bg: torch.Tensor, cfg: CaptureConfig, generator: torch.Generator | None) -> torch.Tensor:
    """(N,3,H,W) float in [0,1] -> the same scene as another capture would see it. `generator` must live on bg's
    device (None: torch's default generator)."""
    n = bg.shape[0]
    dev = bg.device
    shift_on = torch.rand(n, generator=generator, device=dev) < cfg.shift_p
    shift = (2 * torch.rand(n, 2, generator=generator, device=dev) - 1) * cfg.shift_px * shift_on.view(n, 1)
    rad = math.radians(cfg.rotate_deg)
    angle = _draw(n, cfg.rotate_p, (-rad, rad), 0.0, generator, dev)
    zoom = _draw(n, cfg.scale_p, (1 - cfg.scale, 1 + cfg.scale), 1.0, generator, dev)
    moved = shift_on | (angle != 0) | (zoom != 1)
    gain = _draw(n, cfg.exposure_p, cfg.exposure, 1.0, generator, dev)
    wb = _draw(n, cfg.white_balance_p, cfg.white_balance, 1.0, generator, dev, (3,))
    contrast = _draw(n, cfg.contrast_p, cfg.contrast, 1.0, generator, dev)
    gamma = _draw(n, cfg.gamma_p, cfg.gamma, 1.0, generator, dev)
    noise_on = torch.rand(n, generator=generator, device=dev) < cfg.noise_p
    sigma = cfg.noise_sigma[0] + (cfg.noise_sigma[1] - cfg.noise_sigma[0]) * torch.rand(n, generator=generator,
                                                                                          device=dev)
    jpeg_on = torch.rand(n, generator=generator, device=dev) < cfg.jpeg_p
    lo, hi = cfg.jpeg_quality
    quality = lo + (hi - lo) * torch.rand(n, generator=generator, device=dev)

    out = _where_on(bg, moved, lambda x, s: warp(x, shift[s], angle[s], zoom[s]))
    # exposure, white balance and contrast about the mean grey m of the re-exposed picture are one affine map per
    # channel: (x * g - m) * c + m = x * (g * c) + m * (1 - c); then over-exposure clips
    g = gain.view(n, 1) * wb  # (N,3)
    m = (out.mean(dim=(2, 3)) * g).mean(dim=1)  # (N,)
    c = contrast.view(n, 1)
    out = torch.addcmul((m.view(n, 1) * (1 - c)).view(n, 1, 1, 1).expand(n, 3, 1, 1), out,
                        (g * c).view(n, 3, 1, 1)).clamp_(0, 1)
    out = _where_on(out, gamma != 1, lambda x, s: x.pow(gamma[s].view(-1, 1, 1, 1)))
    out = _where_on(out, noise_on, lambda x, s: x + sigma[s].view(-1, 1, 1, 1) * torch.randn(
        x.shape, generator=generator, device=dev, dtype=x.dtype))
    out = out.clamp(0, 1)
    return _where_on(out, jpeg_on, lambda x, s: jpeg_roundtrip(x, quality[s]))


# ITU-T T.81 Annex K tables (quality 50), as libjpeg scales them
_LUMA = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
         14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
         49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
_CHROMA = [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
           47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32


@functools.lru_cache(maxsize=8)
def _dct_matrix(device, dtype) -> torch.Tensor:
    k = torch.arange(8, device=device, dtype=torch.float64)
    m = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    m[0] /= math.sqrt(2)
    return m.to(dtype)


@functools.lru_cache(maxsize=8)
def _base_tables(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # kept per device: copying the constants to a GPU on every call would wait for the GPU's queue
    return torch.tensor([_LUMA, _CHROMA], dtype=dtype).view(1, 2, 8, 8).to(device)


def _quant_tables(quality: torch.Tensor) -> torch.Tensor:
    """(N,) quality 1..100 -> (N,2,8,8) luma and chroma quantisation steps, libjpeg's scaling."""
    q = quality.clamp(1, 100)
    scale = torch.where(q < 50, 5000 / q, 200 - 2 * q)
    base = _base_tables(q.device, q.dtype)
    return torch.floor((base * scale.view(-1, 1, 1, 1) + 50) / 100).clamp(1, 255)


# RGB (0..255) <-> YCbCr (JFIF coefficients, chroma centred on 0)
_TO_YCC = [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]
_FROM_YCC = [[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]]


@functools.lru_cache(maxsize=8)
def _codec_matrices(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(RGB -> YCbCr, YCbCr -> RGB, the 64x64 2-D DCT of a flattened 8x8 block)."""
    m = _dct_matrix(device, torch.float64)
    return (torch.tensor(_TO_YCC, dtype=dtype).to(device), torch.tensor(_FROM_YCC, dtype=dtype).to(device),
            torch.kron(m, m).to(dtype))


def _quantise(planes: torch.Tensor, table: torch.Tensor, dct: torch.Tensor) -> torch.Tensor:
    """DCT every 8x8 block of planes (N,C,H,W), round the coefficients to multiples of table (N,64), and back.
    Blocks are flattened to rows of 64, so each transform is one matrix product."""
    n, c, h, w = planes.shape
    blocks = planes.reshape(n, c, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5).reshape(n, -1, 64)
    q = table.view(n, 1, 64)
    coeff = torch.round((blocks @ dct.T) / q) * q
    return (coeff @ dct).view(n, c, h // 8, w // 8, 8, 8).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)


def jpeg_roundtrip(rgb: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """(N,3,H,W) in [0,1] through baseline JPEG (YCbCr, 4:2:0 chroma, 8x8 DCT quantised at per-sample `quality`)
    and back. Real rounding of the coefficients, so blocking and ringing look like a camera's files."""
    n, _, h, w = rgb.shape
    to_ycc, from_ycc, dct = _codec_matrices(rgb.device, rgb.dtype)
    x = F.pad(rgb, (0, (-w) % 16, 0, (-h) % 16), mode="replicate") * 255
    ph, pw = x.shape[-2:]
    ycc = (to_ycc @ x.view(n, 3, -1)).view(n, 3, ph, pw)
    tables = _quant_tables(quality.to(rgb.dtype))
    y = _quantise(ycc[:, :1] - 128, tables[:, 0], dct) + 128  # JPEG's level shift
    chroma = _quantise(F.avg_pool2d(ycc[:, 1:], 2), tables[:, 1], dct)
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)
    out = (from_ycc @ torch.cat([y, chroma], 1).view(n, 3, -1)).view(n, 3, ph, pw)
    return (out[:, :, :h, :w] / 255).clamp(0, 1)
