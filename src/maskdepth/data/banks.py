"""The assets as tensors on one device: a bank of backgrounds and a bank of cutouts.

`data/compose.py` draws from these in batches without a Python loop over samples, so everything a placement needs
is a tensor indexed by background or cutout id:

- `BackgroundBank`: images, true depth (0 = unknown), a placement depth that is known everywhere (the true depth,
  or a nominal ground plane for photos without depth), the floor mask, the floor pixels as one flat index list
  (sampled without host syncs), and focal lengths.
- `CutoutBank`: every cutout resized so its longest side is S, centred in an SxS cell, colour premultiplied by
  alpha, with a mip chain (S, S/2, ...) so small placements are sampled without aliasing. All cells live in one
  texture (the atlas), so one `grid_sample` call places a whole batch of different cutouts.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from maskdepth.codecs import decode_image
from maskdepth.data.cutouts import Cutout, procedural_cutout
from maskdepth.data.format import DatasetMetadata, background_files, cutout_file, read_background
from maskdepth.data.rooms import Background, render_room, sample_room
from maskdepth.errors import UserError

# Nominal camera for photos without depth: 1.5 m high, 60 degree vertical field of view, horizon at 45% of the
# height. Only used to place cutouts (their size and z-test); such samples record depth as unknown.
NOMINAL_CAMERA_HEIGHT_M = 1.5
NOMINAL_VFOV_DEG = 60.0
NOMINAL_HORIZON = 0.45
# floor for placement starts this far (fraction of the height) below the horizon: nearer it objects are specks
NOMINAL_FLOOR_MARGIN = 0.05
# depth that stands for "far away" where a photo's depth is unknown above the horizon: a cutout is always in front
FAR_M = 1.0e4

CUTOUT_SIZE = 128  # S: longest side of a cutout in the bank
ATLAS_PAD = 2  # zero pixels around every mip level, so bilinear sampling never bleeds into a neighbour
MIN_MIP_SIZE = 8  # smallest mip level side


# streams of `seed_for`: each kind of random draw has its own, so adding one never shifts another
STREAM_BACKGROUND, STREAM_CUTOUT, STREAM_SPLIT, STREAM_ORDER, STREAM_SHARD, STREAM_STEP, STREAM_CLUTTER = range(1, 8)


def seed_for(*keys: int) -> int:
    """A 63-bit seed that depends only on the integer keys, e.g. (seed, STREAM_SHARD, shard index)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


# What procedural_background and procedural_foreground draw for a seed: raised whenever either draws otherwise,
# so that a dataset made before is not resumed with other content (2: clothes mostly near-black, grey or white).
PROCEDURAL_VERSION = 2


def procedural_background(seed: int, index: int, size: tuple[int, int]) -> Background:
    """Procedural room `index` of a dataset seeded `seed`: a function of (seed, index, size) only."""
    return render_room(sample_room(np.random.default_rng(seed_for(seed, STREAM_BACKGROUND, index))), size)


def procedural_foreground(seed: int, index: int, size: int = CUTOUT_SIZE,
                          kinds: Sequence[str] | None = None) -> Cutout:
    """Procedural cutout `index` of a dataset seeded `seed`: a function of (seed, index, size, kinds) only
    (kinds: cutouts.KINDS names to draw from, default all)."""
    return procedural_cutout(np.random.default_rng(seed_for(seed, STREAM_CUTOUT, index)), size, kinds)


def nominal_ground(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, float]:
    """(depth (H,W) float32, floor (H,W) bool, focal_px) of the nominal camera over a flat floor.

    Depth is the floor plane's z-depth h*f/(y - y_horizon) below the horizon (+ margin) and FAR_M elsewhere.
    """
    h, w = size
    focal = (h / 2) / math.tan(math.radians(NOMINAL_VFOV_DEG) / 2)
    y = np.arange(h, dtype=np.float64) + 0.5
    below = y - NOMINAL_HORIZON * h
    floor_rows = below >= NOMINAL_FLOOR_MARGIN * h
    row_depth = np.where(floor_rows, NOMINAL_CAMERA_HEIGHT_M * focal / np.maximum(below, 1e-6), FAR_M)
    depth = np.repeat(row_depth[:, None], w, axis=1).astype(np.float32)
    floor = np.repeat(floor_rows[:, None], w, axis=1)
    return depth, floor, float(focal)


@dataclass
class BackgroundBank:
    """B backgrounds of one size (H,W). See the module docstring."""

    image: torch.Tensor  # (B,3,H,W) uint8
    depth: torch.Tensor  # (B,1,H,W) float32, true depth, 0 = unknown
    placement_depth: torch.Tensor  # (B,1,H,W) float32 > 0: depth where known, else the nominal ground plane
    floor: torch.Tensor  # (B,1,H,W) bool
    floor_pixels: torch.Tensor  # (P,) int64: flat indices y*W+x of all floor pixels, background after background
    floor_start: torch.Tensor  # (B,) int64: where background b's floor pixels start in floor_pixels
    floor_count: torch.Tensor  # (B,) int64
    focal_px: torch.Tensor  # (B,) float32

    def __len__(self) -> int:
        return self.image.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[2]), int(self.image.shape[3])

    @property
    def device(self) -> torch.device:
        return self.image.device

    def to(self, device: torch.device | str | None) -> BackgroundBank:
        if device is None:
            return self
        return BackgroundBank(**{k: v.to(device) for k, v in self.__dict__.items()})

    @classmethod
    def from_arrays(cls, images: Sequence[np.ndarray], depths: Sequence[np.ndarray],
                    floors: Sequence[np.ndarray], focal_px: Sequence[float], names: Sequence[str] | None = None
                    ) -> BackgroundBank:
        """From per-background (H,W,3) uint8 images, (H,W) depths (0 = unknown), (H,W) bool floors, focals."""
        if not images:
            raise UserError("no backgrounds given; a background bank needs at least one")
        size = images[0].shape[:2]
        names = list(names) if names is not None else [f"background {i}" for i in range(len(images))]
        nominal_depth, _, _ = nominal_ground(size)
        placement = []
        for i, (im, d, fl) in enumerate(zip(images, depths, floors)):
            if im.shape[:2] != size or d.shape != size or fl.shape != size:
                raise UserError(f"{names[i]}: size {im.shape[1]}x{im.shape[0]} differs from the first "
                                f"background's {size[1]}x{size[0]}; give backgrounds of one size")
            if not fl.any():
                raise UserError(f"{names[i]}: has no floor pixels, so nothing can stand in it; remove it")
            placement.append(np.where(d > 0, d, nominal_depth))
        floors_t = torch.from_numpy(np.stack(floors).astype(bool))
        flat = floors_t.reshape(len(images), -1)
        count = flat.sum(dim=1)
        start = torch.cumsum(count, 0) - count
        return cls(
            image=torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
            depth=torch.from_numpy(np.stack(depths).astype(np.float32))[:, None].contiguous(),
            placement_depth=torch.from_numpy(np.stack(placement).astype(np.float32))[:, None].contiguous(),
            floor=floors_t[:, None].contiguous(),
            floor_pixels=torch.nonzero(flat)[:, 1].contiguous(),  # row-major: grouped by background, in order
            floor_start=start,
            floor_count=count,
            focal_px=torch.tensor([float(f) for f in focal_px], dtype=torch.float32),
        )

    @classmethod
    def from_backgrounds(cls, backgrounds: Sequence[Background]) -> BackgroundBank:
        return cls.from_arrays([b.image for b in backgrounds], [b.depth for b in backgrounds],
                               [b.floor for b in backgrounds], [b.focal_px for b in backgrounds])

    @classmethod
    def from_dataset(cls, root: str | os.PathLike, ids: Sequence[int] | None = None) -> BackgroundBank:
        """The backgrounds stored in a dataset folder made by `maskdepth data make` (all, or `ids`)."""
        meta = DatasetMetadata.read(root)
        entries = meta.entries("backgrounds")
        if entries is None:
            raise UserError(f"{meta.path}: lists no backgrounds with focal lengths (an imported dataset?); use a "
                            "dataset made by `maskdepth data make`")
        ids = range(len(entries)) if ids is None else ids
        images, depths, floors, focals = [], [], [], []
        for i in ids:
            rgb, depth, floor = read_background(root, i, meta.depth_scale, meta.size)
            images.append(rgb)
            depths.append(depth)
            floors.append(floor)
            focals.append(float(entries[i]["focal_px"]))
        return cls.from_arrays(images, depths, floors, focals, names=[str(background_files(root, i)[0]) for i in ids])


@dataclass
class CutoutBank:
    """C cutouts in one atlas texture. See the module docstring.

    Cell c's top-left corner in the atlas is `cell_origin[c]`; inside a cell, mip level l's top-left corner is
    `level_origin[l]` and it is S/2**l pixels square; the cutout itself covers `region[c]` = (x, y, w, h) of level
    0 (scaled by 2**-l at level l). Atlas colour is premultiplied by alpha.
    """

    atlas: torch.Tensor  # (1,4,AH,AW) float32 in [0,1]: premultiplied RGB + alpha
    cell_origin: torch.Tensor  # (C,2) float32 (x, y) in atlas pixels
    level_origin: torch.Tensor  # (L,2) float32 (x, y) inside a cell
    region: torch.Tensor  # (C,4) float32 (x, y, w, h) of the cutout in level 0 of its cell
    aspect: torch.Tensor  # (C,) float32 width / height of the original cutout
    height_m: torch.Tensor  # (C,) float32 nominal real height in metres
    src_hw: torch.Tensor  # (C,2) float32 original pixel (height, width)
    size: int  # S
    alpha: torch.Tensor | None = None  # (1,1,AH,AW) the atlas's alpha alone (cast shadows sample only it)

    def __post_init__(self) -> None:
        if self.alpha is None:
            self.alpha = self.atlas[:, 3:].contiguous()

    def __len__(self) -> int:
        return self.cell_origin.shape[0]

    @property
    def levels(self) -> int:
        return self.level_origin.shape[0]

    @property
    def device(self) -> torch.device:
        return self.atlas.device

    @property
    def rgba(self) -> torch.Tensor:
        """(C,4,S,S) level-0 cells (premultiplied colour, alpha), each cutout centred at its longest side S."""
        s, (lx, ly) = self.size, self.level_origin[0].long().tolist()
        cells = [self.atlas[0, :, y + ly:y + ly + s, x + lx:x + lx + s] for x, y in self.cell_origin.long().tolist()]
        return torch.stack(cells)

    def to(self, device: torch.device | str | None) -> CutoutBank:
        if device is None:
            return self
        return CutoutBank(**{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in self.__dict__.items()})

    @classmethod
    def from_rgba(cls, rgbas: Sequence[np.ndarray], heights_m: Sequence[float], size: int = CUTOUT_SIZE
                  ) -> CutoutBank:
        """From (h,w,4) uint8 cutouts (straight alpha) and their heights in metres."""
        if not rgbas:
            raise UserError("no cutouts given; a cutout bank needs at least one")
        if size < MIN_MIP_SIZE or size & (size - 1):
            raise ValueError(f"cutout size must be a power of two >= {MIN_MIP_SIZE}, got {size}")
        levels = int(math.log2(size // MIN_MIP_SIZE)) + 1
        pad = ATLAS_PAD
        # level 0 on the left of the cell, levels 1.. stacked in a column on its right
        level_origin = [(pad, pad)]
        y = pad
        for lvl in range(1, levels):
            level_origin.append((2 * pad + size, y))
            y += (size >> lvl) + pad
        cell_w = 3 * pad + size + size // 2
        cell_h = max(size + 2 * pad, y)
        n = len(rgbas)
        cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
        atlas = torch.zeros(1, 4, rows * cell_h, cols * cell_w)
        origins, regions, aspects, src = [], [], [], []
        for i, rgba in enumerate(rgbas):
            h, w = rgba.shape[:2]
            rh, rw = (size, max(1, round(size * w / h))) if h >= w else (max(1, round(size * h / w)), size)
            ox, oy = (size - rw) // 2, (size - rh) // 2
            t = torch.tensor(rgba).permute(2, 0, 1)[None].float() / 255.0
            t = torch.cat([t[:, :3] * t[:, 3:], t[:, 3:]], dim=1)  # premultiplied: filtering never darkens edges
            t = F.interpolate(t, size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)
            cell = torch.zeros(1, 4, size, size)
            cell[:, :, oy:oy + rh, ox:ox + rw] = t.clamp(0, 1)
            cx, cy = (i % cols) * cell_w, (i // cols) * cell_h
            for lvl, (lx, ly) in enumerate(level_origin):
                s = size >> lvl
                atlas[:, :, cy + ly:cy + ly + s, cx + lx:cx + lx + s] = cell
                cell = F.avg_pool2d(cell, 2)
            origins.append((cx, cy))
            regions.append((ox, oy, rw, rh))
            aspects.append(w / h)
            src.append((h, w))
        f32 = torch.float32
        return cls(atlas=atlas, cell_origin=torch.tensor(origins, dtype=f32),
                   level_origin=torch.tensor(level_origin, dtype=f32), region=torch.tensor(regions, dtype=f32),
                   aspect=torch.tensor(aspects, dtype=f32), height_m=torch.tensor([float(x) for x in heights_m], dtype=f32),
                   src_hw=torch.tensor(src, dtype=f32), size=size)

    @classmethod
    def from_cutouts(cls, cutouts: Sequence[Cutout], size: int = CUTOUT_SIZE) -> CutoutBank:
        return cls.from_rgba([c.rgba for c in cutouts], [c.height_m for c in cutouts], size)

    @classmethod
    def from_dataset(cls, root: str | os.PathLike, ids: Sequence[int] | None = None, size: int | None = None
                     ) -> CutoutBank:
        """The cutouts stored in a dataset folder made by `maskdepth data make` (all, or `ids`), at the dataset's
        cutout size unless `size` is given."""
        meta = DatasetMetadata.read(root)
        entries = meta.entries("cutouts")
        if not entries:
            raise UserError(f"{meta.path}: lists no cutouts (an imported dataset?); use a "
                            "dataset made by `maskdepth data make`")
        ids = range(len(entries)) if ids is None else ids
        rgbas = []
        for i in ids:
            p = cutout_file(root, i)
            try:
                img = decode_image(p.read_bytes())
            except FileNotFoundError:
                raise UserError(f"{p}: cutout file missing; the dataset is incomplete: rerun the command that "
                                "made it") from None
            except (OSError, ValueError, SyntaxError) as e:
                raise UserError(f"{p}: unreadable cutout ({e}); rebuild the dataset") from None
            rgbas.append(np.asarray(img.convert("RGBA")))
        size = size or int(meta.get("cutout_size", CUTOUT_SIZE))
        return cls.from_rgba(rgbas, [float(entries[i]["height_m"]) for i in ids], size)
