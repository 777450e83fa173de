"""The `sd` generator on tiny random Stable Diffusion components built in code (diffusers-test
style), saved as a diffusers folder and loaded through fersynth's loader: every mode with 2
steps, provenance, determinism by seed, resume after a kill, domain conversion, bad input."""

from __future__ import annotations

import json
import shutil
import string

import numpy as np
import pytest
import torch

from fersynth.cli.main import main
from fersynth.data.demo import make_demo_faces
from fersynth.data.manifest import Manifest
from fersynth.errors import FersynthError
from fersynth.faces.convert import DomainSpec
from fersynth.generate import run_generation
from fersynth.generate.own import source_rows
from fersynth.generate.sd import SdGenerator, load_pipeline, plan_img2img, plan_prompts
from fersynth.labels import CLASSES


def write_tokenizer(path):
    chars = sorted(set(string.ascii_letters + string.digits + string.punctuation))
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    return vocab


def clip_config(vocab, **kw):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                          pad_token_id=vocab["<|endoftext|>"], hidden_size=32, intermediate_size=37,
                          layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2, vocab_size=len(vocab), **kw)


def tiny_sd(path):
    """get_dummy_components() for StableDiffusionPipeline, saved with save_pretrained."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    vocab = write_tokenizer(path.parent / "tok")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=2,
    )
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False)
    vae = AutoencoderKL(block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    text_encoder = CLIPTextModel(clip_config(vocab))
    tokenizer = CLIPTokenizer.from_pretrained(path.parent / "tok", model_max_length=77)
    pipe = StableDiffusionPipeline(unet=unet, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                                   tokenizer=tokenizer, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return tiny_sd(tmp_path_factory.mktemp("sd") / "tiny-sd")


@pytest.fixture(scope="module")
def real():
    d = make_demo_faces(2, seed=3, size=48)
    return Manifest.from_arrays(d.pixels, d.labels, dataset="demo")


@pytest.fixture(scope="module")
def classifier_ckpt(tmp_path_factory):
    from fersynth.models import create_model
    from fersynth.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model("fernet_s", num_classes=7, in_chans=1, img_size=48)
    path = tmp_path_factory.mktemp("clf") / "best"
    save_checkpoint(model, {"architecture": "fernet_s", "num_classes": 7, "classes": list(CLASSES[:7]),
                            "in_chans": 1, "img_size": 48}, path)
    return path.with_suffix(".safetensors")


def gen(sd_dir, **kw):
    return SdGenerator(sd_dir, steps=2, device="cpu", **kw)


def test_sample_provenance_determinism_and_domain(sd_dir, tmp_path):
    g = gen(sd_dir)
    assert g.family == "sd" and g.size == 32
    items = plan_prompts([3, 4], 2, seed=5)
    dom = DomainSpec(size=24)
    s = run_generation(g, items, tmp_path / "a", domain=dom, batch_size=3, shard_size=2, progress=False)
    assert s["written"] == 4 and s["dropped_no_face"] == 0
    m = Manifest.load(tmp_path / "a" / "manifest")
    assert m.pixels.shape == (4, 24, 24) and m.labels.tolist() == [3, 3, 4, 4]
    df = m.df
    assert (df["generator"] == "sd").all() and (df["model"] == "sd:tiny-sd").all() and (df["source"] == "synthetic").all()
    assert "AU12" in df["prompt"].iloc[0] and "AU15" in df["prompt"].iloc[2]
    p = json.loads(df["params"].iloc[0])
    assert p["negative_prompt"] and set(p["attributes"]) >= {"age", "gender", "lighting", "pose"} and p["action_units"] == [6, 12]
    again = run_generation(gen(sd_dir), items, tmp_path / "b", domain=dom, batch_size=4, progress=False)
    assert again["written"] == 4
    m2 = Manifest.load(tmp_path / "b" / "manifest")
    assert np.abs(m.pixels.astype(int) - m2.pixels).max() <= 1  # whole images; batch size may move an LSB
    other = gen(sd_dir).generate(plan_prompts([3, 4], 2, seed=6))
    assert np.abs(other.astype(int) - gen(sd_dir).generate(items)).mean() > 1
    rgb = gen(sd_dir).generate(items[:1])
    assert rgb.shape == (1, 32, 32, 3) and rgb.dtype == np.uint8


@pytest.mark.parametrize("mode", ["expand", "edit"])
def test_img2img_modes(sd_dir, real, tmp_path, mode):
    src = source_rows(real, 7, per_class=1)
    items = plan_img2img(src, mode, seed=0, params={"strength": 0.5}, k=2, targets=[5])
    g = gen(sd_dir, source=src)
    run_generation(g, items, tmp_path / mode, domain=DomainSpec(size=24), progress=False)
    m = Manifest.load(tmp_path / mode / "manifest")
    if mode == "expand":
        assert len(m) == 14 and m.labels.tolist() == [c for c in src.labels for _ in range(2)]
    else:
        assert len(m) == 6 and (m.labels == 5).all() and "surprised" in m.df["prompt"].iloc[0]
    assert m.df["parent_id"].isin(src.df["id"]).all() and (m.df["mode"] == mode).all()
    assert json.loads(m.df["params"].iloc[0])["strength"] == 0.5


def test_guided_moves_prompt_embeddings(sd_dir, classifier_ckpt):
    items = plan_prompts([0, 2], 1, seed=1, mode="guided")
    plain = gen(sd_dir).generate(plan_prompts([0, 2], 1, seed=1))
    g = gen(sd_dir, classifier=classifier_ckpt, guidance=2.0, guidance_start=0.0)
    guided = g.generate(items)
    assert guided.shape == plain.shape and not np.array_equal(guided, plain)
    assert np.array_equal(guided, gen(sd_dir, classifier=classifier_ckpt, guidance=2.0, guidance_start=0.0).generate(items))
    with pytest.raises(FersynthError, match="needs a FER classifier"):
        gen(sd_dir).generate(items)


def test_resume_after_kill(sd_dir, tmp_path):
    items = plan_prompts([0, 1, 2], 2, seed=2)  # 6 items, shards of 4: 4 + 2; batches of 2
    inner = gen(sd_dir)

    class Dies:
        name, model_id, calls = inner.name, inner.model_id, 0

        def generate(self, batch):
            Dies.calls += 1
            if Dies.calls == 2:
                raise KeyboardInterrupt
            return inner.generate(batch)

    with pytest.raises(KeyboardInterrupt):
        run_generation(Dies(), items, tmp_path / "r", shard_size=4, batch_size=2, progress=False)
    assert (tmp_path / "r" / "shards" / "shard-00000.rows.jsonl").is_file()
    assert not (tmp_path / "r" / "manifest").exists()
    s = run_generation(inner, items, tmp_path / "r", shard_size=4, batch_size=2, progress=False)
    assert s["generated_now"] == 4 and s["written"] == 6
    m = Manifest.load(tmp_path / "r" / "manifest")
    assert m.df["gen_index"].tolist() == list(range(6)) and m.df["id"].is_unique
    # the same images, pixel for pixel, as a run that was never interrupted
    run_generation(inner, items, tmp_path / "whole", shard_size=4, batch_size=2, progress=False)
    whole = Manifest.load(tmp_path / "whole" / "manifest")
    assert np.array_equal(np.asarray(m.pixels), np.asarray(whole.pixels))
    assert m.df["id"].tolist() == whole.df["id"].tolist()


def test_face_detection_drops_faceless_outputs(sd_dir, tmp_path):
    # Random tiny-model outputs contain no face: all are counted and dropped, nothing merged.
    with pytest.raises(FersynthError, match="every generated image was dropped"):
        run_generation(gen(sd_dir), plan_prompts([3], 2, seed=0), tmp_path / "f",
                       domain=DomainSpec(size=24, detect_face=True), progress=False)
    assert json.loads((tmp_path / "f" / "summary.json").read_text())["dropped_no_face"] == 2


def test_bad_input(sd_dir, tmp_path, capsys):
    with pytest.raises(FersynthError, match="no model there"):
        load_pipeline(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FersynthError, match="no model_index.json"):
        load_pipeline(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(sd_dir, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(FersynthError, match="incomplete diffusers folder.*vae"):
        load_pipeline(broken)
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"x")
    with pytest.raises(FersynthError, match="no pickled checkpoints"):
        load_pipeline(ckpt)
    single = tmp_path / "model.safetensors"
    single.write_bytes(b"x")
    with pytest.raises(FersynthError, match="needs its architecture"):
        load_pipeline(single)
    with pytest.raises(FersynthError, match="cannot load the checkpoint"):
        load_pipeline(single, arch="sd", config=sd_dir)
    with pytest.raises(FersynthError, match="unknown scheduler 'dimm'"):
        gen(sd_dir, scheduler="dimm")
    with pytest.raises(FersynthError, match="does not fit"):
        gen(sd_dir, scheduler="flow_euler")
    with pytest.raises(FersynthError, match="cannot make 30x30"):
        gen(sd_dir, size=30)

    def cli(*args):
        capsys.readouterr()
        rc = main(["generate", "sd", "--out", str(tmp_path / "o"), "--steps", "2", "-q", *args])
        return rc, capsys.readouterr().err.strip()

    rc, err = cli("--model", str(broken))
    assert rc == 2 and "incomplete diffusers folder" in err and len(err.splitlines()) == 1
    if not torch.cuda.is_available():
        rc, err = cli("--model", str(sd_dir), "--device", "cuda")
        assert rc == 2 and "no CUDA GPU" in err


def test_cli_sample_and_edit(sd_dir, tmp_path):
    from fersynth.data.demo import write_demo_folder

    assert main(["generate", "sd", "--model", str(sd_dir), "--out", str(tmp_path / "s"), "--per-class", "1",
                 "--class", "fear", "--steps", "2", "--scheduler", "euler", "--no-detect-face", "--domain-size", "16",
                 "-q"]) == 0
    m = Manifest.load(tmp_path / "s" / "manifest")
    assert m.labels.tolist() == [2] and m.pixels.shape == (1, 16, 16) and "AU20" in m.df["prompt"].iloc[0]
    data = write_demo_folder(tmp_path / "demo", 1, seed=0, test_per_class=1)
    assert main(["generate", "sd", "--model", str(sd_dir), "--mode", "edit", "--data", str(data), "--target", "happy",
                 "--out", str(tmp_path / "e"), "--steps", "2", "--no-detect-face", "-q"]) == 0
    e = Manifest.load(tmp_path / "e" / "manifest")
    assert len(e) == 6 and (e.labels == 3).all()
    test_ids = set(Manifest.load(tmp_path / "e" / "manifest").df["parent_id"])
    from fersynth.data.ingest import load_any

    real, _ = load_any(data)
    assert test_ids <= set(real.where(split="train").df["id"])  # no test image is ever a parent


def tiny_sdxl(path):
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    vocab = write_tokenizer(path.parent / "tok")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=1,
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="scaled_linear",
                                       timestep_spacing="leading")
    vae = AutoencoderKL(block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    tok = CLIPTokenizer.from_pretrained(path.parent / "tok", model_max_length=77)
    pipe = StableDiffusionXLPipeline(
        unet=unet, scheduler=scheduler, vae=vae, text_encoder=CLIPTextModel(clip_config(vocab, projection_dim=32)),
        text_encoder_2=CLIPTextModelWithProjection(clip_config(vocab, projection_dim=32)), tokenizer=tok,
        tokenizer_2=tok,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def tiny_sd3(path):
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    vocab = write_tokenizer(path.parent / "tok")
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=32, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
                                        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32,
                                        pooled_projection_dim=64, out_channels=4)
    vae = AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                        latent_channels=4, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.0609, scaling_factor=1.5035)
    tok = CLIPTokenizer.from_pretrained(path.parent / "tok", model_max_length=77)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
        text_encoder=CLIPTextModelWithProjection(clip_config(vocab, projection_dim=32)),
        text_encoder_2=CLIPTextModelWithProjection(clip_config(vocab, projection_dim=32)),
        text_encoder_3=None, tokenizer=tok, tokenizer_2=tok, tokenizer_3=None,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return path


@pytest.mark.parametrize("family", ["sdxl", "sd3"])
def test_other_families_every_mode(family, real, classifier_ckpt, tmp_path):
    path = (tiny_sdxl if family == "sdxl" else tiny_sd3)(tmp_path / f"tiny-{family}")
    src = source_rows(real, 7, per_class=1)
    g = SdGenerator(path, steps=2, source=src, classifier=classifier_ckpt, guidance=2.0, guidance_start=0.0)
    assert g.family == family and g.size == 32
    a = g.generate(plan_prompts([3], 2, seed=0))
    assert a.shape == (2, 32, 32, 3) and np.array_equal(a, g.generate(plan_prompts([3], 2, seed=0)))
    guided = g.generate(plan_prompts([3], 2, seed=0, mode="guided"))
    assert guided.shape == a.shape and not np.array_equal(guided, a)
    items = plan_img2img(src.select([0]), "edit", seed=0, params={"strength": 0.6}, targets=[3])
    s = run_generation(g, items, tmp_path / "edit", domain=DomainSpec(size=24), progress=False)
    assert s["written"] == 1 and Manifest.load(tmp_path / "edit" / "manifest").df["parent_id"].iloc[0] == src.df["id"].iloc[0]
