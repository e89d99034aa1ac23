#!/bin/sh
# Run every benchmark in bench/ (each bench_*.py), passing the same flags to each:
#   sh bench/run_all.sh                  # the issue's sizes
#   sh bench/run_all.sh --repeats 1      # quicker
# bench_caption.py (lora_lab's caption batch against a bare create_chat_completion loop, and
# the OpenAI-compatible engine 4-in-flight against sequential) takes ~5 min on 2 idle cores.
# bench_server.py (the server extension: latency idle and during a training job, start-up
# cost) takes ~1.5 min.
# bench_train.py (tiny SD1.5 LoRA training, lora_lab uncached and cached against a bare
# diffusers-example loop) takes ~1.5 min; `.venv/bin/python bench/bench_train.py --family sdxl`
# runs it on the tiny SDXL.
# bench_train_flow.py (the same for tiny Z-Image, Flux, Chroma and Qwen-Image, each against a bare
# loop written like diffusers' DreamBooth LoRA example for the model; lora_lab with latents not
# cached came to 0.85-1.07x the bare loop, target <= 1.05x, read to within +-0.1) takes ~5-6 min;
# `--family flux` runs one family (~1.5 min).
# bench_validation.py (tiny SD1.5 trained 200 steps without validation, with it at its default
# interval, and with a validation prompt too; validation's share of training time) takes ~1.5 min.
# bench_train_lab.py (TrainLab.batch(n) on the tiny SD1.5, against the trainer building the same
# micro-batch and against one training step) takes ~1.5 min.
# bench_monitor.py (a TrainingMonitor following a job that writes 50 events/s: lag, memory,
# cost of a poller step) takes ~1 min.
# bench_widgets.py (DatasetBrowser paging a 10,000-image dataset, against reading the page's
# thumbnail bytes) takes ~2 min, most of it making the dataset.
# bench_caption_panel.py (CaptionPanel on 10,000 images: opening it, save-and-next, tag
# completion over 5,000 tags, against the DatasetBrowser + CaptionEditor pair and a plain scan)
# takes ~6 min, most of it making the dataset.
# bench_labextension.py (the JupyterLab extension: bundle size, time to a ready page with and
# without it, the sidebar with 500 jobs) takes ~2 min; it needs chromium ($CHROMIUM).
# bench_index.py (a page anywhere in a 100,000-image index, each sort and filter, against the
# old OFFSET queries; the index's writes) takes ~7 min, most of it the old queries.
# bench_doctor.py (`lora-lab doctor` in a new process against `python -c pass`) takes ~15 s.
# bench_models.py (a 200 MB model pull from a local Hub against curl of the same file) takes
# ~20 s; it needs curl.
# bench_resize.py (a rank-128 SDXL-shaped LoRA resized to 32, against a bare per-layer SVD loop)
# runs every module on a GPU; on a CPU every 20th (~25 min a repeat on 2 loaded cores, nearly all of it the floor).
# bench_tryout.py (a 3x3 LoRA tryout grid on the tiny SD1.5 through one loaded pipeline, against
# loading the pipeline for each image) takes ~1.5 min; `--family sdxl` runs it on the tiny SDXL.
# bench_ray_jobs.py (a tiny training job through the Ray executor on a local head against the
# local executor: submit overhead and event lag) takes ~3 min.
# bench_caption_actors.py (captioning through 2 Ray captioner actors against 1, on a stand-in of
# fixed latency, on a local head) takes ~1 min.
# BENCH_PYTHON picks the interpreter (default: the project's .venv).
set -e
cd "$(dirname "$0")/.."
python="${BENCH_PYTHON:-.venv/bin/python}"
for script in bench/bench_*.py; do
    echo "# $script"
    "$python" "$script" "$@"
done
