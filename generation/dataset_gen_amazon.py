"""Synthetic Amazon-like users, items and interactions with a known preference structure.

Each user has latent category affinities (Dirichlet); the top ``n_preferred`` categories are
the user's stated preferences. A share ``preference_share`` of interaction rows targets the
preferred categories, the rest targets the other categories, so the realized share is a
tunable, checkable property. Interactions come as per-item funnels
(view -> cart -> purchase -> rate) inside per-user sessions with strictly increasing time.

    python generation/dataset_gen_amazon.py --n_users 1000 --n_items 5000 --n_interactions 20000
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from streamrec.files import atomic_write
from streamrec.schemas import INTERACTION_TYPES

if TYPE_CHECKING:
    from collections.abc import Callable

    from faker import Faker

DEFAULT_END = datetime(2026, 11, 1, tzinfo=UTC)
REGIONS = ("North America", "Europe", "Asia Pacific", "Latin America", "Middle East & Africa")
DEVICES = ("mobile", "desktop", "tablet")
_REGION_P = [0.3, 0.28, 0.25, 0.1, 0.07]

# top category -> (typical list price, "Sub|Leaf" paths)
_TREE: dict[str, tuple[float, tuple[str, ...]]] = {
    "Electronics": (60.0, ("Headphones|InEarHeadphones", "Mobiles&Accessories|Smartphones",
                           "HomeTheater|Televisions", "WearableTechnology|SmartWatches")),
    "Computers&Accessories": (35.0, ("Accessories&Peripherals|Keyboards", "Accessories&Peripherals|USBCables",
                                     "Components|MemoryCards", "Networking|WiFiRouters")),
    "Home&Kitchen": (40.0, ("Kitchen&Dining|Cookware", "Heating&Cooling|TableFans",
                            "Furniture|OfficeChairs", "HomeStorage|Organizers")),
    "OfficeProducts": (12.0, ("OfficePaperProducts|Notebooks", "WritingSupplies|GelPens",
                              "OfficeElectronics|Calculators")),
    "MusicalInstruments": (90.0, ("Guitars|AcousticGuitars", "Microphones|CondenserMicrophones",
                                  "Keyboards|DigitalPianos")),
    "HomeImprovement": (30.0, ("Electrical|SmartPlugs", "PowerTools|CordlessDrills", "Lighting|LedBulbs")),
    "Toys&Games": (20.0, ("Puzzles|JigsawPuzzles", "ConstructionToys|BuildingBricks", "Games|BoardGames")),
    "Car&Motorbike": (25.0, ("CarElectronics|DashCams", "CarAccessories|PhoneMounts",
                             "CarCare|CleaningKits")),
    "Health&PersonalCare": (15.0, ("HealthMonitors|BloodPressureMonitors", "PersonalCare|ElectricShavers",
                                   "Nutrition|Vitamins")),
    "Sports&Outdoors": (35.0, ("Fitness|YogaMats", "Cycling|BikeHelmets", "Camping|Tents")),
    "Books": (14.0, ("Fiction|Thrillers", "Nonfiction|Biographies", "Children|PictureBooks")),
    "Beauty": (18.0, ("Skincare|Moisturizers", "Makeup|Lipsticks", "Fragrance|Perfumes")),
}
CATEGORIES: list[str] = list(_TREE)

_TITLES = (
    ("Very disappointed", "Stopped working quickly", "Not as described"),
    ("Below expectations", "Meh, would not rebuy", "Poor build quality"),
    ("It's okay", "Average product", "Does the job, nothing more"),
    ("Good value", "Pretty happy with it", "Works well"),
    ("Excellent!", "Exactly what I needed", "Highly recommended"),
)
_OPENERS = (
    ("Returned it.", "Would give zero stars if I could.", "Broke on day two."),
    ("Had some issues.", "Quality is lacking.", "Not worth the price."),
    ("Decent for the price.", "Mixed feelings.", "Some pros, some cons."),
    ("Solid purchase.", "Does what it says.", "Nice quality overall."),
    ("Love it.", "Five stars, no complaints.", "Better than expected."),
)

# funnel depth of a chain: 1 view, 2 +cart, 3 +purchase, 4 +rate
_CHAIN_LEN_P = np.array([0.55, 0.22, 0.13, 0.10])
_NEW_SESSION_P = 0.4  # chance that the next chain of a user opens a new session
_NEGATIVE_VIEW_P = 0.35  # share of bare views that are negative
# --dynamics: a chain stays in the category of its session's previous chain (of the same kind, preferred
# or not, so the preference share is kept exactly) with this chance: sessions inside a category
_SESSION_STAY_P = 0.8
_MIN_GAP_NS = 1_000_000_000  # 1 s between any two events of one user
_DAY_NS = 86_400 * 1_000_000_000
_Firsts = tuple[np.ndarray, np.ndarray]  # (entity index per row, timestamp ns per row)


class GeneratorError(ValueError):
    """A bad setting or output folder; the message is one line naming the flag."""


@dataclass(frozen=True)
class GeneratorConfig:
    n_users: int
    n_items: int
    n_interactions: int
    seed: int = 42
    preference_share: float = 0.7
    days: int = 90
    end: datetime = DEFAULT_END
    zipf_a: float = 1.1
    n_preferred: int = 2
    # session dynamics: a user's next events depend on their last ones (see _sticky_sessions); off, every
    # chain's category is drawn afresh from the user's affinities, and fresh history is worth nothing more
    # than a day-old snapshot of it by construction
    dynamics: bool = False


@dataclass
class Dataset:
    users: pd.DataFrame
    items: pd.DataFrame
    interactions: pd.DataFrame
    affinities: pd.DataFrame
    realized_preference_share: float
    timings: dict[str, float] = field(default_factory=dict)


def validate(cfg: GeneratorConfig) -> None:
    k = len(CATEGORIES)
    checks = [
        (cfg.n_users >= 1, f"--n_users must be >= 1, got {cfg.n_users}"),
        (cfg.n_items >= k, f"--n_items must be >= {k} (the number of categories), got {cfg.n_items}"),
        (cfg.n_interactions >= 1, f"--n_interactions must be >= 1, got {cfg.n_interactions}"),
        (0.0 <= cfg.preference_share <= 1.0,
         f"--preference-share must be between 0 and 1, got {cfg.preference_share}"),
        (1 <= cfg.days <= 3650, f"--days must be between 1 and 3650, got {cfg.days}"),
        (0 <= cfg.seed < 2**63, f"--seed must be >= 0, got {cfg.seed}"),
        (cfg.zipf_a > 0 and math.isfinite(cfg.zipf_a), f"zipf_a must be > 0, got {cfg.zipf_a}"),
        (1 <= cfg.n_preferred < k, f"n_preferred must be between 1 and {k - 1}, got {cfg.n_preferred}"),
        (cfg.end.tzinfo is not None, f"--end must carry a time zone, got {cfg.end.isoformat()}"),
    ]
    for ok, message in checks:
        if not ok:
            raise GeneratorError(message)


def _ids(prefix: str, n: int) -> np.ndarray:
    fmt = f"{prefix}%0{max(6, len(str(n)))}d"  # %-formatting: ~1.7x faster than f-strings here
    return np.array([fmt % i for i in range(1, n + 1)], dtype=object)


def _utc(ns: np.ndarray) -> pd.DatetimeIndex:
    # a dtype view: pd.to_datetime on large int arrays is far slower
    return pd.DatetimeIndex(np.asarray(ns, dtype=np.int64).view("M8[ns]")).tz_localize("UTC")


def _pool(make: Callable[[], str], n: int) -> np.ndarray:
    return np.array([make() for _ in range(n)], dtype=object)


class _Progress:
    """Stage timer; prints one stderr line per finished stage when enabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self._t = enabled, time.perf_counter()
        self.timings: dict[str, float] = {}

    def done(self, stage: str, detail: str = "") -> None:
        now = time.perf_counter()
        self.timings[stage] = now - self._t
        self._t = now
        if self.enabled:
            print(f"  {stage:<13}{self.timings[stage]:7.2f}s  {detail}", file=sys.stderr, flush=True)


def _users(cfg: GeneratorConfig, rng: np.random.Generator, fake: Faker,
           signup_lo_ns: int, end_ns: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    n, k = cfg.n_users, len(CATEGORIES)
    # alpha < 1 gives peaked tastes, so the preferred categories carry most of the affinity
    aff = rng.dirichlet(np.full(k, 0.5), size=n)
    top = np.argsort(-aff, axis=1, kind="stable")[:, : cfg.n_preferred]
    pref_mask = np.zeros((n, k), dtype=bool)
    np.put_along_axis(pref_mask, top, True, axis=1)
    pref_names = np.array(CATEGORIES, dtype=object)[top].tolist()
    firsts, lasts = _pool(fake.first_name, 400), _pool(fake.last_name, 400)
    users = pd.DataFrame({
        "user_id": _ids("U", n),
        "user_name": firsts[rng.integers(0, len(firsts), n)] + " " + lasts[rng.integers(0, len(lasts), n)],
        "signup_date": rng.integers(signup_lo_ns, end_ns, n),  # ns; clamped and typed in generate
        "preferences": [",".join(p) for p in pref_names],
        "age": np.clip(np.rint(rng.normal(38, 13, n)), 18, 80).astype(np.int64),
        "gender": np.array(["F", "M", "X"], dtype=object)[rng.choice(3, n, p=[0.48, 0.48, 0.04])],
        "region": np.array(REGIONS, dtype=object)[rng.choice(len(REGIONS), n, p=_REGION_P)],
        "preferred_categories": pref_names,
    })
    return users, aff, pref_mask


def _combine(rng: np.random.Generator, n: int, sep: str, *pools: np.ndarray) -> np.ndarray:
    out = pools[0][rng.integers(0, len(pools[0]), n)]
    for pool in pools[1:]:
        out = out + sep + pool[rng.integers(0, len(pool), n)]
    return out


def _items(cfg: GeneratorConfig, rng: np.random.Generator, fake: Faker,
           start_ns: int, end_ns: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    n, k = cfg.n_items, len(CATEGORIES)
    # the first k slots give every category at least one item that is on sale now
    pos = rng.permutation(n)
    cat = np.concatenate([rng.permutation(k), rng.choice(k, n - k, p=rng.dirichlet(np.full(k, 5.0)))])[pos]
    future = (rng.random(n) < 0.03) & (pos >= k)
    pop = (rng.permutation(n) + 1.0) ** -cfg.zipf_a
    pop[future] = 0.0  # not yet available, so never interacted with
    paths = [(top, p) for top, (_, leaves) in _TREE.items() for p in leaves]
    offsets = np.cumsum([0] + [len(v[1]) for v in _TREE.values()])
    leaf = offsets[cat] + (rng.random(n) * np.diff(offsets)[cat]).astype(np.int64)
    path = np.array([f"{t}|{p}" for t, p in paths], dtype=object)[leaf]
    label = np.array([re.sub(r"(?<=[a-z])(?=[A-Z])", " ", p.split("|")[1]) for _, p in paths],
                     dtype=object)[leaf]
    words = np.array([w.capitalize() for w in _pool(fake.word, 1500)], dtype=object)
    brands, sentences = _pool(fake.last_name, 300), _pool(fake.sentence, 600)
    base = np.array([v[0] for v in _TREE.values()])[cat]
    actual = np.round(np.maximum(1.0, base * rng.lognormal(0.0, 0.7, n)), 2)
    pct = np.where(rng.random(n) < 0.25, 0, rng.integers(5, 81, n)).astype(np.float64)
    ids = _ids("I", n)
    arrival = np.where(future, end_ns + rng.integers(3_600 * 10**9, 60 * _DAY_NS, n),
                       rng.integers(start_ns - 730 * _DAY_NS, end_ns, n))
    items = pd.DataFrame({
        "item_id": ids,
        "product_name": _combine(rng, n, " ", brands, words, words) + " " + label,
        "category": path,
        "top_category": np.array(CATEGORIES, dtype=object)[cat],
        "discounted_price": np.round(actual * (100.0 - pct) / 100.0, 2),
        "actual_price": actual,
        "discount_percentage": pct,
        "rating": np.clip(np.round(rng.normal(4.1, 0.35, n), 1), 1.0, 5.0),
        "rating_count": rng.poisson(3.0 + 50.0 * n * pop / pop.sum()).astype(np.int64),
        "about_product": _combine(rng, n, "|", sentences, sentences, sentences),
        "arrival_date": arrival,
        "stock": np.where(rng.random(n) < 0.05, 0, rng.integers(1, 500, n)).astype(np.int64),
        "img_link": "https://img.streamrec.example/items/" + ids + ".jpg",
        "product_link": "https://shop.streamrec.example/dp/" + ids,
    })
    return items, cat, pop


def _pick_categories(rng: np.random.Generator, chain_user: np.ndarray, is_pref: np.ndarray,
                     aff: np.ndarray, pref_mask: np.ndarray, cat_mass: np.ndarray) -> np.ndarray:
    # preferred chains follow the user's affinity; the others follow catalogue popularity
    # restricted to the non-preferred categories, so chance hits cannot inflate the share
    w_pref = np.cumsum(aff * pref_mask, axis=1)
    w_other = np.cumsum(cat_mass[None, :] * ~pref_mask, axis=1)
    out = np.empty(len(chain_user), dtype=np.int64)
    for flag, cdf_u in ((True, w_pref), (False, w_other)):
        sel = np.flatnonzero(is_pref == flag)
        cdf = cdf_u[chain_user[sel]]
        # u in (0, total] makes the first cdf >= u a category with positive weight
        u = (1.0 - rng.random(len(sel))) * cdf[:, -1]
        out[sel] = (cdf < u[:, None]).sum(axis=1)
    return out


def _sticky_sessions(rng: np.random.Generator, chain_cat: np.ndarray, chain_sess: np.ndarray,
                     is_pref: np.ndarray) -> np.ndarray:
    """Sessions inside a category: each chain keeps the category of the previous chain of its session and
    kind (preferred or not) with chance ``_SESSION_STAY_P``, so runs of one category form within sessions
    while every chain's kind, and so the preference share, stays as calibrated."""
    out = chain_cat.copy()
    for flag in (True, False):
        sel = np.flatnonzero(is_pref == flag)
        if len(sel) < 2:
            continue
        stay = np.r_[False, chain_sess[sel[1:]] == chain_sess[sel[:-1]]] & (rng.random(len(sel)) < _SESSION_STAY_P)
        src = np.maximum.accumulate(np.where(stay, 0, np.arange(len(sel))))  # the run's first chain
        out[sel] = chain_cat[sel][src]
    return out


def _pick_items(rng: np.random.Generator, chain_cat: np.ndarray, item_cat: np.ndarray,
                pop: np.ndarray) -> np.ndarray:
    out = np.empty(len(chain_cat), dtype=np.int64)
    for c in range(len(CATEGORIES)):
        sel = np.flatnonzero(chain_cat == c)
        if len(sel) == 0:
            continue
        members = np.flatnonzero((item_cat == c) & (pop > 0))
        cdf = np.cumsum(pop[members])
        out[sel] = members[np.searchsorted(cdf, (1.0 - rng.random(len(sel))) * cdf[-1])]
    return out


def _interactions(cfg: GeneratorConfig, rng: np.random.Generator, fake: Faker, aff: np.ndarray,
                  pref_mask: np.ndarray, item_cat: np.ndarray, pop: np.ndarray, item_rating: np.ndarray,
                  user_ids: np.ndarray, item_ids: np.ndarray, start_ns: int, span_ns: int
                  ) -> tuple[pd.DataFrame, _Firsts, _Firsts, float]:
    n, n_users = cfg.n_interactions, cfg.n_users
    # chains (one funnel on one item) until exactly n rows; the last one is cut to fit
    lens = rng.choice(np.arange(1, 5), size=n, p=_CHAIN_LEN_P)
    cum = np.cumsum(lens)
    n_chains = int(np.searchsorted(cum, n)) + 1
    lens = lens[:n_chains]
    lens[-1] -= cum[n_chains - 1] - n

    # everybody is active when there are enough chains; the rest follows a skewed activity
    activity = rng.lognormal(0.0, 1.0, n_users)
    base = np.arange(min(n_chains, n_users))
    extra = rng.choice(n_users, n_chains - len(base), p=activity / activity.sum())
    chain_user = np.sort(np.concatenate([base, extra]))

    # exact calibration: a random set of chains whose rows add up to the target share;
    # single-row chains top up what the greedy prefix leaves short
    order = rng.permutation(n_chains)
    target = round(cfg.preference_share * n)
    is_pref = np.zeros(n_chains, dtype=bool)
    is_pref[order[np.cumsum(lens[order]) <= target]] = True
    spare = order[~is_pref[order] & (lens[order] == 1)]
    is_pref[spare[: target - int(lens[is_pref].sum())]] = True
    cat_mass = np.bincount(item_cat, weights=pop, minlength=len(CATEGORIES))
    chain_cat = _pick_categories(rng, chain_user, is_pref, aff, pref_mask, cat_mass)
    chain_item = _pick_items(rng, chain_cat, item_cat, pop)

    new_sess = np.ones(n_chains, dtype=bool)
    new_sess[1:] = (chain_user[1:] != chain_user[:-1]) | (rng.random(n_chains - 1) < _NEW_SESSION_P)
    chain_sess = np.cumsum(new_sess) - 1
    if cfg.dynamics:
        # a session's preferred chains first, then the others: runs of one kind, which stickiness turns into
        # runs of one category (whole chains move, so every count and the share stay as calibrated)
        perm = np.lexsort((np.arange(n_chains), ~is_pref, chain_sess))
        lens, is_pref, chain_cat = lens[perm], is_pref[perm], chain_cat[perm]
        chain_cat = _sticky_sessions(rng, chain_cat, chain_sess, is_pref)
        # drawn after the flat draws, so a seed without --dynamics gives the same data as before the flag
        chain_item = _pick_items(rng, chain_cat, item_cat, pop)
    n_sess = int(chain_sess[-1]) + 1
    sess_user = chain_user[new_sess]
    sess_start = rng.integers(0, int(span_ns * 0.995), n_sess)
    sess_start = sess_start[np.lexsort((sess_start, sess_user))]  # sorted within each user

    row_chain = np.repeat(np.arange(n_chains), lens)
    chain_first = np.cumsum(lens) - lens
    step = np.arange(n) - chain_first[row_chain]
    row_sess, row_user = chain_sess[row_chain], chain_user[row_chain]
    negative = (lens == 1) & (rng.random(n_chains) < _NEGATIVE_VIEW_P)
    type_code = np.where(step == 0, negative[row_chain].astype(np.int64), step + 1)

    gaps = _MIN_GAP_NS + rng.exponential(45e9, n).astype(np.int64)
    sess_first_row = chain_first[new_sess]
    gaps[sess_first_row] = 0
    offset = np.cumsum(gaps)
    offset -= offset[sess_first_row][row_sess]
    t = sess_start[row_sess] + offset
    # overlapping sessions: t_i = max(t_i, t_{i-1} + gap) per user, via a shifted running max
    shift = np.arange(n, dtype=np.int64) * _MIN_GAP_NS
    t = pd.Series(t - shift).groupby(row_user).cummax().to_numpy() + shift
    if t.max() > span_ns:  # rare pile-ups near the window end: squeeze, order is kept
        t = (t.astype(np.float64) * (span_ns / t.max())).astype(np.int64)
    ts = start_ns + t

    is_rate = type_code == 4
    star = np.clip(np.rint(item_rating[chain_item[row_chain]] + rng.normal(0, 0.9, n)), 1, 5)
    rating = np.where(is_rate, star, np.nan)
    r_idx = np.flatnonzero(is_rate)
    s = star[r_idx].astype(np.int64) - 1
    titles, openers = np.array(_TITLES, dtype=object), np.array(_OPENERS, dtype=object)
    sentences = _pool(fake.sentence, 300)
    review_title = np.full(n, None, dtype=object)
    review_content = np.full(n, None, dtype=object)
    review_title[r_idx] = titles[s, rng.integers(0, 3, len(r_idx))]
    review_content[r_idx] = (openers[s, rng.integers(0, 3, len(r_idx))] + " "
                             + sentences[rng.integers(0, len(sentences), len(r_idx))])
    has_qty = (type_code == 2) | (type_code == 3)
    qty = np.minimum(rng.geometric(0.75, n_chains), 10)[row_chain]

    o = np.argsort(ts, kind="stable")  # per-user order survives: user times are strictly increasing
    row_item = chain_item[row_chain]
    realized = float(pref_mask[row_user, item_cat[row_item]].mean())
    df = pd.DataFrame({
        "interaction_id": _ids("E", n),
        "user_id": user_ids[row_user[o]],
        "item_id": item_ids[row_item[o]],
        "timestamp": _utc(ts[o]),
        "interaction_type": np.array(INTERACTION_TYPES, dtype=object)[type_code[o]],
        "review_title": review_title[o],
        "review_content": review_content[o],
        "rating": rating[o],
        "quantity": pd.arrays.IntegerArray(qty[o], ~has_qty[o]),
        "device": np.array(DEVICES, dtype=object)[rng.choice(3, n_sess, p=[0.6, 0.3, 0.1])][row_sess[o]],
        "session_id": _ids("S", n_sess)[row_sess[o]],
    })
    return df, (row_user, ts), (row_item, ts), realized


def _first_seen(who_ts: _Firsts, size: int) -> np.ndarray:
    first = np.full(size, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, who_ts[0], who_ts[1])
    return first


def generate(cfg: GeneratorConfig, progress: bool = False) -> Dataset:
    validate(cfg)
    from faker import Faker  # imported here so that --help and argument errors stay instant

    fake = Faker("en_US")
    fake.seed_instance(cfg.seed)
    # independent streams: changing n_interactions leaves users and items unchanged
    r_users, r_items, r_inter = (np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(3))
    end_ns = int(pd.Timestamp(cfg.end).tz_convert("UTC").value)
    span_ns = cfg.days * _DAY_NS
    start_ns = end_ns - span_ns
    prog = _Progress(progress)

    users, aff, pref_mask = _users(cfg, r_users, fake, start_ns - 730 * _DAY_NS, end_ns)
    prog.done("users", f"{cfg.n_users:,} rows")
    items, item_cat, pop = _items(cfg, r_items, fake, start_ns, end_ns)
    prog.done("items", f"{cfg.n_items:,} rows")
    inter, user_ts, item_ts, realized = _interactions(
        cfg, r_inter, fake, aff, pref_mask, item_cat, pop, items["rating"].to_numpy(),
        users["user_id"].to_numpy(), items["item_id"].to_numpy(), start_ns, span_ns)
    # nobody signs up, and nothing arrives, after their first interaction
    hour = 3_600 * 10**9
    # whole seconds: Feast keeps feature timestamps at second precision and warns on the rest
    users["signup_date"] = _utc(np.minimum(users["signup_date"].to_numpy(),
                                           _first_seen(user_ts, cfg.n_users) - hour)).floor("s")
    items["arrival_date"] = _utc(np.minimum(items["arrival_date"].to_numpy(),
                                            _first_seen(item_ts, cfg.n_items) - hour)).floor("s")
    # the catalog snapshot's time: Feast's event timestamp for item_features
    items["updated_at"] = pd.Timestamp(end_ns, unit="ns", tz="UTC")
    prog.done("interactions", f"{cfg.n_interactions:,} rows, preference share {realized:.3f}")
    affinities = pd.DataFrame({
        "user_id": np.repeat(users["user_id"].to_numpy(), len(CATEGORIES)),
        "category": np.tile(np.array(CATEGORIES, dtype=object), cfg.n_users),
        "affinity": aff.ravel(),
    })
    return Dataset(users, items, inter, affinities, realized, prog.timings)


def _writable_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".probe-"):
            pass
    except OSError as exc:
        raise GeneratorError(f"--out {out_dir} is not a writable folder ({exc.strerror or exc})") from None


def write(ds: Dataset, out_dir: Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    _writable_dir(out_dir)
    frames = {
        "users": ("recommendation_users.parquet", ds.users),
        "items": ("recommendation_items.parquet", ds.items),
        "interactions": ("recommendation_interactions.parquet", ds.interactions),
        "affinities": ("user_affinities.parquet", ds.affinities),
    }
    paths: dict[str, Path] = {}
    for key, (name, df) in frames.items():
        path = out_dir / name
        try:
            atomic_write(path, lambda tmp, df=df: df.to_parquet(tmp, index=False))  # never half a file
        except OSError as exc:
            raise GeneratorError(f"--out {out_dir}: cannot write {name} ({exc.strerror or exc})") from None
        paths[key] = path
    return paths


def _parse_end(text: str | None) -> datetime:
    if text is None:
        return DEFAULT_END
    try:
        end = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        msg = f"--end must be an RFC3339 timestamp (e.g. 2026-11-01T00:00:00Z), got {text!r}"
        raise GeneratorError(msg) from None
    return (end if end.tzinfo else end.replace(tzinfo=UTC)).astimezone(UTC)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n_users", "--n-users", type=int, default=1000)
    p.add_argument("--n_items", "--n-items", type=int, default=5000)
    p.add_argument("--n_interactions", "--n-interactions", type=int, default=20000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default=None,
                   help="output folder (default: $STREAMREC_DATA_DIR, else feature_repo/data)")
    p.add_argument("--preference-share", "--preference_share", dest="preference_share", type=float,
                   default=0.7, help="share of interactions in the user's preferred categories")
    p.add_argument("--days", type=int, default=90, help="length of the time window in days")
    p.add_argument("--end", default=None,
                   help=f"RFC3339 end of the window (default {DEFAULT_END:%Y-%m-%dT%H:%M:%SZ})")
    p.add_argument("--dynamics", action="store_true",
                   help="session dynamics: a user's next events depend on their last ones (sessions stay inside "
                        "a category), so fresh history is worth more than a day-old snapshot (on for make demo)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def _data_dir() -> Path:
    """STREAMREC_DATA_DIR, through streamrec's settings (a bad value of any is one error line)."""
    from streamrec._exceptions import ConfigError
    from streamrec.config import load_settings

    try:
        return load_settings().data_dir
    except ConfigError as exc:
        raise GeneratorError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = GeneratorConfig(args.n_users, args.n_items, args.n_interactions, args.seed,
                              args.preference_share, args.days, _parse_end(args.end), dynamics=args.dynamics)
        validate(cfg)
        out = Path(args.out) if args.out else _data_dir()
        _writable_dir(out)  # fail before spending time on generation
        t0 = time.perf_counter()
        ds = generate(cfg, progress=not args.quiet)
        t1 = time.perf_counter()
        paths = write(ds, out)
        t2 = time.perf_counter()
    except GeneratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start = cfg.end - timedelta(days=cfg.days)
    print(f"window: {start:%Y-%m-%dT%H:%M:%SZ} .. {cfg.end:%Y-%m-%dT%H:%M:%SZ}  seed {cfg.seed}")
    for key, frame in (("users", ds.users), ("items", ds.items), ("interactions", ds.interactions),
                       ("affinities", ds.affinities)):
        print(f"{key:<13}{len(frame):>10,} rows -> {paths[key]}")
    print(f"realized preference share: {ds.realized_preference_share:.4f} "
          f"(target {cfg.preference_share:.4f})")
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in ds.timings.items())
    print(f"timings: generate {t1 - t0:.2f}s ({stages}), write {t2 - t1:.2f}s, total {t2 - t0:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
