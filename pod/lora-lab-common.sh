# shellcheck shell=bash
# What the VastAI provisioning script and the RunPod start script share; they source this file.
# Every setting comes from the environment (the pod template's variables):
#
#   LORA_LAB_SOURCE      pypi (default), a pip URL (git+https://github.com/OWNER/REPO@REF), a
#                        local checkout or a built wheel
#   LORA_LAB_VERSION     the version to install (default: any; an installed lora_lab is kept)
#   LORA_LAB_BASE_MODEL  the base model pulled beside the caption model: a catalogue name or a
#                        Hub repo id (default sdxl; none pulls no base model)
#   LORA_LAB_PYTHON      the Python that runs JupyterLab and its kernels
#   LORA_LAB_POD_ROOT    a prefix for every path the scripts touch (tests run them in a temp root)
#
# Nothing is done twice on a restarted pod: an installed lora_lab of the wanted version and a
# llama.cpp build that suits the box are kept, models already pulled are not pulled again, and
# notebooks the user edited are kept.

say() { printf '[lora-lab %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
warn() { say "warning: $*"; }
die() { say "error: $*" >&2; exit 1; }

# The settings, checked before anything is written: a refused start leaves nothing behind.
pod_settings() {
    local default_python=$1
    ROOT=${LORA_LAB_POD_ROOT:-}
    VOLUME=$ROOT/workspace
    export LORA_LAB_HOME=${LORA_LAB_HOME:-$VOLUME/lora-lab}
    WS=$LORA_LAB_HOME
    LOGS=$WS/logs
    STATE=$WS/.pod  # markers and pid files, kept on the volume with what they describe
    CACHE=$VOLUME/.cache/lora-lab-pod  # pip's downloads and built wheels: a restart reuses them
    SOURCE=${LORA_LAB_SOURCE:-pypi}
    BASE_MODEL=${LORA_LAB_BASE_MODEL:-sdxl}
    PY=$(command -v "${LORA_LAB_PYTHON:-$default_python}") \
        || die "no Python at ${LORA_LAB_PYTHON:-$default_python}: set LORA_LAB_PYTHON to the Python that runs JupyterLab"
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "lora_lab needs Python >= 3.11 and $PY is $("$PY" -V 2>&1): pick an image with Python 3.11 or newer"
    case $SOURCE in
        pypi) WANTED=${LORA_LAB_VERSION:-}; SPEC=lora-lab${WANTED:+==$WANTED} ;;
        *://*) WANTED=${LORA_LAB_VERSION:-}; SPEC="lora-lab @ $SOURCE" ;;
        *.whl)
            [[ -f $SOURCE ]] || die "LORA_LAB_SOURCE=$SOURCE: no such wheel"
            WANTED=${SOURCE##*/}; WANTED=${WANTED#lora_lab-}; WANTED=${WANTED%%-*}; SPEC=$(realpath "$SOURCE") ;;
        *)
            [[ -f $SOURCE/pyproject.toml ]] \
                || die "LORA_LAB_SOURCE=$SOURCE is not pypi, a URL, a wheel or a checkout with a pyproject.toml"
            SOURCE=$(cd "$SOURCE" && pwd)
            WANTED=$("$PY" -c 'import sys, tomllib
print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$SOURCE/pyproject.toml")
            SPEC=$SOURCE ;;
    esac
}

# From here on the pod's volume is written: the workspace, its logs folder, and this run's log.
start_log() {
    mkdir -p "$LOGS" "$STATE"
    exec > >(tee -a "$LOGS/pod-setup.log") 2>&1
    say "setting up lora_lab: workspace $WS, Python $PY ($("$PY" -V 2>&1))"
    mountpoint -q "$VOLUME" 2>/dev/null \
        || say "note: $VOLUME is not a mounted volume here (on RunPod, a pod without a volume loses it at restart)"
}

# What the Python has, as key=value lines read into PROBE: torch, lora_lab (the version
# when importable), llama (missing, cpu, gpu or broken), jupyterlab, extension (enabled or not).
probe() {
    declare -gA PROBE=()
    local key value
    while IFS='=' read -r key value; do PROBE[$key]=$value; done < <("$PY" - <<'EOF' 2>/dev/null
import importlib.metadata as md
import importlib.util


def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return ""


found = {"torch": version("torch"), "jupyterlab": version("jupyterlab"), "lora_lab": "",
         "llama": "missing", "extension": "missing"}
try:
    import lora_lab  # noqa: F401  (importable, not only listed)
    found["lora_lab"] = version("lora-lab")
    from jupyter_core.paths import jupyter_config_path
    from jupyter_server.extension.config import ExtensionConfigManager

    import lora_lab.server_ext  # noqa: F401
    enabled = ExtensionConfigManager(read_config_path=jupyter_config_path()).enabled("lora_lab.server_ext")
    found["extension"] = "enabled" if enabled else "disabled"
except Exception:
    pass
if importlib.util.find_spec("llama_cpp"):
    try:
        import llama_cpp
        found["llama"] = "gpu" if llama_cpp.llama_supports_gpu_offload() else "cpu"
    except Exception:
        found["llama"] = "broken"
for key, value in found.items():
    print(f"{key}={value}")
EOF
)
}

# pip, keeping the image's CUDA torch: its torch, torchvision, torchaudio, triton and nvidia-*
# versions go into a constraints file, so a dependency that wants another torch makes pip stop
# with a conflict instead of replacing it. The variant (cuda or cpu) keeps pip's cache of
# built wheels apart: a cached CPU llama.cpp wheel is never reused for a CUDA build.
pip_install() {
    local variant=$1
    shift
    "$PY" -m pip --version >/dev/null 2>&1 || "$PY" -m ensurepip --upgrade
    mkdir -p "$CACHE"
    "$PY" - >"$CACHE/constraints.txt" <<'EOF'
import importlib.metadata as md
import re

seen = set()
for dist in md.distributions():
    name = dist.metadata["Name"] or ""
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key not in seen and (key in ("torch", "torchvision", "torchaudio", "triton") or key.startswith("nvidia-")):
        seen.add(key)
        print(f"{name}=={dist.version}")
EOF
    PIP_CACHE_DIR=$CACHE/pip-$variant "$PY" -m pip install --disable-pip-version-check --progress-bar off \
        -c "$CACHE/constraints.txt" "$@"
}

# lora_lab itself, unless the wanted version (any, when none is asked for) is importable already.
# shellcheck disable=SC2034  # INSTALLED_NOW is read by vastai-provisioning.sh
install_lora_lab() {
    INSTALLED_NOW=
    if [[ -n ${PROBE[lora_lab]:-} && ( -z $WANTED || ${PROBE[lora_lab]:-} == "$WANTED" ) ]]; then
        say "lora_lab ${PROBE[lora_lab]:-} is installed: kept"
        return
    fi
    local torch_before=${PROBE[torch]:-}
    [[ -n $torch_before ]] || warn "this Python has no torch: pip installs PyPI's build"
    say "installing lora_lab ${WANTED:-(newest)} from $SPEC${torch_before:+, keeping torch $torch_before}"
    pip_install common "$SPEC"
    probe
    [[ -n ${PROBE[lora_lab]:-} ]] || die "lora_lab did not install into $PY (see the pip output above)"
    [[ -z $torch_before || ${PROBE[torch]:-} == "$torch_before" ]] \
        || die "torch changed from $torch_before to ${PROBE[torch]:-}: this must not happen, please report it"
    INSTALLED_NOW=1
    say "lora_lab ${PROBE[lora_lab]:-} installed"
}

# llama-cpp-python for captioning, built for CUDA when nvcc is on PATH (a CPU build captions a
# 7B model at minutes per image). A failed build is a warning: training does not need it, and
# `lora-lab doctor` shows the state and the command that fixes it.
ensure_llama() {
    local state=${PROBE[llama]:-} variant=cpu want=cpu requirement
    command -v nvcc >/dev/null && want=gpu variant=cuda
    if [[ $state == gpu || ( $state == cpu && $want == cpu ) ]]; then
        say "llama-cpp-python is installed ($state build): kept"
        return
    fi
    requirement=$("$PY" -c 'import importlib.metadata as md
print(next((r.split(";")[0].strip() for r in md.requires("lora-lab") or () if r.startswith("llama-cpp-python")), "llama-cpp-python"))')
    local args=("$requirement")
    if [[ $state == cpu || $state == broken ]]; then
        args=(--force-reinstall --no-deps "llama-cpp-python==$("$PY" -c 'import importlib.metadata as md; print(md.version("llama-cpp-python"))')")
    fi
    if [[ $variant == cuda ]]; then
        say "building llama-cpp-python with CUDA (nvcc found; this compiles llama.cpp, about 10-20 minutes the first time)"
        CMAKE_ARGS=${CMAKE_ARGS:--DGGML_CUDA=on} CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
            pip_install cuda --no-binary llama-cpp-python "${args[@]}" \
            || warn "the CUDA build of llama-cpp-python failed (see above)"
    else
        say "installing llama-cpp-python for the CPU (no nvcc on PATH: captioning with a 7B model will be slow)"
        pip_install cpu "${args[@]}" || warn "llama-cpp-python did not install (see above)"
    fi
    probe
    case ${PROBE[llama]:-} in
        missing) warn "llama-cpp-python is not installed: captioning is unavailable" ;;
        *) say "llama-cpp-python: ${PROBE[llama]:-} build" ;;
    esac
}

# JupyterLab in the same Python, with the lora_lab server extension enabled (the package's
# jupyter-config enables it on install; an older or partial install is enabled here).
ensure_jupyter() {
    if [[ -z ${PROBE[jupyterlab]:-} ]]; then
        say "installing JupyterLab into $PY"
        pip_install common jupyterlab
        probe
    fi
    if [[ ${PROBE[extension]:-} != enabled ]]; then
        say "enabling the lora_lab server extension"
        "$PY" -m jupyter server extension enable --sys-prefix lora_lab.server_ext
        probe
        [[ ${PROBE[extension]:-} == enabled ]] || die "the lora_lab server extension could not be enabled in $PY"
    fi
    say "JupyterLab ${PROBE[jupyterlab]:-} with the lora_lab server extension enabled"
}

# `lora-lab` of this Python (pip puts it in the interpreter's scripts folder).
lora_lab_cli() {
    CLI=$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/lora-lab
    [[ -x $CLI ]] || CLI=$(command -v lora-lab) || die "no lora-lab command for $PY"
}

# The notebook kit in the workspace: new ones copied, untouched ones updated, edited ones kept.
copy_notebooks() {
    "$CLI" notebooks
}

# True when PIDFILE names a live process whose command line contains PATTERN.
running() {
    local pid cmdline
    pid=$(cat "$1" 2>/dev/null) && [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null \
        && cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) && [[ $cmdline == *"$2"* ]]
}

# The caption model and the base model, pulled in the background (JupyterLab does not wait), one
# `lora-lab models pull NAME` after the other, into logs/models-pull.log. .pod/models-pull.done
# lists what was pulled: while it matches, a restart pulls nothing. A pull that failed (offline, a
# gated model without HF_TOKEN, a full disk) is named in .pod/models-pull.failed; the next run of
# the script tries it again, resuming the bytes it has.
start_model_pull() {
    local names=(caption) done=$STATE/models-pull.done pidfile=$STATE/models-pull.pid
    [[ $BASE_MODEL == none ]] || names+=("$BASE_MODEL")
    if [[ -f $done && $(cat "$done") == "${names[*]}" ]]; then
        say "models already pulled: ${names[*]}"
        return
    fi
    if running "$pidfile" lora-lab-models-pull; then
        say "a model pull is running already (pid $(cat "$pidfile")): not starting another"
        return
    fi
    rm -f "$done" "$STATE/models-pull.failed"
    say "pulling ${names[*]} in the background with lora-lab models pull (log: $LOGS/models-pull.log)"
    # shellcheck disable=SC2016  # the job's own script: it expands its arguments itself
    setsid bash -c '
        cli=$1 state=$2
        shift 2
        echo $$ >"$state/models-pull.pid"
        failed=()
        for name in "$@"; do
            printf "== %s lora-lab models pull %s\n" "$(date -u +%FT%TZ)" "$name"
            "$cli" models pull "$name" || failed+=("$name")
        done
        if ((${#failed[@]} == 0)); then
            printf "%s\n" "$*" >"$state/models-pull.done.tmp" && mv "$state/models-pull.done.tmp" "$state/models-pull.done"
            echo "== done: $*"
        else
            printf "%s\n" "${failed[*]}" >"$state/models-pull.failed"
            echo "== not pulled: ${failed[*]}; run lora-lab models pull NAME again (it resumes where it stopped)"
        fi
        rm -f "$state/models-pull.pid"
    ' lora-lab-models-pull "$CLI" "$STATE" "${names[@]}" >>"$LOGS/models-pull.log" 2>&1 </dev/null &
}

# What both providers do at every start, in order; each step skips what the volume already holds.
provision() {
    start_log
    probe
    install_lora_lab
    ensure_llama
    ensure_jupyter
    lora_lab_cli
    copy_notebooks
    start_model_pull
}
