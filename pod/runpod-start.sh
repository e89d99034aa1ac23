#!/usr/bin/env bash
# RunPod start script, run by a template's Container Start Command at every start of the pod:
# installs lora_lab (with llama.cpp built for CUDA when nvcc is present) into the image's Python,
# copies the notebook kit into the workspace on the /workspace volume, pulls the default models
# in the background, starts JupyterLab on port 8888 (token: the template's JUPYTER_PASSWORD, as
# RunPod's own images do), then hands over to the image's /start.sh for SSH and the rest, which
# then starts no second JupyterLab. See the README's pod section.
#
#   LORA_LAB_JUPYTER_PORT  JupyterLab's port (default 8888)
#   LORA_LAB_HANDOFF       run at the end in this process's place (default /start.sh; where it
#                          is missing the script keeps the pod alive; none: just return)
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

# The shared part: beside this script in a checkout, else at LORA_LAB_POD_URL (the pod/ folder's URL).
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -f $here/lora-lab-common.sh ]]; then
    # shellcheck source=lora-lab-common.sh
    source "$here/lora-lab-common.sh"
else
    common=$(mktemp)
    url=${LORA_LAB_POD_URL:-}
    if [[ -z $url ]] || ! curl -fsSL "$url/lora-lab-common.sh" -o "$common"; then
        rm -f "$common"
        echo "lora-lab: error: cannot fetch lora-lab-common.sh: set LORA_LAB_POD_URL to the URL of lora_lab's pod/ folder (now: '$url')" >&2
        exit 1
    fi
    # shellcheck source=lora-lab-common.sh
    source "$common"
    rm -f "$common"
fi

PORT=${LORA_LAB_JUPYTER_PORT:-8888}
HANDOFF=${LORA_LAB_HANDOFF-/start.sh}
[[ $PORT =~ ^[0-9]+$ ]] || die "LORA_LAB_JUPYTER_PORT=$PORT is not a port number"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# JupyterLab on PORT in its own session (it outlives this script), logging to logs/jupyter.log.
# The token goes through the environment, so `ps` does not show it.
start_jupyterlab() {
    local pidfile=$STATE/jupyter.pid log=$LOGS/jupyter.log preferred=${WS#"$ROOT"/}
    if running "$pidfile" jupyter; then
        say "JupyterLab is running already (pid $(cat "$pidfile")): not starting another"
        return
    fi
    if port_open "$PORT"; then
        warn "port $PORT is taken by another program: JupyterLab not started"
        return
    fi
    [[ $preferred != "$WS" ]] || preferred=
    local cmd=("$PY" -m jupyter lab --allow-root --no-browser --ip=0.0.0.0 "--port=$PORT"
               --ServerApp.port_retries=0 "--ServerApp.root_dir=$ROOT/"
               "--FileContentsManager.preferred_dir=$preferred" "--ServerApp.allow_origin=*"
               '--ServerApp.terminado_settings={"shell_command": ["/bin/bash"]}')
    local token=${JUPYTER_PASSWORD:-${JUPYTER_TOKEN:-}}
    say "starting JupyterLab: ${cmd[*]} (log: $log)"
    if [[ -n $token ]]; then
        JUPYTER_TOKEN=$token setsid nohup "${cmd[@]}" >>"$log" 2>&1 </dev/null &
    else
        warn "no JUPYTER_PASSWORD set: JupyterLab makes a token, its login URL is in $log"
        env -u JUPYTER_TOKEN setsid nohup "${cmd[@]}" >>"$log" 2>&1 </dev/null &
    fi
    local pid=$! waited=0
    echo "$pid" >"$pidfile"
    until port_open "$PORT"; do
        if ! kill -0 "$pid" 2>/dev/null || (( waited >= 300 )); then
            tail -n 20 "$log"
            say "error: JupyterLab did not start (see $log)"
            return 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    say "JupyterLab is serving on port $PORT"
}

pod_settings python3
provision
jupyter_failed=
start_jupyterlab || jupyter_failed=1
[[ -n $jupyter_failed ]] || say "ready: in JupyterLab open workspace/lora-lab/notebooks/interactive/quickstart.ipynb; model downloads log to $LOGS/models-pull.log"

# the handoff happens even when JupyterLab failed: the pod stays up, with SSH to look into it
case $HANDOFF in
    none | "") exit "${jupyter_failed:-0}" ;;
    *)
        if [[ -f $HANDOFF ]]; then
            say "handing over to $HANDOFF (SSH and the rest of the image's services)"
            JUPYTER_PASSWORD='' exec bash "$HANDOFF"
        fi
        say "no $HANDOFF in this image: keeping the pod alive"
        exec sleep infinity ;;
esac
