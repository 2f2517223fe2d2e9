#!/usr/bin/env bash
# The one GPU script: on a bare GPU machine that has Python 3.12 + torch (CUDA) but no internet,
# install what is missing (CuTe DSL, pytest, pytest-benchmark), run the GPU tests and the kernel
# benchmarks, and write bench/results/<date>-<gpu>.json (also copied to $OUT when set).
#
# The DSL wheels are ~96 MB (libs-cu12 alone 92 MB) but one device command takes at most 64 MiB
# of files, so they travel in parts over consecutive commands while the machine stays up:
#
#   here (internet):  scripts/gpu_suite.sh prepare          # pip download cp312 wheels, tar, split
#                     -> build/gpu_wheels/part1 .. partN (each < 55 MiB; build/ is gitignored)
#   device command 1: scripts/gpu_suite.sh stage build/gpu_wheels/part1      carry=["build/gpu_wheels/part1"]
#   device command 2: scripts/gpu_suite.sh stage build/gpu_wheels/part2 && scripts/gpu_suite.sh run
#                                                                            carry=["build/gpu_wheels/part2"]
#   (prepare prints the exact commands; parts are reassembled in $FUSEDKAT_GPU_STAGE, default
#   /tmp/fusedkat_gpu_stage, and checked against sha256 before installing.)
#
# Subcommands:
#   prepare [MiB]   download + split (default part size 55 MiB)
#   stage DIR       copy one part into the stage dir (device)
#   install         reassemble + pip install --target into the stage dir, only what is missing
#   run             install (if needed), GPU tests, kernel benchmarks, results JSON
#
# Environment: PYTHON (default: python3), FUSEDKAT_GPU_STAGE, OUT (device tool's output dir).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STAGE="${FUSEDKAT_GPU_STAGE:-/tmp/fusedkat_gpu_stage}"
PY="${PYTHON:-python3}"
WHEELS_DIR="$REPO/build/gpu_wheels"
PKGS=("nvidia-cutlass-dsl==4.8.1" "pytest" "pytest-benchmark")
# `import fusedkat` registers the timm models, so the tests need timm's stack too.  Installed with
# --no-deps and only when `import fusedkat` fails (torchvision only if missing and torch is 2.11,
# the version the GPU machines carry; its wheel must match torch exactly).
EXTRA_NODEPS=("timm==1.0.31" "torchvision==0.26.0")
EXTRA=("huggingface_hub" "safetensors" "pyyaml" "numpy" "tqdm")
SITE="$STAGE/site"

log() { echo "[gpu_suite $(date -u +%H:%M:%S)] $*" >&2; }

prepare() {
  local mib="${1:-55}"
  local pip="$REPO/.venv/bin/pip"; [ -x "$pip" ] || pip="pip"
  rm -rf "$WHEELS_DIR"; mkdir -p "$WHEELS_DIR/all"
  log "downloading cp312 manylinux wheels: ${PKGS[*]}"
  "$pip" download --quiet --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$WHEELS_DIR/all" "${PKGS[@]}"
  local plat=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --platform manylinux_2_28_x86_64
              --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
  "$pip" download --quiet "${plat[@]}" -d "$WHEELS_DIR/all/extra" "${EXTRA[@]}"
  "$pip" download --quiet "${plat[@]}" --no-deps -d "$WHEELS_DIR/all/extra" "${EXTRA_NODEPS[@]}"
  (cd "$WHEELS_DIR" && tar -cf wheels.tar -C all . && split -b "${mib}m" -d -a 2 wheels.tar wheels.tar.part-)
  (cd "$WHEELS_DIR" && sha256sum wheels.tar > wheels.tar.sha256)
  local i=0
  for chunk in "$WHEELS_DIR"/wheels.tar.part-*; do
    i=$((i + 1)); mkdir -p "$WHEELS_DIR/part$i"; mv "$chunk" "$WHEELS_DIR/part$i/"
  done
  cp "$WHEELS_DIR/wheels.tar.sha256" "$WHEELS_DIR/part$i/"
  rm -f "$WHEELS_DIR/wheels.tar"
  du -sh "$WHEELS_DIR"/part* >&2
  echo "Device tool commands (one per part, the last one also runs the suite):"
  for j in $(seq 1 "$i"); do
    local cmd="scripts/gpu_suite.sh stage build/gpu_wheels/part$j"
    [ "$j" = "$i" ] && cmd="$cmd && scripts/gpu_suite.sh run"
    echo "  run(command=\"$cmd\", carry=[\"build/gpu_wheels/part$j\"])"
  done
}

stage() {
  local dir="$1"
  [ -d "$dir" ] || { log "no such part dir: $dir"; exit 2; }
  mkdir -p "$STAGE/parts"; cp "$dir"/* "$STAGE/parts/"
  log "staged $(ls "$dir" | tr '\n' ' ') -> $STAGE/parts ($(du -sh "$STAGE/parts" | cut -f1) so far)"
}

pyenv() {  # PYTHONPATH for packages installed with --target (the DSL's .pth is not processed there)
  export PYTHONPATH="$REPO:$SITE/nvidia_cutlass_dsl/dsl_packages:$SITE${PYTHONPATH:+:$PYTHONPATH}"
}

missing() {  # prints the pip names of what is not importable
  pyenv
  "$PY" - <<'PYEOF'
import importlib
need = {"cutlass.cute": "nvidia-cutlass-dsl", "cuda.bindings.driver": "nvidia-cutlass-dsl",
        "pytest": "pytest", "pytest_benchmark": "pytest-benchmark"}
out = []
for mod, pkg in need.items():
    try:
        importlib.import_module(mod)
    except Exception:
        if pkg not in out:
            out.append(pkg)
print(" ".join(out))
PYEOF
}

install() {
  local need; need="$(missing)"
  if [ -z "$need" ]; then log "DSL and pytest importable"; [ -d "$STAGE/wheels/extra" ] && install_extra; return 0; fi
  log "missing: $need"
  [ -d "$STAGE/parts" ] || { log "no staged wheels in $STAGE/parts (run 'stage' first)"; exit 3; }
  mkdir -p "$STAGE/wheels"
  cat "$STAGE"/parts/wheels.tar.part-* > "$STAGE/wheels.tar"
  (cd "$STAGE" && sha256sum -c --status parts/wheels.tar.sha256 2>/dev/null \
      || (cd "$STAGE" && [ "$(sha256sum wheels.tar | cut -d' ' -f1)" = "$(cut -d' ' -f1 parts/wheels.tar.sha256)" ])) \
    || { log "reassembled wheels.tar fails its sha256: a part is missing or corrupt"; exit 4; }
  tar -xf "$STAGE/wheels.tar" -C "$STAGE/wheels"
  # --target: no root, no venv module, no PEP 668 trouble; torch stays the machine's own.
  "$PY" -m pip install --quiet --no-index --find-links "$STAGE/wheels" --target "$SITE" $need \
    || "$PY" -m pip install --quiet --no-index --find-links "$STAGE/wheels" --target "$SITE" --break-system-packages $need
  need="$(missing)"; [ -z "$need" ] || { log "still missing after install: $need"; exit 5; }
  log "installed into $SITE"
  install_extra
}

install_extra() {  # timm & co. only if `import fusedkat` fails (see EXTRA_NODEPS above)
  pyenv
  if "$PY" -c "import fusedkat" 2>/dev/null; then return 0; fi
  log "import fusedkat fails: installing timm's stack with --no-deps"
  local wheels=()
  for w in "$STAGE"/wheels/extra/*.whl; do
    case "$(basename "$w")" in
      torchvision-*) "$PY" -c "import torchvision" 2>/dev/null && continue
                     "$PY" -c "import torch,sys; sys.exit(0 if torch.__version__.startswith('2.11') else 1)" \
                       || { log "torch is not 2.11: not installing torchvision 0.26"; continue; } ;;
    esac
    wheels+=("$w")
  done
  "$PY" -m pip install --quiet --no-index --no-deps --target "$SITE" "${wheels[@]}" \
    || "$PY" -m pip install --quiet --no-index --no-deps --target "$SITE" --break-system-packages "${wheels[@]}"
  "$PY" -c "import fusedkat" || { log "import fusedkat still fails"; exit 6; }
}

run_suite() {
  install
  pyenv
  export FUSEDKAT_CACHE_DIR="$STAGE/cache"
  local res="$STAGE/results"; rm -rf "$res"; mkdir -p "$res"
  "$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_capability())" \
    | tee "$res/device.txt"
  local rc_tests=0 rc_bench=0 rc_gemm=0 rc_build=0
  log "build check for this GPU's arch"
  "$PY" -m cutlass_kernels.build --arch "$("$PY" -c 'import torch; from cutlass_kernels.arch import arch_from_capability as a; print(a(torch.cuda.get_device_capability()))')" \
    --check --json "$res/build.json" > "$res/build.txt" 2>&1 || rc_build=$?
  tail -3 "$res/build.txt" >&2
  log "GPU tests"
  (cd "$REPO" && "$PY" -m pytest tests/gpu -q -p no:cacheprovider -o addopts="" --junitxml "$res/gpu_tests.xml" \
      > "$res/gpu_tests.txt" 2>&1) || rc_tests=$?
  tail -15 "$res/gpu_tests.txt" >&2
  log "kernel benchmarks"
  (cd "$REPO" && "$PY" -m cutlass_kernels.benchmark --json "$res/kernel_bench.json" > "$res/kernel_bench.txt" 2>&1) || rc_bench=$?
  tail -5 "$res/kernel_bench.txt" >&2
  if ls "$REPO"/bench/bench_gemm*.py > /dev/null 2>&1; then
    log "GEMM benchmarks"
    (cd "$REPO" && "$PY" -m pytest "$REPO"/bench/bench_gemm*.py -q -p no:cacheprovider -o addopts="" \
        --benchmark-json "$res/gemm_bench.json" > "$res/gemm_bench.txt" 2>&1) || rc_gemm=$?
    tail -5 "$res/gemm_bench.txt" >&2
  fi
  RC_BUILD=$rc_build RC_TESTS=$rc_tests RC_BENCH=$rc_bench RC_GEMM=$rc_gemm RES="$res" REPO="$REPO" "$PY" - <<'PYEOF'
import datetime, json, os, re, xml.etree.ElementTree as ET
import torch
res, repo = os.environ["RES"], os.environ["REPO"]
def load(name):
    p = os.path.join(res, name)
    return json.load(open(p)) if os.path.exists(p) else None
tests = None
if os.path.exists(os.path.join(res, "gpu_tests.xml")):
    root = ET.parse(os.path.join(res, "gpu_tests.xml")).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    tests = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    tests["failed_names"] = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                             if c.find("failure") is not None or c.find("error") is not None]
gpu = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
out = {"date": date, "gpu": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability()),
       "torch": torch.__version__, "exit_codes": {k: int(os.environ[k]) for k in ("RC_BUILD", "RC_TESTS", "RC_BENCH", "RC_GEMM")},
       "build_check": load("build.json"), "gpu_tests": tests, "kernel_bench": load("kernel_bench.json"),
       "gemm_bench": load("gemm_bench.json"),
       "how": "scripts/gpu_suite.sh run; timings are CUDA-event medians within one process (see cutlass_kernels/benchmark.py)"}
path = os.path.join(repo, "bench", "results", f"{date}-{gpu}.json")
os.makedirs(os.path.dirname(path), exist_ok=True)
json.dump(out, open(path, "w"), indent=1)
print(path)
if os.environ.get("OUT"):
    import shutil
    shutil.copy(path, os.environ["OUT"])
    for name in ("gpu_tests.txt", "build.txt", "kernel_bench.txt", "gemm_bench.txt"):
        if os.path.exists(os.path.join(res, name)):
            shutil.copy(os.path.join(res, name), os.environ["OUT"])
PYEOF
  log "exit codes: build=$rc_build tests=$rc_tests bench=$rc_bench gemm=$rc_gemm"
  [ "$rc_build" = 0 ] && [ "$rc_tests" = 0 ] && [ "$rc_bench" = 0 ] && [ "$rc_gemm" = 0 ]
}

case "${1:-}" in
  prepare) shift; prepare "$@" ;;
  stage) shift; stage "$@" ;;
  install) install ;;
  run) run_suite ;;
  *) sed -n '2,30p' "$0"; exit 2 ;;
esac
