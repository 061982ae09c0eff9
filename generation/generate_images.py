"""Product images from each item's name and description, with Stable Diffusion v1.5 (diffusers).

One PNG per item in ``--out`` (default generation/data/generated_images/), named from the
sanitized item id, and ``manifest.json`` beside them (item id -> file, prompt, seed, model, steps,
size), merged across runs. Items that already have an image are skipped unless ``--overwrite``;
item ``i`` of the items table always gets seed ``--seed + i``, so a rerun draws the same image.

    python generation/generate_images.py --limit 20 --steps 25
    python generation/generate_images.py --model models/stable-diffusion-v1-5 --device cpu --limit 4

diffusers and transformers (the ``images`` extra) are imported here only, inside functions, so the
rest of streamrec neither needs nor pays for them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from streamrec._exceptions import StreamrecError
from streamrec.files import atomic_write

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ImagesError", "MissingExtraError", "ModelUnavailableError", "ImageConfig", "Job",
    "sanitize_filename", "build_prompt", "plan", "run", "images", "main",
]

# The id the project names; runwayml withdrew that repo in 2024 and the Hub's maintained copy is
# stable-diffusion-v1-5/stable-diffusion-v1-5: either works with --model once it is downloaded.
DEFAULT_MODEL = "runwayml/stable-diffusion-v1-5"
DEFAULT_OUT = Path("generation/data/generated_images")
MANIFEST = "manifest.json"
EXTRA_HINT = "install the images extra: pip install -e '.[images]'"
_STEM_MAX = 64  # readable part of a file name; with "-" and the hash it stays far below any FS limit
_HASH_LEN = 10  # 40 bits of sha256: ids that sanitize alike still get distinct names
_ABOUT_MAX = 200  # CLIP reads 77 tokens; the style words come first so truncation only cuts description
_LOW_MEMORY = 8 * 1024**3  # below this much CUDA memory, SD at 512 px needs attention slicing
_FLUSH_EVERY_S = 30.0  # manifest rewrites cost O(items); bound them, and always flush at the end
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class ImagesError(StreamrecError):
    """A bad flag, unreadable items or manifest, or an output folder that cannot be written."""


class MissingExtraError(ImagesError):
    """diffusers, transformers or pillow is not installed."""


class ModelUnavailableError(ImagesError):
    """The Stable Diffusion weights are neither on this machine nor downloadable."""


@dataclass(frozen=True)
class ImageConfig:
    model: str = DEFAULT_MODEL
    device: str = "auto"  # auto | cpu | cuda
    limit: int | None = None
    steps: int = 25  # PNDM converges well before diffusers' 50
    size: int = 512  # SD v1.5 was trained at 512x512
    seed: int = 42
    batch_size: int = 4
    overwrite: bool = False
    out: Path = DEFAULT_OUT
    items: Path | None = None  # None: $STREAMREC_DATA_DIR/recommendation_items.parquet
    guidance_scale: float = 7.5  # diffusers' default for SD v1.x


@dataclass(frozen=True)
class Job:
    item_id: str
    file: str  # a direct child of the output folder
    prompt: str
    seed: int  # --seed + the item's row in the items table


def validate(cfg: ImageConfig) -> None:
    checks = [
        (cfg.device in ("auto", "cpu", "cuda"), f"--device must be auto, cpu or cuda, got {cfg.device!r}"),
        (cfg.limit is None or cfg.limit >= 0, f"--limit must be >= 0, got {cfg.limit}"),
        (cfg.steps >= 1, f"--steps must be >= 1, got {cfg.steps}"),
        (cfg.size >= 8 and cfg.size % 8 == 0, f"--size must be a positive multiple of 8, got {cfg.size}"),
        (cfg.batch_size >= 1, f"--batch-size must be >= 1, got {cfg.batch_size}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ImagesError(message)


# ---- pure helpers ---------------------------------------------------------------------------------
def sanitize_filename(item_id: str) -> str:
    """A file-name stem (no extension) for ``item_id``: ``<readable ascii>-<hash>``, safe on any OS."""
    ascii_text = unicodedata.normalize("NFKD", item_id).encode("ascii", "ignore").decode()  # é -> e
    stem = _UNSAFE.sub("_", ascii_text)  # separators, control chars, spaces: all become "_"
    stem = re.sub(r"\.{2,}", "_", stem)
    stem = stem.strip("._-")[:_STEM_MAX].rstrip("._-") or "item"  # no hidden files, no trailing dots
    digest = hashlib.sha256(item_id.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LEN]
    return f"{stem}-{digest}"


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and value != value)  # NaN is pandas' missing


def _text(value: object) -> str:
    """Printable one-line text; None and NaN become ""."""
    if _missing(value):
        return ""
    chars = (" " if unicodedata.category(c).startswith("C") else c for c in str(value))
    return " ".join("".join(chars).split())


def _leaf(category: str) -> str:
    """ "Electronics|Headphones|InEarHeadphones" -> "In Ear Headphones" (the most specific level)."""
    leaf = category.split("|")[-1].replace("&", " & ")
    return " ".join(re.sub(r"(?<=[a-z])(?=[A-Z])", " ", leaf).split())


def build_prompt(row: Mapping[str, Any]) -> str:
    """The text prompt for one item row (product_name, category, about_product; missing ones skipped)."""
    name = _text(row.get("product_name")) or "a product"
    leaf = _leaf(_text(row.get("category")))
    about = _text(_text(row.get("about_product")).split("|")[0])
    if len(about) > _ABOUT_MAX:
        about = about[:_ABOUT_MAX].rsplit(" ", 1)[0]
    subject = f"{name} ({leaf})" if leaf and leaf.lower() not in name.lower() else name
    prompt = f"professional studio product photo of {subject}, white background, soft lighting, high detail"
    return f"{prompt}. {about}" if about else prompt


def plan(rows: Sequence[Mapping[str, Any]], cfg: ImageConfig) -> tuple[list[Job], list[Job]]:
    """(to generate, skipped because the image exists) for the first ``cfg.limit`` distinct items."""
    todo: list[Job] = []
    skipped: list[Job] = []
    seen: set[str] = set()
    for index, row in enumerate(rows):
        if cfg.limit is not None and len(seen) >= cfg.limit:
            break
        raw = row.get("item_id")
        item_id = "" if _missing(raw) else str(raw)
        if not item_id or item_id in seen:
            continue
        seen.add(item_id)
        job = Job(item_id, f"{sanitize_filename(item_id)}.png", build_prompt(row), cfg.seed + index)
        exists = (cfg.out / job.file).is_file()
        (skipped if exists and not cfg.overwrite else todo).append(job)
    return todo, skipped


def _batches(jobs: list[Job], size: int) -> Iterator[list[Job]]:
    for start in range(0, len(jobs), size):
        yield jobs[start:start + size]


# ---- files ----------------------------------------------------------------------------------------
def _items_path(cfg: ImageConfig) -> Path:
    if cfg.items is not None:
        return cfg.items
    from streamrec.config import get_settings

    return get_settings().data_dir / "recommendation_items.parquet"


def load_items(path: Path) -> pd.DataFrame:
    import pandas as pd

    try:
        items = pd.read_parquet(path)
    except FileNotFoundError:
        raise ImagesError(f"items not found: {path} (run `streamrec generate` first, or pass --items)") from None
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise ImagesError(f"--items {path}: not a readable parquet file ({exc})") from None
    missing = {"item_id", "product_name"} - set(items.columns)
    if missing:
        raise ImagesError(f"--items {path}: missing column(s) {', '.join(sorted(missing))}")
    return items


def _writable_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImagesError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ImagesError(f"--out {out} is not a writable folder")


def _write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp_path)``, then rename: readers never see half a file, a crash leaves no stub."""
    try:
        atomic_write(path, write)
    except OSError as exc:
        raise ImagesError(f"cannot write {path} ({exc.strerror or exc})") from None


def read_manifest(out: Path) -> dict[str, dict[str, Any]]:
    path = out / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ImagesError(f"{path} is unreadable ({exc}); move it away to start a new one") from None
    if not isinstance(data, dict):
        raise ImagesError(f"{path} is not a JSON object; move it away to start a new one")
    return data


class _Manifest:
    """New entries, merged into what is on disk at each flush (so concurrent runs lose little)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.pending: dict[str, dict[str, Any]] = {}
        self.last_flush = time.monotonic()

    def add(self, item_id: str, entry: dict[str, Any]) -> None:
        self.pending[item_id] = entry
        if time.monotonic() - self.last_flush > _FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            merged = read_manifest(self.out) | self.pending
            text = json.dumps(merged, indent=1, sort_keys=True)
            _write_atomic(self.out / MANIFEST, lambda p: p.write_text(text + "\n", encoding="utf-8"))
            self.pending = {}
        self.last_flush = time.monotonic()


def _save_png(image: Any, path: Path, job: Job) -> None:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()  # provenance travels with the file, not only in the manifest
    for key, value in (("item_id", job.item_id), ("prompt", job.prompt), ("seed", str(job.seed))):
        info.add_itxt(key, value)
    _write_atomic(path, lambda p: image.save(p, format="PNG", pnginfo=info))


# ---- diffusers ------------------------------------------------------------------------------------
def _import_diffusers() -> Any:
    """The diffusers module, with its and transformers' logs and bars quiet (ours report progress)."""
    try:
        import PIL  # noqa: F401
        import transformers

        transformers.utils.logging.set_verbosity_error()  # before diffusers pulls in CLIP classes
        transformers.utils.logging.disable_progress_bar()
        import diffusers
    except ImportError as exc:
        raise MissingExtraError(f"{EXTRA_HINT} ({exc.name or exc} is missing)") from None
    # CRITICAL, not ERROR: every load failure becomes our one error line, their log would repeat it
    diffusers.utils.logging.set_verbosity(diffusers.utils.logging.CRITICAL)
    diffusers.utils.logging.disable_progress_bar()
    return diffusers


def resolve_device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ImagesError("--device cuda: torch sees no CUDA device; use --device cpu or auto")
    return choice


def _offline() -> bool:
    # read now, not huggingface_hub.constants (fixed at its import); the hub's own truthy spellings
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _cached(model: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError as exc:
        raise MissingExtraError(f"{EXTRA_HINT} ({exc.name or exc} is missing)") from None
    return isinstance(try_to_load_from_cache(model, "model_index.json"), str)


def _local_dir(model: str) -> Path | None:
    """The folder ``--model`` names, None for a hub id; a path that does not exist is an error."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not _HUB_ID.match(model):
        what = "not a folder" if path.exists() else "no such folder"
        raise ModelUnavailableError(
            f"--model {model}: {what}. Pass a local diffusers Stable Diffusion folder, or download one "
            f"with network access: hf download {DEFAULT_MODEL} --local-dir {model}")
    return None


def _preflight(model: str) -> Path | None:
    """The local folder (None for a hub id), after the checks that need neither torch nor diffusers."""
    local = _local_dir(model)
    if local is not None and (missing := _missing_parts(local)):
        raise ModelUnavailableError(
            f"--model {model}: incomplete diffusers folder, missing {', '.join(missing)}/; download it again "
            f"with network access (hf download {DEFAULT_MODEL} --local-dir {model})")
    if local is None and _offline() and not _cached(model):
        raise _unavailable(model, None, True, "")
    return local


def _missing_parts(local: Path) -> list[str]:
    """Components model_index.json names but the folder lacks (a partial download loads, then fails)."""
    try:
        index = json.loads((local / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []  # from_pretrained reports a missing or broken index itself
    return [name for name, spec in index.items() if not name.startswith("_") and isinstance(spec, list)
            and spec and spec[0] is not None and not (local / name).is_dir()]


def _root_cause(exc: BaseException) -> str:
    """The innermost error's message: diffusers' own points at a stack trace the user never sees."""
    seen = {id(exc)}
    while (inner := exc.__cause__ or exc.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        exc = inner
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _unavailable(model: str, local: Path | None, offline: bool, cause: str) -> ModelUnavailableError:
    if local is not None:
        return ModelUnavailableError(
            f"--model {model}: no Stable Diffusion pipeline loads from this folder ({cause}); download one "
            f"with network access (hf download {DEFAULT_MODEL} --local-dir DIR) and pass --model DIR")
    why = "HF_HUB_OFFLINE is set" if offline else f"the download failed: {cause}"
    name = model.rsplit("/", 1)[-1]
    mirror = " (or its copy stable-diffusion-v1-5/stable-diffusion-v1-5)" if model == DEFAULT_MODEL else ""
    return ModelUnavailableError(
        f"the weights of {model} are not in the local Hugging Face cache and {why}. On a machine with network "
        f"access run `hf download {model} --local-dir models/{name}`{mirror} (older huggingface_hub: "
        f"`huggingface-cli download ...`), then pass --model models/{name}; or pass any local diffusers folder "
        f"with --model")


def load_pipeline(model: str, device: str) -> Any:
    """StableDiffusionPipeline on ``device``: fp16 on CUDA, fp32 on CPU, sliced attention if memory is short."""
    local, offline = _preflight(model), _offline()
    diffusers = _import_diffusers()
    import torch
    from huggingface_hub.errors import HFValidationError

    dtype = torch.float16 if device == "cuda" else torch.float32  # CPU kernels are slow or missing in fp16
    try:
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(
            str(local or model), torch_dtype=dtype, local_files_only=local is not None or offline)
    except (OSError, HFValidationError) as exc:  # hub errors (HfHubHTTPError, LocalEntryNotFound) are OSErrors
        raise _unavailable(model, local, offline, _root_cause(exc)) from exc
    pipe = pipe.to(device)
    if device == "cpu" or torch.cuda.get_device_properties(0).total_memory < _LOW_MEMORY:
        pipe.enable_attention_slicing()  # lower peak memory for a few percent of speed
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _draw(pipe: Any, batch: list[Job], cfg: ImageConfig) -> tuple[list[Any], list[bool]]:
    import torch

    # One CPU generator per item: its latents do not depend on the batch or the device.
    generators = [torch.Generator("cpu").manual_seed(job.seed) for job in batch]
    result = pipe(prompt=[job.prompt for job in batch], num_inference_steps=cfg.steps, height=cfg.size,
                  width=cfg.size, guidance_scale=cfg.guidance_scale, generator=generators)
    flagged = result.nsfw_content_detected or [False] * len(batch)
    return list(result.images), [bool(f) for f in flagged]


def _entry(job: Job, cfg: ImageConfig, device: str, nsfw: bool) -> dict[str, Any]:
    return {"file": job.file, "prompt": job.prompt, "seed": job.seed, "model": cfg.model, "steps": cfg.steps,
            "size": cfg.size, "guidance_scale": cfg.guidance_scale, "device": device, "nsfw_filtered": nsfw,
            "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def generate(pipe: Any, jobs: list[Job], cfg: ImageConfig, device: str) -> int:
    """Draw and save every job, batch by batch; returns how many the safety checker blanked."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    manifest, nsfw_count = _Manifest(cfg.out), 0
    columns = (TextColumn("images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, console=Console(stderr=True)) as progress:
            task = progress.add_task("images", total=len(jobs))
            for batch in _batches(jobs, cfg.batch_size):
                pictures, flags = _draw(pipe, batch, cfg)
                for job, picture, nsfw in zip(batch, pictures, flags, strict=True):
                    _save_png(picture, cfg.out / job.file, job)
                    manifest.add(job.item_id, _entry(job, cfg, device, nsfw))
                    nsfw_count += nsfw
                progress.advance(task, len(batch))
    finally:
        manifest.flush()  # what was drawn before an error or Ctrl-C is recorded too
    return nsfw_count


def run(cfg: ImageConfig) -> None:
    """Plan, skip what exists, load the model only if there is work, draw, and report."""
    validate(cfg)
    items = load_items(_items_path(cfg))
    _writable_dir(cfg.out)
    read_manifest(cfg.out)  # a corrupt manifest fails now, not after an hour of drawing
    todo, skipped = plan(items.to_dict("records"), cfg)
    if skipped:
        click.echo(f"skipped {len(skipped)} item(s) that already have an image in {cfg.out} "
                   "(--overwrite to redraw them)")
    if not todo:
        click.echo(f"nothing to generate; manifest: {cfg.out / MANIFEST}")
        return
    _preflight(cfg.model)  # a wrong --model fails in a second, not after the slow imports
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    pipe = load_pipeline(cfg.model, device)
    t1 = time.perf_counter()
    nsfw = generate(pipe, todo, cfg, device)
    t2 = time.perf_counter()
    dtype = "fp16" if device == "cuda" else "fp32"
    click.echo(f"generated {len(todo)} image(s) in {t2 - t1:.2f}s ({(t2 - t1) / len(todo):.3f} s/image; "
               f"{device} {dtype}, {cfg.steps} steps, {cfg.size}x{cfg.size}; loading with imports {t1 - t0:.2f}s) "
               f"-> {cfg.out}")
    if nsfw:
        click.echo(f"the safety checker blanked {nsfw} image(s); they are marked nsfw_filtered in the manifest")
    click.echo(f"manifest: {cfg.out / MANIFEST}")


# ---- command line ---------------------------------------------------------------------------------
@click.command("images", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help="Hugging Face hub id, or a local folder holding a diffusers Stable Diffusion model.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: CUDA when torch sees one (fp16), else CPU (fp32).")
@click.option("--limit", type=int, default=None, help="Only the first N items of the table.")
@click.option("--steps", type=int, default=ImageConfig.steps, show_default=True, help="Denoising steps.")
@click.option("--size", type=int, default=ImageConfig.size, show_default=True,
              help="Width and height in pixels, a multiple of 8.")
@click.option("--seed", type=int, default=ImageConfig.seed, show_default=True,
              help="Item i of the table is drawn with seed + i.")
@click.option("--batch-size", type=int, default=ImageConfig.batch_size, show_default=True,
              help="Prompts per pipeline call.")
@click.option("--overwrite", is_flag=True, help="Redraw items that already have an image.")
@click.option("--out", type=click.Path(path_type=Path), default=DEFAULT_OUT, show_default=True,
              help="Output folder for the PNGs and manifest.json.")
@click.option("--items", type=click.Path(path_type=Path), default=None,
              help="Items parquet  [default: $STREAMREC_DATA_DIR/recommendation_items.parquet]")
@click.pass_context
def images(ctx: click.Context, **options: Any) -> None:
    """Generate one product image per item with Stable Diffusion v1.5 (diffusers)."""
    try:
        run(ImageConfig(**options))
    except StreamrecError as exc:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(2)


def main(argv: list[str] | None = None) -> int:
    """Run the ``images`` command on ``argv`` (default: sys.argv[1:]) and return its exit code."""
    try:
        code = images.main(args=argv, prog_name="generate_images.py", standalone_mode=False)
    except click.ClickException as exc:  # a usage mistake: click's own message, exit 2
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("interrupted", err=True)
        return 130
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
