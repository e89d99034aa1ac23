"""Training the flow-matching families on their tiny models: the CLI run and its records, a
background job through the pipeline notebook, files that reload in the family's diffusers
pipeline, exact resume, and what a family refuses."""
from __future__ import annotations

import inspect
import json
import shutil
import signal
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from test_jobs import ended, wait_until
from test_notebooks import TRAIN_NB, outputs
from test_train import config
from test_train_resume import _run, _same_weights, _start, _wait_for
from test_widgets_jobs import ended as monitor_ended
from test_widgets_jobs import follow, state, tiny_form

from lora_lab import Workspace
from lora_lab.errors import LoraLabError
from lora_lab.jobdir import JobRecord, list_jobs, open_job
from lora_lab.jobdir.record import pid_alive
from lora_lab.training.base_model import detect_family, load_base_model
from lora_lab.training.config import ConfigError
from lora_lab.training.families import get_family
from lora_lab.training.lora_file import describe_lora
from lora_lab.training.presets import preset_for
from lora_lab.training.trainer import Trainer
from lora_lab.widgets import TrainingLauncher

FAMILIES = ["zimage", "flux", "chroma", "qwenimage", "flux2klein"]
STEPS = 12
# The tiny Qwen-Image's and FLUX.2's modulation gates are small (~0.1): 4 steps at 1e-3 move their
# images by ~3e-4 only, under what the reload test takes for "the LoRA did something"
LR = {"qwenimage": 1e-2, "flux2klein": 1e-2}
# what save.format = "kohya" writes, as describe_lora reads it: Flux.2's BFL names carry kohya's keys
UI_FORMAT = {"flux2klein": "kohya"}


PROMPT = {"prompt": "sks, a red circle", "guidance_scale": 0.0}
SAMPLE = {"prompts": [PROMPT["prompt"]], "guidance": PROMPT["guidance_scale"]}  # as PROMPT, encoded


def _images(pipe, **inputs):
    return pipe(**inputs or PROMPT, num_inference_steps=2, height=64, width=64, output_type="np",
                generator=torch.Generator().manual_seed(0)).images[0]


def _trained_images(trainer: Trainer):
    """The trained model's images of PROMPT, from the sample prompt the trainer encoded before
    it freed its text encoders (a run with SAMPLE)."""
    assert trainer.base.text_encoders == [None] * len(trainer.spec.text_encoders)
    trainer.models[0].eval()
    return _images(trainer.base.pipeline, **trainer.prompts[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_cli_trains_with_checkpoints_samples_and_ui_files(cli, ws, tiny_flow, tmp_path, family):
    path = config(tiny_flow, family, train={"max_steps": 4}, save={"every_n_steps": 2},
                  sample={"every_n_steps": 4, "prompts": ["sks, a red circle"], "steps": 2,
                          "guidance": 0.0}).write(tmp_path / "run.toml")
    out = json.loads(cli("train", path, "--json")[1])
    job = JobRecord(ws.jobs / out["job"])
    assert job.status()["state"] == "succeeded" and out["steps"] == 4
    events = job.events()
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [2]
    assert len(list((job.path / "samples").glob("step-*.png"))) == 1
    assert all(np.isfinite(e["loss"]) for e in events if e["type"] == "progress")
    described = describe_lora(out["output"])  # ComfyUI's layout, as `lora-lab lora inspect` reads it
    assert described["format"] == UI_FORMAT.get(family, "comfyui") and described["family"] == family
    assert described["modules"]["transformer"] > 0 and described["alphas"] == [16.0]
    assert described["ranks"] == [16]  # per projection, where BFL's layout fuses them
    assert described["metadata"]["ss_base_model_version"] == get_family(family).model_version
    assert described["metadata"]["modelspec.prediction_type"] == "flow"


@pytest.mark.parametrize("family", FAMILIES)
def test_a_background_job_trains_it_through_the_pipeline_notebook(cli, ws, tiny_flow, tmp_path, family):
    path = config(tiny_flow, family, train={"max_steps": 2},
                  sample={"every_n_steps": 2, "prompts": ["sks, a red circle"], "steps": 2}
                  ).write(tmp_path / "run.toml")
    out = json.loads(cli("jobs", "submit", "train", path, "--set", f"save.name={family}-job",
                         "--notebook", TRAIN_NB, "--json")[1])
    job = open_job(out["id"], ws)
    assert wait_until(job, ended)["state"] == "succeeded", job.log_path.read_text()
    wait_until(job, lambda v: not pid_alive(v["pgid"]))  # papermill saves the notebook last
    markdown = "\n".join(outputs(nbformat.read(job.path / "run.ipynb", as_version=4), "text/markdown"))
    lora = ws.loras / f"{family}-job.safetensors"
    assert f"| LoRA | `{lora}`" in markdown and "**step 2**: sks, a red circle" in markdown
    assert describe_lora(lora)["family"] == family


@pytest.mark.parametrize("family", FAMILIES)
def test_the_launcher_takes_its_preset_and_trains_it(ws, tiny_flow, tiny_models, family):
    launcher = TrainingLauncher(str(tiny_flow["samples"]), str(tiny_models["sd15"]), workspace=ws,
                                autostart=False)
    assert launcher.preset.value == "sd15"
    launcher.fields["model.base"].value = str(tiny_flow[family])  # picked: its family's preset follows
    assert launcher.preset.value == preset_for(family) != "sd15"
    assert launcher.fields["model.family"].value == family
    tiny_form(launcher, **{"sample.every_n_steps": 0})
    assert launcher.problems == {}, launcher.problems
    launcher.train_button.click()
    monitor = follow(launcher.monitor, monitor_ended)
    assert state(monitor) == "succeeded", monitor.job.log_path.read_text()
    assert describe_lora(ws.loras / "from_panel.safetensors")["family"] == family


def _diffusers_reads_tiny_bfl(monkeypatch, pipe):
    """diffusers' converter of BFL-named Flux LoRAs splits a single block's linear1 at FLUX.1's
    sizes, hard-coded (dims=[3072, 3072, 3072, 12288]); the tiny model's are smaller, so its
    own code runs with the tiny sizes in their place (test_bfl_names checks the real sizes)."""
    from diffusers.loaders import lora_conversion_utils, lora_pipeline

    block = pipe.transformer.single_transformer_blocks[0]
    hidden, mlp = block.attn.to_q.out_features, block.proj_mlp.out_features
    source = inspect.getsource(lora_conversion_utils._convert_kohya_flux_lora_to_diffusers)
    assert source.count("dims=[3072, 3072, 3072, 12288]") == 1
    scope = dict(vars(lora_conversion_utils))
    exec(compile(source.replace("dims=[3072, 3072, 3072, 12288]", f"dims=[{hidden}] * 3 + [{mlp}]"),
                 lora_conversion_utils.__file__, "exec"), scope)
    monkeypatch.setattr(lora_pipeline, "_convert_kohya_flux_lora_to_diffusers",
                        scope["_convert_kohya_flux_lora_to_diffusers"])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_the_saved_lora_reproduces_the_trained_model(ws, tiny_flow, monkeypatch, family, fmt):
    cfg = config(tiny_flow, family, network={"rank": 4, "alpha": 2, "targets": "attn_mlp"},
                 save={"format": fmt}, train={"lr": LR.get(family, 1e-3)}, sample=SAMPLE)
    trainer = Trainer(cfg, JobRecord.create("train", {}, ws), ws)
    result = trainer.run()
    trained = _trained_images(trainer)
    fresh = load_base_model(str(tiny_flow[family]), family).pipeline
    untouched = _images(fresh)
    if fmt == "kohya" and family in ("flux", "chroma"):
        _diffusers_reads_tiny_bfl(monkeypatch, fresh)
    fresh.load_lora_weights(str(result.output))
    assert np.allclose(_images(fresh), trained, atol=1e-5)
    assert not np.allclose(untouched, trained, atol=1e-3)  # the LoRA did something


@pytest.mark.parametrize("family", FAMILIES)
def test_kill_9_then_resume_gives_the_same_lora(ws, tiny_flow, tmp_path, family):
    cfg = config(tiny_flow, family, train={"max_steps": STEPS, "scheduler": "cosine",
                                           "warmup_steps": 3, "batch_size": 2},
                 network={"rank": 4, "dropout": 0.1}, dataset={"flip": True, "caption_dropout": 0.2},
                 save={"every_n_steps": 4}).write(tmp_path / "run.toml")
    elsewhere = Workspace(tmp_path / "reference")  # its events must not look like the run's
    reference = load_file(json.loads(_run(elsewhere, "train", cfg, "--json").stdout)["output"])
    proc = _start(ws, "train", cfg)
    job = _wait_for(ws, proc, "checkpoint", 4)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(e["step"] for e in job.events() if e["type"] == "progress") < STEPS
    out = json.loads(_run(ws, "train", "--resume", job.id, "--json").stdout)
    assert out["steps"] == STEPS
    _same_weights(load_file(out["output"]), reference)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("network, message", [
    ({"train_text_encoder": True}, "text encoder is too large to train"),
    ({"targets": "locon"}, "has none, use attn or attn_mlp"),
    ({"dora": True}, "DoRA is saved for SD1.5 and SDXL only"),
])
def test_what_a_family_refuses_before_a_job_exists(cli, ws, tiny_flow, tmp_path, network, message, family):
    cfg = config(tiny_flow, family, network=network)
    with pytest.raises(ConfigError, match=message):
        cfg.resolved(family)
    assert message in cli.fails("train", cfg.write(tmp_path / "run.toml"))
    assert not list_jobs(ws)


def test_a_negative_prompt_for_a_pipeline_without_one_is_refused(cli, ws, tiny_flow, tmp_path):
    path = config(tiny_flow, "flux2klein", sample={"negative": "blurry"}).write(tmp_path / "run.toml")
    said = cli.fails("jobs", "submit", "train", path)
    assert "sample.negative: FLUX.2 [klein]'s pipeline takes no negative prompt" in said
    assert not list_jobs(ws)
    config(tiny_flow, "chroma", sample={"negative": "blurry"}).resolved("chroma")  # Chroma's takes one


@pytest.mark.parametrize("family", FAMILIES)
def test_a_base_folder_with_a_part_missing_is_refused_saying_which(cli, ws, tiny_flow, tmp_path, family):
    base = Path(shutil.copytree(tiny_flow[family], tmp_path / "cut-short"))
    shutil.rmtree(base / "transformer")
    path = config(tiny_flow, family, model={"base": str(base)}).write(tmp_path / "run.toml")
    said = cli.fails("jobs", "submit", "train", path)
    assert f"model.base: {base} lacks transformer/ that its model_index.json lists" in said
    assert not list_jobs(ws)
    shutil.copytree(tiny_flow[family] / "transformer", base / "transformer")
    (base / "text_encoder" / "model.safetensors").unlink()  # its folder there, the weights not
    said = cli("train", path, ok=False)[2].strip().splitlines()[-1]
    assert said.startswith(f"lora-lab: error: model.base: cannot load {base}: Error no file named "
                           "model.safetensors") and said.endswith(f"{base / 'text_encoder'}.")


@pytest.mark.parametrize("family", FAMILIES)
def test_buckets_the_transformer_cannot_take_are_refused(ws, tiny_flow, family):
    cfg = config(tiny_flow, family, dataset={"resolution": 128, "max_bucket": 256, "bucket_step": 8})
    with pytest.raises(Exception, match="sides must be multiples of 16; set dataset.bucket_step"):
        Trainer(cfg, JobRecord.create("train", {}, ws), ws).run()


@pytest.mark.parametrize("base, family", [
    ("black-forest-labs/FLUX.1-dev", "flux"), ("black-forest-labs/FLUX.1-schnell", "flux"),
    ("lodestones/Chroma1-HD", "chroma"), ("Tongyi-MAI/Z-Image-Turbo", "zimage"),
    ("black-forest-labs/FLUX.2-klein-base-4B", "flux2klein"), ("black-forest-labs/FLUX.2-klein-9B", "flux2klein"),
])
def test_the_family_is_read_from_the_folder_or_the_hub_id(tiny_flow, base, family):
    assert detect_family(str(tiny_flow[family])) == family
    assert detect_family(base) == family


def test_a_flux_single_file_is_refused_with_where_to_get_one(tmp_path):
    file = tmp_path / "flux1-dev.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(1)}, file)
    with pytest.raises(LoraLabError, match="FLUX.1 or Chroma checkpoint; lora_lab reads those from a diffusers"):
        detect_family(str(file))


@pytest.fixture
def tiny_schnell(tiny_flow, tmp_path) -> Path:
    """The tiny FLUX.1 as [schnell]: no guidance embedding (its weights left unused)."""
    folder = Path(shutil.copytree(tiny_flow["flux"], tmp_path / "schnell"))
    config_file = folder / "transformer" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "guidance_embeds": False}))
    return folder


def test_schnell_trains_without_a_guidance_input(ws, tiny_flow, tiny_schnell, monkeypatch):
    cfg = config({**tiny_flow, "flux": tiny_schnell}, "flux", network={"rank": 4, "targets": "attn_mlp"},
                 sample=SAMPLE)
    trainer = Trainer(cfg, JobRecord.create("train", {}, ws), ws)
    result = trainer.run()
    assert trainer.family == "flux" and trainer.objective.guidance is None
    trained = _trained_images(trainer)
    fresh = load_base_model(str(tiny_schnell), "flux").pipeline
    assert not fresh.transformer.config.guidance_embeds
    _diffusers_reads_tiny_bfl(monkeypatch, fresh)
    fresh.load_lora_weights(str(result.output))
    assert np.allclose(_images(fresh), trained, atol=1e-5)


@pytest.mark.parametrize("base, variant", [("Qwen/Qwen-Image-Edit-2509", "Qwen-Image edit"),
                                           ("black-forest-labs/FLUX.1-Kontext-dev", "FLUX.1 kontext"),
                                           ("black-forest-labs/FLUX.1-Fill-dev", "FLUX.1 fill")])
def test_an_image_editing_variant_on_the_hub_is_refused(base, variant):
    with pytest.raises(LoraLabError, match=f"reads as a {variant} model, which turns an input image"):
        detect_family(base)


def test_qwenimage_is_detected_and_read_from_folders_and_hub_ids_only(tiny_flow, tmp_path):
    assert detect_family(str(tiny_flow["qwenimage"])) == "qwenimage"
    assert detect_family("Qwen/Qwen-Image") == "qwenimage"
    vae = load_base_model(str(tiny_flow["qwenimage"]), "qwenimage", vae=str(tiny_flow["qwenimage"] / "vae"))
    assert type(vae.pipeline.vae).__name__ == "AutoencoderKLQwenImage"  # model.vae: the family's VAE class
    single = tmp_path / "qwen_image_bf16.safetensors"
    single.write_bytes(b"")
    with pytest.raises(LoraLabError, match="a Qwen-Image model is read from a diffusers folder or a Hub id"):
        load_base_model(str(single), "qwenimage")


def test_qwenimage_latents_and_every_adapted_module_learn(ws, tiny_flow):
    """Qwen-Image's video VAE takes one frame and gives 4-D latents (cached like any other);
    in its last block the text stream's output is unused, and what only it reads is not
    adapted, so every LoRA weight gets a gradient from a batch of unequal captions."""
    cfg = config(tiny_flow, "qwenimage", network={"rank": 4, "targets": "attn_mlp"},
                 train={"batch_size": 2})
    trainer = Trainer(cfg, JobRecord.create("train", {}, ws), ws)
    trainer.load_data()
    trainer.load_model()
    trainer.cache()
    image, bucket = trainer.images[0], trainer.buckets[0]
    cached = trainer.latents.params(image, bucket, False)
    assert cached.shape == (32, bucket[1] // 8, bucket[0] // 8)
    assert torch.allclose(cached, trainer.latents.encode([image], bucket, [False])[0].cpu())
    last = len(trainer.base.denoiser.transformer_blocks) - 1
    adapted = {n.split(".lora_")[0] for n, _ in trainer.base.denoiser.named_parameters() if ".lora_A." in n}
    assert f"transformer_blocks.{last}.attn.to_add_out" not in adapted
    assert f"transformer_blocks.{last}.attn.add_k_proj" in adapted and "transformer_blocks.0.txt_mlp.net.2" in adapted
    samples = trainer.plan.samples(0, trainer.rules)
    assert len({len(trainer.text_cache.get(s.caption)[0][0]) for s in samples}) == 2, "captions of unequal length"
    trainer.micro_batch_loss(0).backward()
    params = {n: p for n, p in trainer.base.denoiser.named_parameters() if p.requires_grad}
    assert params and all(p.grad is not None for p in params.values())
    assert [n for n, p in params.items() if "lora_B" in n and not p.grad.abs().sum()] == []


def test_a_lora_of_one_family_does_not_load_onto_another(ws, tiny_flow, tiny_models):
    cfg = config(tiny_flow, "zimage", network={"rank": 4})
    output = Trainer(cfg, JobRecord.create("train", {}, ws), ws).run().output
    assert describe_lora(output)["family"] == "zimage"
    sd15 = load_base_model(str(tiny_models["sd15"]), "sd15").pipeline
    with pytest.raises(ValueError, match="Invalid LoRA checkpoint"):
        sd15.load_lora_weights(str(output))


def test_turbo_trains_through_a_training_adapter_and_samples_without_it(ws, tiny_flow, tmp_path):
    """ai-toolkit's Z-Image Turbo recipe: a de-distilling LoRA merged in for training, taken out
    (applied at -1) for the samples, so they show the new LoRA on the plain model."""
    adapter = Trainer(config(tiny_flow, "zimage", network={"rank": 4}, save={"name": "dedistill"}),
                      JobRecord.create("train", {}, ws), ws).run().output
    sample = {"every_n_steps": 4, "prompts": ["sks, a red circle"], "steps": 2, "guidance": 0.0}
    cfg = config(tiny_flow, "zimage", model={"adapter": str(adapter)}, network={"rank": 4},
                 sample=sample)
    trainer = Trainer(cfg, JobRecord.create("train", {}, ws), ws)
    result = trainer.run()
    fresh = load_base_model(str(tiny_flow["zimage"]), "zimage").pipeline
    merged = {n.replace(".base_layer", ""): p for n, p in trainer.base.denoiser.named_parameters()}
    assert any(not torch.equal(p, merged[n]) for n, p in fresh.transformer.named_parameters()
               if n in merged), "the adapter was not merged in for training"
    fresh.load_lora_weights(str(result.output))  # the new LoRA alone, on the plain model
    expected = np.asarray(fresh("sks, a red circle", num_inference_steps=2, guidance_scale=0.0,
                                width=64, height=64, generator=torch.Generator().manual_seed(0)).images[0])
    shown = np.asarray(Image.open(trainer.job.path / "samples" / "step-000004-0.png"))
    assert np.abs(shown.astype(int) - expected.astype(int)).max() <= 2


@pytest.mark.parametrize("adapter, message", [
    ("missing.safetensors", "model.adapter: LoRA file not found"),
    ("sd15-lora", "is a sd15 LoRA; the base model is zimage"),
])
def test_a_training_adapter_that_does_not_fit_is_refused(cli, ws, tiny_flow, tiny_models, tmp_path,
                                                        adapter, message):
    if adapter == "sd15-lora":
        adapter = Trainer(config(tiny_models, "sd15"), JobRecord.create("train", {}, ws), ws).run().output
        for job in list_jobs(ws):
            job.path.rename(tmp_path / job.id)  # only the refused run's record would count
    cfg = config(tiny_flow, "zimage", model={"adapter": str(tmp_path / adapter)})
    assert message in cli.fails("train", cfg.write(tmp_path / "run.toml"))
    assert not list_jobs(ws)


def test_qwenimage_samples_with_true_cfg(ws, tiny_flow):
    """sample.guidance is Qwen-Image's true CFG, run with the model card's negative prompt " "."""
    sample = {"every_n_steps": 2, "prompts": ["sks, a red circle"], "steps": 2, "guidance": 4.0}
    cfg = config(tiny_flow, "qwenimage", network={"rank": 4}, train={"max_steps": 2}, sample=sample)
    trainer = Trainer(cfg, JobRecord.create("train", {}, ws), ws)
    fresh = load_base_model(str(tiny_flow["qwenimage"]), "qwenimage").pipeline
    fresh.load_lora_weights(str(trainer.run().output))
    expected = np.asarray(fresh("sks, a red circle", num_inference_steps=2, true_cfg_scale=4.0,
                                negative_prompt=" ", width=64, height=64,
                                generator=torch.Generator().manual_seed(0)).images[0])
    shown = np.asarray(Image.open(trainer.job.path / "samples" / "step-000002-0.png"))
    assert np.abs(shown.astype(int) - expected.astype(int)).max() <= 2
