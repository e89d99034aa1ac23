#!/usr/bin/env bash
# VastAI provisioning script. A template names its raw URL in PROVISIONING_SCRIPT; Vast's
# entrypoint downloads it to /provisioning.sh and runs it at each start until it has succeeded
# once, its output in /var/log/portal/provisioning.log. In Jupyter launch mode Vast runs
# JupyterLab itself, so this script installs and configures only: lora_lab (with llama.cpp built
# for CUDA when nvcc is present) into the image's venv, the notebook kit into the workspace on
# /workspace, and the default models pulled in the background. See the README's pod section.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

# The shared part: beside this script in a checkout, else next to it at PROVISIONING_SCRIPT's URL.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -f $here/lora-lab-common.sh ]]; then
    # shellcheck source=lora-lab-common.sh
    source "$here/lora-lab-common.sh"
else
    url=${LORA_LAB_POD_URL:-${PROVISIONING_SCRIPT%/*}}
    common=$(mktemp)
    curl -fsSL "$url/lora-lab-common.sh" -o "$common" || {
        rm -f "$common"
        echo "lora-lab: error: cannot fetch $url/lora-lab-common.sh (set LORA_LAB_POD_URL to the URL of lora_lab's pod/ folder)" >&2
        exit 1
    }
    # shellcheck source=lora-lab-common.sh
    source "$common"
    rm -f "$common"
fi

python=/venv/main/bin/python  # vastai/pytorch's venv: its JupyterLab and kernels run there
[[ -x $python ]] || python=python3
pod_settings "$python"
provision
# Vast starts JupyterLab beside provisioning: one that was up before lora_lab was installed
# loads the extension only once it is restarted.
if [[ -n $INSTALLED_NOW ]] && "$PY" - 2>/dev/null <<'EOF'
import glob, json, os, sys
from jupyter_core.paths import jupyter_runtime_dir
for info in glob.glob(os.path.join(jupyter_runtime_dir(), "jpserver-*.json")):
    try:
        os.kill(json.load(open(info))["pid"], 0)
        sys.exit(0)
    except (OSError, ValueError, KeyError):
        pass
sys.exit(1)
EOF
then
    warn "JupyterLab started before lora_lab was installed: restart the instance once to load the LoRA Lab extension"
fi
say "ready: in JupyterLab open lora-lab/notebooks/interactive/quickstart.ipynb; model downloads log to $LOGS/models-pull.log"
