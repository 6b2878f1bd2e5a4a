#!/usr/bin/env bash
# A side environment for the Triton server of `nvidia-pytriton` (its Python-backend stub needs
# numpy < 2 and ignores PYTHONPATH, so it cannot share .venv). Created inside .venv/triton-env,
# where tests/_triton_server.py (find_tritonserver) looks; the main .venv's packages come after its own.
set -euo pipefail
cd "$(dirname "$0")/.."
main_site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
python3 -m venv .venv/triton-env
.venv/triton-env/bin/python -m pip install -q --no-deps "nvidia-pytriton==0.7.0" "numpy<2"
env_site=$(.venv/triton-env/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "import site; site.addsitedir('${main_site}')" > "${env_site}/zz_rsvl_main_venv.pth"
echo "triton environment ready: .venv/triton-env"
