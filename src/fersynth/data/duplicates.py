"""Exact and near-duplicate images, and the report of duplicates that leak across splits.

Exact duplicates share a pixel hash. Near duplicates are found with a 64-bit DCT perceptual
hash (pHash): pairs within a Hamming radius are joined, and the connected components are the
near groups. Blank or near-constant images have no usable hash (their low-frequency AC terms
are JPEG noise), so they get DEGENERATE_HASH and are only ever grouped with exact twins.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from threadpoolctl import threadpool_limits

from fersynth.data.manifest import Manifest, exact_hashes, to_gray
from fersynth.data.pixels import batches, is_lazy
from fersynth.errors import FersynthError

HASH_SIZE = 32  # side of the resized image the DCT is taken on
LOW = 8  # side of the low-frequency block that gives the 64 bits
# RMS grey level carried by the 63 low-frequency AC terms below which the hash is noise.
MIN_AC_RMS = 3.0
DEGENERATE_HASH = np.uint64(0)  # a textured image's hash has 31 bits set, so never 0
MAX_RADIUS = 16
# Buckets above _BIG_BUCKET are compared block by block so that memory stays bounded.
_BIG_BUCKET = 4096
_BLOCK = 2048


def exact_group_ids(hashes: Sequence[str]) -> np.ndarray:
    """Group id per image (shared by images with identical pixel hashes), -1 for unique ones."""
    codes, _ = pd.factorize(pd.Series(list(hashes), dtype=object), sort=False)
    return _relabel(codes)


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Component labels -> ids 0..k-1 (in order of first row) for components of size >= 2."""
    labels = np.asarray(labels, dtype=np.int64)
    if not len(labels):
        return labels
    _, first, inverse, counts = np.unique(
        labels, return_index=True, return_inverse=True, return_counts=True
    )
    multi = counts >= 2
    order = np.argsort(first[multi], kind="stable")
    new = np.full(len(counts), -1, dtype=np.int64)
    new[np.flatnonzero(multi)[order]] = np.arange(multi.sum())
    return new[inverse]


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix averaging the input over each output cell (area resize)."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    px = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, px + 1) - np.maximum(lo, px), 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix (n, n)."""
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


def _low_dct(gray: np.ndarray, chunk: int = 256) -> np.ndarray:
    """(N, 8, 8) low-frequency DCT terms of each image resized (area) to 32x32."""
    n, h, w = gray.shape
    dct = _dct_matrix(HASH_SIZE)[:LOW]
    mht = np.ascontiguousarray((dct @ _area_matrix(h, HASH_SIZE)).T.astype(np.float32))  # (H, 8)
    mwt = np.ascontiguousarray((dct @ _area_matrix(w, HASH_SIZE)).T.astype(np.float32))  # (W, 8)
    out = np.empty((n, LOW, LOW), dtype=np.float32)
    # These GEMMs are too small for threads: a threaded BLAS on a busy machine is 10x slower.
    with threadpool_limits(limits=1, user_api="blas"):
        _low_dct_into(gray, mht, mwt, out, chunk)
    return out


def _low_dct_into(gray, mht, mwt, out, chunk):
    n, h, w = gray.shape
    for s in range(0, n, chunk):
        x = gray[s : s + chunk].astype(np.float32)
        c = len(x)
        # Two plain 2-D GEMMs (rows, then columns) are much faster than batched matmuls.
        y = (x.reshape(c * h, w) @ mwt).reshape(c, h, LOW).transpose(0, 2, 1)
        z = y.reshape(c * LOW, h) @ mht  # (c * 8 [col freq], 8 [row freq])
        out[s : s + chunk] = z.reshape(c, LOW, LOW).transpose(0, 2, 1)


def phash(pixels: np.ndarray) -> np.ndarray:
    """64-bit DCT perceptual hash per image: uint64 (N,) from uint8 (N, H, W[, 3]).

    The image is area-resized to 32x32 and DCT-transformed (one matrix product each side);
    bit i (row-major over the top-left 8x8 block) is set when that term exceeds the median
    of the 63 AC terms. Bit 0 (the DC term) is never set, and 31 bits are, so Hamming
    distances are even (radius 5 finds what 4 does). Images whose AC terms carry less than
    MIN_AC_RMS grey levels (blank, near-constant) get DEGENERATE_HASH.
    """
    rows = max(64, PHASH_BATCH_BYTES // max(1, int(np.prod(pixels.shape[1:]))))
    if len(pixels) > rows or is_lazy(pixels):  # memory-mapped or large: hash block by block
        parts = [_phash(b) for _, b in batches(pixels, rows)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
    return _phash(pixels)


PHASH_BATCH_BYTES = 4 << 20  # uint8 pixels per block (the float32 gray copy is 4/3 to 4x that)


def _phash(pixels) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[None]
    gray = to_gray(pixels)
    if not len(gray):
        return np.zeros(0, dtype=np.uint64)
    coef = _low_dct(gray).reshape(len(gray), LOW * LOW)
    ac = coef[:, 1:]
    med = np.partition(ac, 31, axis=1)[:, 31:32]
    bits = np.zeros(coef.shape, dtype=bool)
    bits[:, 1:] = ac > med
    hashes = np.packbits(bits, axis=1, bitorder="little").view("<u8")[:, 0].astype(np.uint64)
    rms = np.sqrt(np.einsum("ij,ij->i", ac, ac)) / HASH_SIZE
    hashes[rms < MIN_AC_RMS] = DEGENERATE_HASH
    return hashes


def _chunk_bounds(radius: int) -> list[tuple[int, int]]:
    """radius + 1 disjoint bit ranges covering the 64 bits, as even as possible."""
    edges = np.linspace(0, 64, radius + 2).round().astype(int)
    return list(zip(edges[:-1], edges[1:], strict=True))


def _pairs_in_runs(order: np.ndarray, keys_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (i, j) index pairs, i before j, within runs of equal sorted keys."""
    n = len(keys_sorted)
    starts = np.flatnonzero(np.r_[True, keys_sorted[1:] != keys_sorted[:-1]])
    ends = np.r_[starts[1:], n]
    run_end = np.repeat(ends, ends - starts)
    partners = run_end - 1 - np.arange(n)
    total = int(partners.sum())
    if total == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    left = np.repeat(np.arange(n), partners)
    offset = np.arange(total) - np.repeat(np.cumsum(partners) - partners, partners)
    right = left + 1 + offset
    return order[left], order[right]


PAIR_BUDGET = 1 << 20  # candidate pairs formed at once: ~50 MB of work arrays however many images


def _close_pairs_in_runs(order: np.ndarray, keys_sorted: np.ndarray, hashes: np.ndarray, radius: int
                         ) -> tuple[np.ndarray, np.ndarray]:
    """The pairs of `_pairs_in_runs` whose hashes lie within `radius`, formed a group of runs at a
    time: candidates grow with the square of the bucket sizes, the close pairs are few."""
    n = len(keys_sorted)
    starts = np.flatnonzero(np.r_[True, keys_sorted[1:] != keys_sorted[:-1]]) if n else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], n]
    cum = np.cumsum((ends - starts) * (ends - starts - 1) // 2)
    lefts, rights = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    r0 = 0
    while r0 < len(starts):
        done = cum[r0 - 1] if r0 else 0
        r1 = max(r0 + 1, int(np.searchsorted(cum, done + PAIR_BUDGET, side="right")))
        s, e = starts[r0], ends[r1 - 1]
        a, b = _pairs_in_runs(order[s:e], keys_sorted[s:e])
        close = np.bitwise_count(hashes[a] ^ hashes[b]) <= radius
        lefts.append(a[close])
        rights.append(b[close])
        r0 = r1
    return np.concatenate(lefts), np.concatenate(rights)


def _near_pairs_big(members: np.ndarray, hashes: np.ndarray, radius: int):
    """Pairs within radius inside one huge bucket, compared block by block."""
    h = hashes[members]
    lefts, rights = [], []
    for s in range(0, len(h), _BLOCK):
        blk = h[s : s + _BLOCK]
        d = np.bitwise_count(blk[:, None] ^ h[None, s:])
        i, j = np.nonzero(d <= radius)
        keep = j > i
        lefts.append(members[s + i[keep]])
        rights.append(members[s + j[keep]])
    return np.concatenate(lefts), np.concatenate(rights)


def near_group_ids(phashes: Sequence[int] | np.ndarray, radius: int = 4) -> np.ndarray:
    """Near-duplicate group id per image (-1 for images with no near twin).

    Two images are joined when their hashes differ in at most `radius` bits; groups are the
    connected components. Candidates come from multi-index hashing: split the 64 bits into
    radius + 1 chunks, so a pair within the radius agrees exactly on at least one chunk.
    Images with DEGENERATE_HASH (blank / near-constant) are never joined here.
    """
    if not 0 <= int(radius) <= MAX_RADIUS:
        raise FersynthError(
            f"near-duplicate radius {radius} is outside 0..{MAX_RADIUS}",
            hint="use 2-6 bits for 64-bit perceptual hashes",
        )
    radius = int(radius)
    hashes = np.asarray(phashes, dtype=np.uint64)
    n = len(hashes)
    valid = np.flatnonzero(hashes != DEGENERATE_HASH)
    uniq, inverse = np.unique(hashes[valid], return_inverse=True)
    m = len(uniq)
    lefts, rights = [], []
    for lo, hi in _chunk_bounds(radius):
        width = hi - lo
        mask = np.uint64((1 << width) - 1) if width < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)
        keys = (uniq >> np.uint64(lo)) & mask
        order = np.argsort(keys, kind="stable")
        ks = keys[order]
        starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
        sizes = np.diff(np.r_[starts, m])
        big = sizes > _BIG_BUCKET
        if big.any():
            in_big = np.repeat(big, sizes)
            for s, size in zip(starts[big], sizes[big], strict=True):
                a, b = _near_pairs_big(order[s : s + size], uniq, radius)
                lefts.append(a)
                rights.append(b)
            order, ks = order[~in_big], ks[~in_big]
        a, b = _close_pairs_in_runs(order, ks, uniq, radius)
        lefts.append(a)
        rights.append(b)
    a = np.concatenate(lefts) if lefts else np.zeros(0, np.int64)
    b = np.concatenate(rights) if rights else np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(m, m))
    _, comp = connected_components(graph, directed=False)
    labels = np.arange(n, dtype=np.int64) + m  # degenerate rows: singletons of their own
    labels[valid] = comp[inverse]
    return _relabel(labels)


def merge_groups(*group_ids: np.ndarray) -> np.ndarray:
    """Connected components of images that share a group id (>= 0) in any of the arrays."""
    n = len(group_ids[0])
    rows, cols = [], []
    for g in group_ids:
        g = np.asarray(g, dtype=np.int64)
        idx = np.flatnonzero(g >= 0)
        _, first = np.unique(g[idx], return_index=True)
        anchor = np.full(g.max(initial=-1) + 1, -1, dtype=np.int64)
        anchor[g[idx[first]]] = idx[first]
        rows.append(idx)
        cols.append(anchor[g[idx]])
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    return _relabel(comp)


def add_duplicate_columns(manifest: Manifest, radius: int = 4) -> Manifest:
    """A copy of `manifest` with `dup_group` (identical pixels) and `near_group` columns.

    `near_group` joins images within `radius` bits of pHash and always contains the exact
    groups. Ids are -1 for images without a twin.
    """
    df = manifest.df
    hashes = exact_hashes(manifest)
    dup = exact_group_ids(hashes)
    near = merge_groups(dup, near_group_ids(phash(manifest.pixels), radius))
    out = df.copy()
    out["dup_group"] = dup
    out["near_group"] = near
    meta = dict(manifest.meta, near_radius=int(radius))
    return Manifest(out, manifest.pixels, manifest.root, meta)


def _group_table(df: pd.DataFrame, col: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows in groups of `col`, and per-group flags (multi_subset, train_test, conflict)."""
    rows = df.loc[df[col].to_numpy() >= 0, ["path", "subset", "split", "label", col]].copy()
    rows["is_train"] = rows["split"].eq("train")
    rows["is_test"] = rows["split"].eq("test")
    rows["known_label"] = rows["label"].where(rows["label"] >= 0)
    g = rows.groupby(col, sort=True)
    flags = pd.DataFrame(
        {
            "size": g.size(),
            "multi_subset": g["subset"].nunique() > 1,
            "train_test": g["is_train"].any() & g["is_test"].any(),
            "conflict": g["known_label"].nunique() > 1,
        }
    )
    rows["group_has_train"] = rows[col].map(g["is_train"].any())
    return rows, flags


def _summary(rows: pd.DataFrame, flags: pd.DataFrame) -> dict:
    twins = rows[rows["is_test"] & rows["group_has_train"]]
    by_subset = twins["subset"].value_counts().sort_index()
    return {
        "groups": int(len(flags)),
        "files": int(flags["size"].sum()),
        "groups_multi_subset": int(flags["multi_subset"].sum()),
        "groups_train_test": int(flags["train_test"].sum()),
        "test_images_with_train_twin": int(len(twins)),
        "test_images_with_train_twin_by_subset": {str(k): int(v) for k, v in by_subset.items()},
        "groups_conflicting_labels": int(flags["conflict"].sum()),
    }


def _listing(rows: pd.DataFrame, flags: pd.DataFrame, col: str, keep, max_groups) -> list:
    """Groups in `keep` as lists of {path, subset, split, label}; train/test crossings first."""
    chosen = flags.loc[keep]
    rank = chosen["train_test"] * 4 + chosen["multi_subset"] * 2 + chosen["conflict"]
    ids = rank.sort_values(ascending=False, kind="stable").index.to_numpy()
    if max_groups is not None:
        ids = ids[: max(int(max_groups), 0)]
    position = pd.Series(np.arange(len(ids)), index=ids)
    sel = rows[rows[col].isin(ids)]
    pos = position.reindex(sel[col].to_numpy()).to_numpy()
    order = np.lexsort((sel.index.to_numpy(), pos))
    out: list[list[dict]] = [[] for _ in ids]
    cols = [sel[c].to_numpy()[order].tolist() for c in ("path", "subset", "split", "label")]
    for p, path, subset, split, label in zip(pos[order].tolist(), *cols, strict=True):
        out[p].append(
            {"path": str(path), "subset": str(subset), "split": str(split), "label": int(label)}
        )
    return out


def leakage_report(df: pd.DataFrame, max_groups: int | None = None) -> dict:
    """JSON-able report of duplicate groups that cross subsets or carry conflicting labels.

    Needs the `dup_group` and `near_group` columns (see add_duplicate_columns). A "train_test"
    group holds both a split == "train" row and a split == "test" row. `near_groups` lists
    only near groups that are not just one exact group; `max_groups` caps each listing
    (summary counts always cover every group).
    """
    missing = [
        c
        for c in ("dup_group", "near_group", "path", "subset", "split", "label")
        if c not in df.columns
    ]
    if missing:
        raise FersynthError(
            f"cannot report leakage: manifest has no column(s) {missing}",
            hint="add duplicate groups first (fersynth.data.duplicates.add_duplicate_columns)",
        )
    df = df.reset_index(drop=True)
    df = df.assign(
        **{c: pd.to_numeric(df[c]).fillna(-1).astype(np.int64) for c in ("dup_group", "near_group")}
    )
    ex_rows, ex_flags = _group_table(df, "dup_group")
    nr_rows, nr_flags = _group_table(df, "near_group")

    ex_keep = ex_flags["multi_subset"] | ex_flags["conflict"]
    # A near group is explained by exact duplicates when all its members share one exact group.
    dups = df.loc[nr_rows.index, "dup_group"].groupby(nr_rows["near_group"])
    explained = (dups.nunique() == 1) & (dups.min() >= 0)
    nr_keep = (nr_flags["multi_subset"] | nr_flags["conflict"]) & ~explained

    near_summary = _summary(nr_rows, nr_flags)
    exact_twin = df.index.isin(ex_rows.index[ex_rows["is_test"] & ex_rows["group_has_train"]])
    near_twin = df.index.isin(nr_rows.index[nr_rows["is_test"] & nr_rows["group_has_train"]])
    near_summary["test_images_with_train_near_twin_beyond_exact"] = int(
        (near_twin & ~exact_twin).sum()
    )
    return {
        "exact_groups": _listing(ex_rows, ex_flags, "dup_group", ex_keep, max_groups),
        "near_groups": _listing(nr_rows, nr_flags, "near_group", nr_keep, max_groups),
        "summary": {"exact": _summary(ex_rows, ex_flags), "near": near_summary},
    }
