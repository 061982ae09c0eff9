"""Product images: a real (tiny, random) Stable Diffusion pipeline built here and saved to disk.

Nothing of diffusers is mocked: the test assembles a UNet, VAE, CLIP text encoder, a CLIP tokenizer
from a vocab it writes itself, and a scheduler, saves the pipeline once per module, and runs
generation/generate_images.py against that folder, offline (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from generation.generate_images import MANIFEST, build_prompt, main, sanitize_filename

pytest.importorskip("diffusers", reason="needs the images extra")
pytest.importorskip("transformers", reason="needs the images extra")
from PIL import Image  # noqa: E402  (after the skip: pillow comes with the extra)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "generation/generate_images.py"
SIZE = "64"
FAST = ["--steps", "2", "--size", SIZE]
HOSTILE = ["../../etc/passwd", "/abs/path", "a/b", "a_b", "a\\b", "..", ".", ".hidden", "con\x00trol",
           "x" * 500, "Zürich-Straße-日本", "  ", "con", "nul.txt", "../..", "a" * 64 + "/" + "b"]


@pytest.fixture(scope="module", autouse=True)
def _offline_single_thread() -> Iterator[None]:
    """No hub look-ups, even by accident; one torch thread, as a tiny model on a busy CPU
    spends ~50x longer spinning on its thread pool than computing."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("OMP_NUM_THREADS", "1")  # the same for the script's subprocesses
        yield
    torch.set_num_threads(threads)


def _tokenizer(folder: Path) -> object:
    """A byte-level BPE CLIP tokenizer: letters, a few merges; anything else maps to <|endoftext|> (unk)."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[f"{ch}</w>"] = len(vocab)
    merges = ["p h", "ph o", "pho t", "phot o</w>", "l a", "la m", "lam p</w>"]
    for token in ("ph", "pho", "phot", "photo</w>", "la", "lam", "lamp</w>"):
        vocab[token] = len(vocab)
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


def _pipeline(tmp: Path) -> object:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tokenizer = _tokenizer(tmp / "tokenizer-src")
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32)
    # four levels like SD's VAE: latents are size/8, as the real pipeline expects
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("tiny-sd")
    _pipeline(tmp).save_pretrained(tmp / "model")
    return tmp / "model"


def _items(path: Path, ids: list[str]) -> Path:
    pd.DataFrame({
        "item_id": ids,
        "product_name": [f"Acme Desk Lamp {i}" for i in range(len(ids))],
        "category": ["Home&Kitchen|Lighting|DeskLamps"] * len(ids),
        "about_product": ["A bright lamp.|Second sentence."] * len(ids),
        "rating": np.full(len(ids), 4.2),
    }).to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module")
def items(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _items(tmp_path_factory.mktemp("items") / "items.parquet", ["I000001", "I000002", "I000003"])


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory, model_dir: Path,
              items: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The script as a user runs it, once: 3 items into a fresh folder."""
    out = tmp_path_factory.mktemp("images")
    proc = _run("--model", str(model_dir), "--items", str(items), "--out", str(out), *FAST)
    return out, proc


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **env})


def _pngs(out: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}


# ---- pure helpers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("item_id", HOSTILE)
def test_sanitized_names_stay_in_the_folder(item_id: str, tmp_path: Path) -> None:
    name = sanitize_filename(item_id)
    assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*-[0-9a-f]{10}", name), name
    assert ".." not in name and len(name) <= 80
    assert (tmp_path / f"{name}.png").resolve().parent == tmp_path.resolve()


def test_sanitized_names_are_distinct_and_stable() -> None:
    names = [sanitize_filename(i) for i in HOSTILE]
    assert len(set(names)) == len(HOSTILE)  # "a/b", "a_b" and "a\\b" read alike but stay apart
    assert names == [sanitize_filename(i) for i in HOSTILE]
    assert sanitize_filename("I000001").startswith("I000001-")


def test_prompt_uses_name_leaf_category_and_first_sentence() -> None:
    row = {"product_name": "Acme\tDesk  Lamp", "category": "Home&Kitchen|Lighting|DeskLamps",
           "about_product": "A bright lamp.|Second sentence."}
    prompt = build_prompt(row)
    assert "Acme Desk Lamp (Desk Lamps)" in prompt and prompt.endswith("A bright lamp.")
    assert "Second" not in prompt
    assert build_prompt({"product_name": None, "about_product": float("nan")}).startswith(
        "professional studio product photo of a product")


# ---- the script, end to end ------------------------------------------------------------------------
def test_generates_one_png_per_item_and_a_manifest(first_run: tuple[Path, subprocess.CompletedProcess[str]],
                                                   model_dir: Path) -> None:
    out, proc = first_run
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "generated 3 image(s)" in proc.stdout
    manifest = json.loads((out / MANIFEST).read_text())
    assert sorted(manifest) == ["I000001", "I000002", "I000003"]
    for index, (item_id, entry) in enumerate(sorted(manifest.items())):
        assert entry["file"] == f"{sanitize_filename(item_id)}.png"
        assert (entry["seed"], entry["model"], entry["steps"], entry["size"]) == (42 + index, str(model_dir), 2, 64)
        assert entry["prompt"].startswith(f"professional studio product photo of Acme Desk Lamp {index}")
        with Image.open(out / entry["file"]) as image:
            image.verify()
        with Image.open(out / entry["file"]) as image:
            assert image.format == "PNG" and image.size == (64, 64)
            assert image.text["item_id"] == item_id
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, *(e["file"] for e in manifest.values())])


def test_rerun_skips_existing_without_loading_the_model(first_run: tuple[Path, subprocess.CompletedProcess[str]],
                                                        items: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = first_run
    before = _pngs(out)
    # a model that does not exist proves it is never loaded when there is nothing to do
    assert main(["--model", "/nonexistent", "--items", str(items), "--out", str(out), *FAST]) == 0
    assert "skipped 3 item(s)" in capsys.readouterr().out
    assert _pngs(out) == before


def test_overwrite_redraws_the_same_images(first_run: tuple[Path, subprocess.CompletedProcess[str]],
                                           items: Path, model_dir: Path, tmp_path: Path) -> None:
    out, _ = first_run
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in out.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
        os.utime(copy / p.name, ns=(1, 1))
    before = json.loads((copy / MANIFEST).read_text())
    # batch size 1 instead of 3: per-item seeds make the pictures independent of batching
    args = ["--model", str(model_dir), "--items", str(items), "--out", str(copy), "--batch-size", "1", *FAST]
    assert main([*args, "--overwrite"]) == 0
    after = json.loads((copy / MANIFEST).read_text())
    assert sorted(after) == sorted(before)
    for item_id, entry in after.items():
        path = copy / entry["file"]
        assert path.stat().st_mtime_ns > 1
        new, old = (np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in (path, out / entry["file"]))
        assert np.abs(new - old).max() <= 2, item_id  # same seed, same picture (batched float sums may differ)


def test_manifest_merges_across_runs(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = _items(tmp_path / "a.parquet", ["A1", "A2"])
    second = _items(tmp_path / "b.parquet", ["B1"])
    for path in (first, second):
        assert main(["--model", str(model_dir), "--items", str(path), "--out", str(out), *FAST]) == 0
    assert sorted(json.loads((out / MANIFEST).read_text())) == ["A1", "A2", "B1"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_hostile_ids_cannot_escape_or_collide(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "deep" / "out"
    items = _items(tmp_path / "hostile.parquet", HOSTILE)
    assert main(["--model", str(model_dir), "--items", str(items), "--out", str(out), "--batch-size", "8",
                 *FAST]) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert sorted(manifest) == sorted(HOSTILE)
    files = {e["file"] for e in manifest.values()}
    assert len(files) == len(HOSTILE)
    assert {p.name for p in out.iterdir()} == files | {MANIFEST}
    everything = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(p.parent == out for p in everything if p.suffix == ".png")
    assert not (tmp_path / "etc").exists() and not Path("/abs/path.png").exists()


# ---- errors: one line, no traceback ----------------------------------------------------------------
def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_missing_local_model_says_how_to_get_it(items: Path, tmp_path: Path) -> None:
    line = _one_error_line(_run("--model", "/nonexistent", "--items", str(items), "--out", str(tmp_path), *FAST))
    assert "/nonexistent" in line and "hf download" in line


def test_missing_hub_weights_offline_says_how_to_get_them(items: Path, tmp_path: Path) -> None:
    proc = _run("--items", str(items), "--out", str(tmp_path / "out"), *FAST, HF_HOME=str(tmp_path / "hf"))
    line = _one_error_line(proc)
    assert "runwayml/stable-diffusion-v1-5" in line and "HF_HUB_OFFLINE" in line and "--model" in line
    assert not list((tmp_path / "out").glob("*.png"))


def _no_unet_weights(model: Path) -> None:
    for weights in (model / "unet").glob("*.safetensors"):
        weights.unlink()


def _truncated_weights(model: Path) -> None:
    for weights in (model / "unet").glob("*.safetensors"):
        weights.write_bytes(weights.read_bytes()[:1000])


def _no_tokenizer(model: Path) -> None:
    shutil.rmtree(model / "tokenizer")


def _empty(model: Path) -> None:
    shutil.rmtree(model)
    model.mkdir()


@pytest.mark.parametrize(("damage", "expected"), [
    (_empty, "model_index.json"), (_no_unet_weights, "diffusion_pytorch_model"),
    (_truncated_weights, "header"), (_no_tokenizer, "missing tokenizer/"),
])
def test_damaged_model_folder_is_one_line(damage: Callable[[Path], None], expected: str, model_dir: Path,
                                          items: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "model"
    shutil.copytree(model_dir, broken)
    damage(broken)
    assert main(["--model", str(broken), "--items", str(items), "--out", str(tmp_path / "out"), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --model {broken}") and expected in err and err.count("\n") == 1, err


@pytest.mark.parametrize(("flags", "expected"), [
    (["--size", "100"], "--size must be a positive multiple of 8"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--items", "/nonexistent/items.parquet"], "items not found"),
])
def test_bad_flags_are_one_line(flags: list[str], expected: str, items: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--items", str(items), "--out", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1


@pytest.mark.parametrize("module", ["diffusers", "transformers", "PIL"])
def test_missing_extra_is_one_clear_line(module: str, model_dir: Path, items: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # what `import` sees when the package is not installed
    assert main(["--model", str(model_dir), "--items", str(items), "--out", str(tmp_path), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: install the images extra: pip install -e '.[images]'") and err.count("\n") == 1


def test_module_imports_neither_diffusers_nor_transformers() -> None:
    code = ("import sys, generation.generate_images; "
            "print(sorted(m for m in ('diffusers', 'transformers', 'torch') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr
