"""The layout of the CPU attention path: which sequences share a padded chunk, how each chunk
is cut into causal tiles, and the moves between jagged [T, H, D] and chunk-major padded buffers.

Shape legend: T tokens, B sequences, H heads, D a head dim; b sequences of one chunk, all
padded to Lc (the chunk's longest); P = Σ b·Lc padded rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CHUNK_ELEMENTS = 1 << 20  # cap on b·H·Lc² per chunk: a few MiB of fp32 logits per tile pass
CHUNK_MIN_FILL = 0.8  # a sequence joins a chunk only when its length is ≥ this × Lc
BLOCK_ROWS = 64  # causal chunks longer than this are split into query blocks of ~this many rows


@dataclass
class Chunk:
    """b sequences padded to Lc: rows [start, start + b·Lc) of the padded layout."""

    start: int
    size: int  # b
    width: int  # Lc
    lengths: torch.Tensor  # [b, 1, 1] int64
    first_candidate: torch.Tensor  # [b, 1, 1] int64: n_b − c_b (n_b without candidates)
    tiles: list[tuple[int, int, int]]  # (first row, end row, end column) of each tile


@dataclass
class Plan:
    """Gather [P] token index into the padded layout, and [T] padded row of each token.

    With H heads, ``head_gather`` [P·H] and ``head_scatter`` [T·H] do the same for the rows of
    a [T·H, D] view: the flat chunk-major buffer in one ``index_select`` each way, no permute.
    """

    gather: torch.Tensor  # [P] int64 (padding rows point at a real token of their sequence)
    scatter: torch.Tensor  # [T] int64
    chunks: list[Chunk]
    head_gather: torch.Tensor  # [P·H] int64: row token·H + h of [T·H, D], chunk-major order
    head_scatter: torch.Tensor  # [T·H] int64: row of token t, head h in the flat buffer


def plan_chunks(seq_offsets: torch.Tensor, num_candidates: torch.Tensor | None, heads: int,
                causal: bool) -> Plan:
    """Group the sequences by length into chunks and cut each chunk into tiles."""
    lengths = (seq_offsets[1:] - seq_offsets[:-1]).cpu().long()
    offsets = seq_offsets.cpu().long()
    cands = None if num_candidates is None else num_candidates.cpu().long()
    order = torch.argsort(lengths, descending=True, stable=True)
    sorted_lengths = lengths[order].tolist()
    groups, start = [], 0
    while start < len(sorted_lengths) and sorted_lengths[start] > 0:
        longest = sorted_lengths[start]
        cap = max(2, CHUNK_ELEMENTS // (heads * longest * longest))
        end = start + 1
        while (end < len(sorted_lengths) and end - start < cap
               and sorted_lengths[end] >= CHUNK_MIN_FILL * longest and sorted_lengths[end] > 0):
            end += 1
        groups.append((start, end))
        start = end
    # A lone sequence makes a batch dimension of 1, which the compiled tiles would specialise
    # on (a recompilation); let it join the chunk before it instead.
    if len(groups) > 1 and groups[-1][1] - groups[-1][0] == 1:
        groups[-2:] = [(groups[-2][0], groups[-1][1])]
    gathers, scatter, chunks, row = [], torch.empty(int(offsets[-1]), dtype=torch.int64), [], 0
    for start, end in groups:
        members = order[start:end]
        width = max(sorted_lengths[start], 2)  # no size-1 tile dims (compiled specialisation)
        n = lengths[members]  # [b]
        pos = torch.arange(width)
        valid = pos[None, :] < n[:, None]  # [b, Lc]
        gathers.append((offsets[members][:, None] + torch.minimum(pos, (n - 1)[:, None]))
                       .flatten())
        scatter[gathers[-1][valid.flatten()]] = row + valid.flatten().nonzero().flatten()
        first = n if cands is None else n - cands[members]
        chunks.append(Chunk(row, len(members), width, n[:, None, None], first[:, None, None],
                            _tiles(width, causal)))
        row += len(members) * width
    device = seq_offsets.device
    gather = torch.cat(gathers) if gathers else torch.empty(0, dtype=torch.int64)
    for chunk in chunks:
        chunk.lengths, chunk.first_candidate = (chunk.lengths.to(device),
                                                chunk.first_candidate.to(device))
    head_gather, head_scatter = _head_rows(gather, scatter, chunks, heads)
    return Plan(gather.to(device), scatter.to(device), chunks, head_gather.to(device),
                head_scatter.to(device))


def _head_rows(gather: torch.Tensor, scatter: torch.Tensor, chunks: list[Chunk],
               heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``gather`` and ``scatter`` for the rows of a [T·H, D] view (see ``Plan``)."""
    if heads == 1:
        return gather, scatter
    head = torch.arange(heads)
    chunk_start = torch.empty_like(gather)  # [P] first padded row of each row's chunk
    chunk_rows = torch.empty_like(gather)  # [P] b·Lc of each row's chunk
    parts = []
    for chunk in chunks:
        rows = slice(chunk.start, chunk.start + chunk.size * chunk.width)
        chunk_start[rows], chunk_rows[rows] = chunk.start, chunk.size * chunk.width
        parts.append((gather[rows][None, :] * heads + head[:, None]).flatten())  # [H·b·Lc]
    head_gather = torch.cat(parts) if parts else gather
    # chunk-major: chunk c's head h block starts at H·start_c + h·b·Lc
    start, rows = chunk_start[scatter], chunk_rows[scatter]  # [T]
    head_scatter = (start * heads + (scatter - start))[:, None] + head[None, :] * rows[:, None]
    return head_gather, head_scatter.flatten()


def _tiles(width: int, causal: bool) -> list[tuple[int, int, int]]:
    """Query blocks of a chunk; causal blocks see keys up to their last row only."""
    blocks = max(1, round(width / BLOCK_ROWS)) if causal else 1
    edges = [round(width * r / blocks) for r in range(blocks + 1)]
    return [(lo, hi, hi if causal else width) for lo, hi in zip(edges, edges[1:], strict=False)]


# -- jagged <-> chunk-major padded ---------------------------------------------------------------


def _chunk_view(x: torch.Tensor, chunk: Chunk, heads: int, dim: int) -> torch.Tensor:
    """Flat chunk-major padded buffer [P·H·D] -> the chunk's contiguous [H, b, Lc, D] view.

    Chunk-major (each chunk's heads together) keeps [H, b] collapsible into one batch
    dimension, so the tiles' matmuls never copy their operands.
    """
    size = heads * dim
    flat = x[chunk.start * size:(chunk.start + chunk.size * chunk.width) * size]
    return flat.view(heads, chunk.size, chunk.width, dim)


def _padded(x: torch.Tensor, plan: Plan) -> torch.Tensor:
    """[T, H, D] jagged -> [P·H·D] flat chunk-major padded buffer (``plan`` made for H)."""
    tokens, heads, dim = x.shape
    # index_select of 2-D rows is a memcpy per row, several times faster than of [T, H, D]
    return x.reshape(tokens * heads, dim).index_select(0, plan.head_gather).view(-1)


def _jagged(x: torch.Tensor, plan: Plan, heads: int, dim: int) -> torch.Tensor:
    """[P·H·D] flat chunk-major padded buffer -> [T, H, D]: each token from its own row."""
    return x.view(-1, dim).index_select(0, plan.head_scatter).view(-1, heads, dim)
