"""The two-tower retrieval model: TowerConfig, ItemTower, UserTower, TwoTower.

Both towers end in an L2-normalised D-vector, so a user-item score is a cosine and the serving
index can be an inner-product index. The user tower pools the user's recent history through the
item tower's own id/category embeddings: a new event changes the user vector at once, no retrain.
Loss: in-batch sampled softmax with logQ correction and a temperature (Yi et al., RecSys 2019).
Serving runs the user tower in numpy (serving/model.py); each user tower names the arrays that forward reads
(``serving_arrays``) beside its own torch forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streamrec.schemas import HISTORY_LENGTH

__all__ = ["TowerConfig", "UserBatch", "Windows", "ItemTower", "UserTower", "SequenceUserTower", "TwoTower",
           "USER_TOWERS"]

USER_TOWERS = ("sequence", "pooled")


@dataclass(frozen=True)
class TowerConfig:
    # table sizes come from FeatureSchema.sizes(); defaults only make a toy model constructible
    n_items: int = 2  # PAD, OOV, then the catalogue
    n_top: int = 2
    n_leaf: int = 2
    n_price: int = 2
    n_rating: int = 2
    n_count: int = 2
    n_text: int = 2**14  # hashed n-gram buckets
    text_tokens: int = 16
    n_age: int = 2
    n_gender: int = 1
    n_region: int = 1
    n_types: int = 7  # PAD, OOV + five interaction types
    max_history: int = HISTORY_LENGTH
    max_preferred: int = 4
    dim: int = 64  # output dimension D; 64 is plenty for ~10^4-10^5 items
    hidden: int = 256
    temperature: float = 0.05  # cosine logits / 0.05: sharp enough to separate ~10^3 candidates
    init_std: float = 0.05  # small embeddings: unseen ids start near the content-only vector
    dropout: float = 0.5  # on both towers' inputs: ids and title hashes memorise fast on ~10^4 targets
    # share of training examples whose whole profile is hidden: without it the towers learn that the
    # profile already says everything (true of the generator) and a burst of fresh events barely moves
    # the user; with it they learn to read tastes from the history too (and serve profile-less users)
    profile_dropout: float = 0.5
    # "pooled": attention pooling with a profile query beside a plain mean, one forward per training target
    # (UserTower); "sequence": causal self-attention over the history, trained on every position of each
    # user's event sequence at once (SequenceUserTower). Pooled stays the default: the sequence tower tied it
    # on ml-100k and lost on ml-latest-small (BENCHMARKS.md). Checkpoints without the key are pooled.
    user_tower: str = "pooled"
    heads: int = 2
    # A linear path beside each tower's MLP, before the L2 norm: item = MLP(x) + skip * its id row, user =
    # MLP(x) + skip * the plain mean of its history's event vectors (the same id rows). The MLPs alone read
    # the ids through dropout 0.5 and could not learn a log whose signal is which items go together
    # (online-retail temporal NDCG@10 0.069 against EASE's 0.102; 0.093 with the path, 0.100 without its
    # dropout); the path is that item-item model, the MLPs keep content, profile and recency on top.
    # ``skip_dropout`` on the path, in training: 0 over-fits ml-100k (leave-last-out 0.099 vs 0.107 without
    # the path), 0.2 keeps it (0.105). It costs logs whose items are known by their content more than by
    # their few events (synthetic-dynamics: -0.011/-0.018). BENCHMARKS.md, issue 27. These are the
    # defaults; training with validation chooses among them, no dropout and no path (models/train.py
    # PATH_GRID). Checkpoints without the keys have no path (0, 0).
    skip: float = 1.0
    skip_dropout: float = 0.2
    # The pooled tower's MLP also reads the plain mean of the newest ``last_events`` events (0 = not): its
    # profile-queried attention pool barely followed recency. The input helps next-event requests and costs
    # long-horizon ones, and chosen on validation its picks were within the noise, so it is off by default
    # (figures: docs/MODEL.md, "The newest events as an input of their own"; issue 27). The sequence tower
    # ignores it (its causal attention reads recency with a learned bias per distance).
    last_events: int = 0


class Windows(NamedTuple):
    """Training input of the sequence tower: runs of one user's events, oldest first, and the targets whose
    history ends inside them (a target's history = the run up to and including ``pos``)."""

    items: Tensor  # (W, L) item rows, oldest first, 0 = padding (at the end)
    types: Tensor  # (W, L)
    win: Tensor  # (T,) the window of each target's newest history event
    pos: Tensor  # (T,) its position in that window
    user: UserBatch  # (T,) profiles of the targets' users (history fields unused)


class UserBatch(NamedTuple):
    age: Tensor  # (B,)
    gender: Tensor  # (B,)
    region: Tensor  # (B,)
    pref: Tensor  # (B, P) top-category codes, 0 = padding
    hist_items: Tensor  # (B, H) item rows, newest first, 0 = padding
    hist_types: Tensor  # (B, H) interaction type codes, 0 = padding


def _skip(tower: nn.Module, out: Tensor, linear: Tensor) -> Tensor:
    """``out + skip * linear`` (the linear path, dropped out in training), or ``out`` without one."""
    if not tower.skip:
        return out
    return out + tower.skip * F.dropout(linear, tower.skip_dropout, tower.training)


def _mean_weights(mask: Tensor) -> Tensor:
    """(B, H) weights of a plain mean over each row's True slots (all zero for a row without any)."""
    return mask / mask.sum(1, keepdim=True).clamp(min=1)


def _mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


def _unique(idx: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """``torch.unique(idx, return_inverse=True)`` for values in [0, n), through a length-n mark instead of a
    sort (the same sorted rows and inverse; the sort was ~0.5 ms of a training step)."""
    mark = torch.zeros(n, dtype=torch.bool, device=idx.device)
    mark[idx] = True
    uniq = mark.nonzero().squeeze(1)
    rank = torch.cumsum(mark, 0) - 1
    return uniq, rank[idx]


def _rows(table: Tensor, idx: Tensor) -> Tensor:
    """``table[idx]``: (U, D), (...) -> (..., D); its backward is one index_add (F.embedding's dense backward
    was ~3x slower for a batch's B x H history slots)."""
    return table.index_select(0, idx.reshape(-1)).view(*idx.shape, table.size(-1))


# ---- serving arrays: each user tower's eval-mode weights as the numpy forward in serving/model.py reads them,
# named here beside the torch forward they come from, so a change to one is a change to the other
def _np(t: Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy().copy()


def _linear_arrays(seq: nn.Sequential, *names: str) -> dict[str, np.ndarray]:
    """``seq``'s Linear layers in order (dropout is the identity in eval mode, GELU has no weights) as
    ``x @ {name}_w + {name}_b`` operands."""
    layers = [m for m in seq if isinstance(m, nn.Linear)]
    if len(layers) != len(names):
        raise ValueError(f"{len(layers)} Linear layers, {len(names)} names")
    out: dict[str, np.ndarray] = {}
    for name, layer in zip(names, layers, strict=True):
        out[f"{name}_w"], out[f"{name}_b"] = _np(layer.weight).T, _np(layer.bias)
    return out


def _norm_arrays(norm: nn.LayerNorm, name: str) -> dict[str, np.ndarray]:
    return {f"{name}_w": _np(norm.weight), f"{name}_b": _np(norm.bias), f"{name}_eps": np.asarray(norm.eps, np.float32)}


def _profile_arrays(tower: nn.Module) -> dict[str, np.ndarray]:
    """What :func:`_profile` reads: the four tables and the preferred-category padding code."""
    return {"age": _np(tower.age.weight), "gender": _np(tower.gender.weight), "region": _np(tower.region.weight),
            "pref": _np(tower.pref.weight), "pref_padding": np.asarray(tower.pref.padding_idx)}


class ItemTower(nn.Module):
    """Item id + top/leaf category + price/rating/popularity buckets + hashed title n-grams."""

    def __init__(self, cfg: TowerConfig) -> None:
        super().__init__()
        d = cfg.dim
        # the two big tables get sparse gradients: a step then touches only the rows in the batch
        # instead of all n_items x D (the optimizer step dominated a dense step at 10^4+ items)
        self.id = nn.Embedding(cfg.n_items, d, sparse=True)
        self.top = nn.Embedding(cfg.n_top, d)
        self.leaf = nn.Embedding(cfg.n_leaf, d)
        self.price = nn.Embedding(cfg.n_price, d)
        self.rating = nn.Embedding(cfg.n_rating, d)
        self.count = nn.Embedding(cfg.n_count, d)
        self.text = nn.EmbeddingBag(cfg.n_text, d, mode="mean", padding_idx=0, sparse=True)
        self.mlp = _mlp(7 * d, cfg.hidden, d, cfg.dropout)
        self.skip, self.skip_dropout = cfg.skip, cfg.skip_dropout
        # per-row features of every item, filled by set_features; saved with the weights so a
        # checkpoint can embed its whole catalogue without the items parquet
        n = cfg.n_items
        for name in ("f_top", "f_leaf", "f_price", "f_rating", "f_count"):
            self.register_buffer(name, torch.zeros(n, dtype=torch.long))
        self.register_buffer("f_text", torch.zeros(n, cfg.text_tokens, dtype=torch.long))

    def set_features(self, table: dict[str, Tensor]) -> None:
        for name, value in table.items():
            getattr(self, f"f_{name}").copy_(value)

    def history_vectors(self, idx: Tensor) -> Tensor:
        """Cheap id + category vectors for history slots (no MLP): (..., ) -> (..., D)."""
        return self.id(idx) + _rows(self.top.weight, self.f_top[idx]) + _rows(self.leaf.weight, self.f_leaf[idx])

    def forward(self, idx: Tensor) -> Tensor:
        # the small dense tables (no padding rows) are read with _rows: the same values and gradients
        ids = self.id(idx)  # (N, D)
        x = torch.cat([ids, *(_rows(getattr(self, name).weight, getattr(self, f"f_{name}")[idx])
                              for name in ("top", "leaf", "price", "rating", "count")),
                       self.text(self.f_text[idx])], dim=-1)  # (N, 7D)
        return F.normalize(_skip(self, self.mlp(x), ids), dim=-1)  # (N, D)


def _profile(tower: nn.Module, u: UserBatch) -> Tensor:
    """Age, gender, region and preferred categories (B, 4D), each hidden for ``profile_dropout`` of training
    users: hidden = encoded as unknown (code 0), exactly how serving sees a user without a profile."""
    if tower.training and tower.profile_dropout > 0:
        hide = torch.rand(u.age.shape, device=u.age.device) < tower.profile_dropout  # (B,)
        u = u._replace(age=u.age.masked_fill(hide, 0), gender=u.gender.masked_fill(hide, 0),
                       region=u.region.masked_fill(hide, 0), pref=u.pref.masked_fill(hide.unsqueeze(1), 0))
    return torch.cat([_rows(tower.age.weight, u.age), _rows(tower.gender.weight, u.gender),
                      _rows(tower.region.weight, u.region), tower.pref(u.pref)], dim=-1)


class UserTower(nn.Module):
    """Profile (age band, gender, region, preferred categories) + attention-pooled recent history."""

    def __init__(self, cfg: TowerConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.age = nn.Embedding(cfg.n_age, d)
        self.gender = nn.Embedding(cfg.n_gender, d)
        self.region = nn.Embedding(cfg.n_region, d)
        self.pref = nn.EmbeddingBag(cfg.n_top, d, mode="mean", padding_idx=0)
        self.kind = nn.Embedding(cfg.n_types, d, padding_idx=0)
        # attention logit = content match + learned recency bias + learned per-type bias; the
        # recency prior starts decaying so the newest events dominate before training says otherwise
        self.query = nn.Linear(4 * d, d)
        self.pos_bias = nn.Parameter(-0.1 * torch.arange(cfg.max_history, dtype=torch.float32))
        self.kind_bias = nn.Embedding(cfg.n_types, 1)
        self.last_events = cfg.last_events
        self.mlp = _mlp((7 if cfg.last_events else 6) * d, cfg.hidden, d, cfg.dropout)
        self.profile_dropout = cfg.profile_dropout
        self.skip, self.skip_dropout = cfg.skip, cfg.skip_dropout

    def forward(self, u: UserBatch, hist: Tensor) -> Tensor:
        """``hist`` = item tower history vectors of ``u.hist_items``: (B, H, D) -> (B, D)."""
        prof = _profile(self, u)  # (B, 4D)
        # Each slot's vector is h = hist + kind[type]; both poolings below are linear in h, so the kind
        # part is pooled through the few type rows instead of materializing h (B x H x D, and its
        # gradient): the same numbers (tests/models/test_towers.py), ~12% less time per training step at
        # H=50 on ML-100k (interleaved A/B, 2 CPU cores).
        types, kinds = u.hist_types, self.kind.weight  # (B, H), (T, D); row 0 (padding) stays zero
        valid = u.hist_items > 0  # (B, H)
        n_hist = hist.size(1)
        q = self.query(prof)  # (B, D)
        # h . q as a product and a sum: a batched matrix-vector product (bmm) and its backward cost ~4x more
        content = (hist * q.unsqueeze(1)).sum(-1) + (q @ kinds.T).gather(1, types)  # h . q: (B, H)
        bias = _rows(self.kind_bias.weight, types).squeeze(-1)  # (B, H)
        logits = content / math.sqrt(hist.size(-1)) + self.pos_bias[:n_hist] + bias
        logits = logits.masked_fill(~valid, -1e9)
        # an empty history pools to zeros instead of a NaN softmax over nothing
        w = torch.softmax(logits, dim=-1) * valid.any(dim=-1, keepdim=True)  # (B, H)
        rows = [w, _mean_weights(valid).to(w.dtype)]  # attention, the plain mean
        if self.last_events:  # the newest events' plain mean (histories are newest first)
            rows.append(_mean_weights(valid & (torch.arange(n_hist, device=valid.device) < self.last_events))
                        .to(w.dtype))
        weights = torch.stack(rows, dim=1)  # (B, 2 or 3, H): attention, mean[, newest]
        per_type = torch.zeros(*weights.shape[:2], kinds.size(0), dtype=w.dtype, device=w.device)
        per_type.scatter_add_(2, types.unsqueeze(1).expand_as(weights), weights)  # (B, 2 or 3, T)
        pools = weights @ hist + per_type @ kinds  # (B, 2 or 3, D)
        x = torch.cat([prof, *pools.unbind(1)], dim=-1)  # (B, 6D or 7D)
        return F.normalize(_skip(self, self.mlp(x), pools[:, 1]), dim=-1)  # (B, D)

    @torch.inference_mode()
    def serving_arrays(self, hist: Tensor) -> dict[str, np.ndarray]:
        """:meth:`forward`'s weights for serving.model.NumpyUserTower; ``hist`` (n_items, D): every item
        row's history vector."""
        return {"hist": _np(hist), **_profile_arrays(self), "kinds": _np(self.kind.weight),
                "kind_bias": _np(self.kind_bias.weight)[:, 0], "pos_bias": _np(self.pos_bias),
                "query_w": _np(self.query.weight).T, "query_b": _np(self.query.bias),
                **_linear_arrays(self.mlp, "mlp1", "mlp2"), "skip": np.asarray(self.skip, np.float32),
                "last_events": np.asarray(self.last_events)}


class SequenceUserTower(nn.Module):
    """Profile + one causal self-attention block over the history (SASRec-style, Kang & McAuley 2018).

    Each event is its item's history vector + its type's vector. Attention is causal with a learned
    per-head bias for each recency distance (how many events back a key is), so a position's state
    depends only on its own and earlier events and on how far back they are, not where a window starts:
    training reads a state at every position of a user's sequence in one pass (``states``), serving reads
    the newest position of the last ``max_history`` events (``forward``), and both compute the same thing.
    One block: the keys and values are then linear in each event's vector, so serving precomputes them
    per item (serving.model.NumpySequenceTower) and only the newest position's query is ever computed.
    """

    def __init__(self, cfg: TowerConfig) -> None:
        super().__init__()
        d = cfg.dim
        if d % cfg.heads:
            raise ValueError(f"dim {d} is not divisible by heads {cfg.heads}")
        self.heads = cfg.heads
        self.age = nn.Embedding(cfg.n_age, d)
        self.gender = nn.Embedding(cfg.n_gender, d)
        self.region = nn.Embedding(cfg.n_region, d)
        self.pref = nn.EmbeddingBag(cfg.n_top, d, mode="mean", padding_idx=0)
        self.kind = nn.Embedding(cfg.n_types, d, padding_idx=0)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        # recency prior: a key k events back starts at -0.1 k, so the newest events lead before training
        self.rel_bias = nn.Parameter(-0.1 * torch.arange(cfg.max_history, dtype=torch.float32).repeat(cfg.heads, 1))
        self.norm1 = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.norm2 = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout / 2)  # on the events: a transformer block needs less than the MLPs
        self.mlp = _mlp(6 * d, cfg.hidden, d, cfg.dropout)
        self.profile_dropout = cfg.profile_dropout
        self.skip, self.skip_dropout = cfg.skip, cfg.skip_dropout

    def profile(self, u: UserBatch) -> Tensor:
        return _profile(self, u)  # (B, 4D)

    def states(self, hist: Tensor, types: Tensor, valid: Tensor, query: Tensor | None = None) -> Tensor:
        """Oldest-first events (W, L, D), their types and validity (W, L) -> each position's state (W, L, 2D):
        the attention block's output and the mean of the events so far; or only the positions ``query``
        (L,) bool selects: (W, Q, 2D)."""
        w, n, d = hist.shape
        x = self.drop(hist + self.kind(types))  # (W, L, D)
        q, k, v = self.qkv(x).view(w, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (W, h, L, d/h)
        # the long-term taste beside the attention's short-term one: the mean of every event so far
        seen = valid.to(x.dtype).unsqueeze(-1)  # (W, L, 1)
        mean = (x * seen).cumsum(1) / seen.cumsum(1).clamp(min=1)  # (W, L, D)
        idx = torch.arange(n, device=hist.device)
        if query is not None:
            q, x, mean, idx_q = q[:, :, query], x[:, query], mean[:, query], idx[query]
        else:
            idx_q = idx
        dist = idx_q.unsqueeze(1) - idx.unsqueeze(0)  # (Q, L) how many events back each key is
        allowed = (dist >= 0) & (dist < self.rel_bias.size(1))
        bias = self.rel_bias[:, dist.clamp(0, self.rel_bias.size(1) - 1)]  # (h, Q, L)
        mask = allowed.unsqueeze(0) & valid[:, None, None, :]  # (W, 1, Q, L)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.heads) + bias  # (W, h, Q, L)
        att = torch.softmax(att.masked_fill(~mask, -1e9), dim=-1) * mask.any(-1, keepdim=True)
        y = x + self.out((att @ v).transpose(1, 2).reshape(w, -1, d))  # (W, Q, D)
        return torch.cat([self.norm2(y + self.ffn(self.norm1(y))), mean], dim=-1)  # (W, Q, 2D)

    def head(self, prof: Tensor, state: Tensor) -> Tensor:
        """Profile (B, 4D) and state (B, 2D: attention output, mean of the events) -> user vector (B, D)."""
        out = self.mlp(torch.cat([prof, state], dim=-1))
        return F.normalize(_skip(self, out, state[:, state.size(1) // 2:]), dim=-1)  # (B, D)

    def forward(self, u: UserBatch, hist: Tensor) -> Tensor:
        """``hist`` = item tower history vectors of ``u.hist_items`` (newest first): (B, H, D) -> (B, D)."""
        flip = lambda t: t.flip(1)  # noqa: E731 - newest first -> oldest first, the newest last
        valid = flip(u.hist_items > 0)
        last = torch.zeros(hist.size(1), dtype=torch.bool, device=hist.device)
        last[-1] = True
        state = self.states(flip(hist), flip(u.hist_types), valid, last)[:, 0]  # (B, D)
        return self.head(self.profile(u), state)

    @torch.inference_mode()
    def serving_arrays(self, hist: Tensor) -> dict[str, np.ndarray]:
        """:meth:`forward`'s weights for serving.model.NumpySequenceTower; ``hist`` (n_items, D): every item
        row's history vector. One block reads each event linearly, so every item's and every type's key and
        value rows are computed here once (an event's are the sum of its item's and its type's)."""
        d = hist.size(1)
        w, b = self.qkv.weight, self.qkv.bias  # (3D, D), (3D,): query, key, value rows
        kinds = self.kind.weight  # (T, D); row 0 (padding) is zero
        return {"hist": _np(hist), "kinds": _np(kinds), **_profile_arrays(self),
                "q_w": _np(w[:d]).T, "q_b": _np(b[:d]),
                "k_item": _np(hist @ w[d:2 * d].T + b[d:2 * d]), "v_item": _np(hist @ w[2 * d:].T + b[2 * d:]),
                "k_kind": _np(kinds @ w[d:2 * d].T), "v_kind": _np(kinds @ w[2 * d:].T),
                "rel_bias": _np(self.rel_bias),  # (heads, H)
                "out_w": _np(self.out.weight).T, "out_b": _np(self.out.bias),
                **_norm_arrays(self.norm1, "norm1"), **_norm_arrays(self.norm2, "norm2"),
                **_linear_arrays(self.ffn, "ffn1", "ffn2"), **_linear_arrays(self.mlp, "mlp1", "mlp2"),
                "skip": np.asarray(self.skip, np.float32)}


class TwoTower(nn.Module):
    def __init__(self, cfg: TowerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_tower = ItemTower(cfg)
        if cfg.user_tower not in USER_TOWERS:
            raise ValueError(f"user_tower must be one of {USER_TOWERS}, got {cfg.user_tower!r}")
        self.user_tower = SequenceUserTower(cfg) if cfg.user_tower == "sequence" else UserTower(cfg)
        self.apply(self._init)

    @property
    def sequential(self) -> bool:
        return isinstance(self.user_tower, SequenceUserTower)

    def _init(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            nn.init.normal_(module.weight, std=self.cfg.init_std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()

    def users(self, u: UserBatch) -> Tensor:
        # A batch's B x H history slots name far fewer distinct items: embed each once and gather, so the
        # backward touches U rows per table instead of B x H (~10% of a training step at H=50).
        uniq, inv = _unique(u.hist_items, self.cfg.n_items)
        return self.user_tower(u, _rows(self.item_tower.history_vectors(uniq), inv))  # (B, D)

    @torch.inference_mode()
    def serving_arrays(self) -> dict[str, np.ndarray]:
        """The user tower's weights, named, for its numpy forward in serving/model.py (``numpy_tower``)."""
        rows = torch.arange(self.cfg.n_items, device=self.item_tower.f_top.device)
        return self.user_tower.serving_arrays(self.item_tower.history_vectors(rows))  # (n_items, D) history vectors

    def items(self, idx: Tensor) -> Tensor:
        return self.item_tower(idx)  # (N, D)

    def window_users(self, b: Windows) -> Tensor:
        """The sequence tower's user vector for every target of ``b`` (T, D), all positions in one pass."""
        tower = self.user_tower
        assert isinstance(tower, SequenceUserTower)
        uniq, inv = _unique(b.items, self.cfg.n_items)
        hist = _rows(self.item_tower.history_vectors(uniq), inv)  # (W, L, D)
        states = tower.states(hist, b.types, b.items > 0)  # (W, L, D)
        return tower.head(tower.profile(b.user), states[b.win, b.pos])  # (T, D)

    def loss(self, user: Tensor, targets: Tensor, log_q: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """In-batch sampled softmax of user vectors (B, D) against their targets' items (B,): logits, loss.

        Another target of the same user stays a negative: masking them (a batch of whole windows holds ~25 per
        user) cost the sequence tower 0.017 NDCG@10 on ml-100k leave-last-out (0.111 -> 0.094).
        """
        item = self.items(targets)  # (B, D)
        logits = user @ item.T / self.cfg.temperature  # (B, B)
        if log_q is not None:
            logits = logits - log_q[targets].unsqueeze(0)
        # the same item twice in a batch is a positive, not a negative, for both rows
        dup = (targets.unsqueeze(0) == targets.unsqueeze(1)) & ~torch.eye(
            len(targets), dtype=torch.bool, device=targets.device)
        logits = logits.masked_fill(dup, float("-inf"))
        return logits, F.cross_entropy(logits, torch.arange(len(targets), device=targets.device))

    def forward(self, u: UserBatch, targets: Tensor | None = None,
                log_q: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """User vectors (B, D), or with ``targets`` (B,) in-batch logits (B, B) and the loss.

        ``log_q`` (n_items,) is log of each item's sampling probability: in-batch negatives are
        drawn in proportion to popularity, so subtracting log q undoes the bias toward popular
        items being punished as negatives (logQ correction).
        """
        user = self.users(u)  # (B, D)
        if targets is None:
            return user, None
        return self.loss(user, targets, log_q)
