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
# Only the DSL travels: the GPU image already has torch, timm, torchvision, pytest, pytest-benchmark,
# pytest-timeout, cuda-bindings and protobuf (see the device tool's KINDS.md).
PKGS=("nvidia-cutlass-dsl==4.8.1" "nvidia-cutlass-dsl-libs-base==4.8.1" "nvidia-cutlass-dsl-libs-core==4.8.1"
      "nvidia-cutlass-dsl-libs-cu12==4.8.1")
SITE="$STAGE/site"

log() { echo "[gpu_suite $(date -u +%H:%M:%S)] $*" >&2; }

prepare() {  # the DSL's four cp312 wheels, unpacked (= what `pip install --target` makes) and xz'd
  local mib="${1:-60}"
  local pip="$REPO/.venv/bin/pip"; [ -x "$pip" ] || pip="pip"
  rm -rf "$WHEELS_DIR"; mkdir -p "$WHEELS_DIR/wheels" "$WHEELS_DIR/site"
  log "downloading cp312 manylinux wheels: ${PKGS[*]} (--no-deps: the image has cuda-bindings, protobuf, ...)"
  "$pip" download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d "$WHEELS_DIR/wheels" "${PKGS[@]}"
  "$PY" -c "import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]" \
    "$WHEELS_DIR/site" "$WHEELS_DIR"/wheels/*.whl
  log "xz -9e of the unpacked site (a few minutes; xz beats the wheels' deflate by ~30%)"
  tar -cf - -C "$WHEELS_DIR/site" . | xz -T0 -9e > "$WHEELS_DIR/site.tar.xz"
  rm -rf "$WHEELS_DIR/site" "$WHEELS_DIR/wheels"
  (cd "$WHEELS_DIR" && sha256sum site.tar.xz > site.tar.xz.sha256 && split -b "${mib}m" -d -a 2 site.tar.xz site.tar.xz.part-)
  local i=0
  for chunk in "$WHEELS_DIR"/site.tar.xz.part-*; do
    i=$((i + 1)); mkdir -p "$WHEELS_DIR/part$i"; mv "$chunk" "$WHEELS_DIR/part$i/"
  done
  cp "$WHEELS_DIR/site.tar.xz.sha256" "$WHEELS_DIR/part$i/"
  rm -f "$WHEELS_DIR/site.tar.xz"
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

pyenv() {  # PYTHONPATH for the unpacked site (its .pth is not processed outside site-packages)
  export PYTHONPATH="$REPO:$SITE/nvidia_cutlass_dsl/dsl_packages:$SITE${PYTHONPATH:+:$PYTHONPATH}"
}

install() {
  pyenv
  if "$PY" -c "import cutlass.cute, pytest, pytest_benchmark, fusedkat" 2>/dev/null; then log "CuTe DSL, pytest and fusedkat importable"; return 0; fi
  [ -f "$STAGE/parts/site.tar.xz.sha256" ] || { log "no complete staged site in $STAGE/parts (run 'stage' for every part)"; exit 3; }
  cat "$STAGE"/parts/site.tar.xz.part-* > "$STAGE/site.tar.xz"
  [ "$(sha256sum "$STAGE/site.tar.xz" | cut -d' ' -f1)" = "$(cut -d' ' -f1 "$STAGE/parts/site.tar.xz.sha256")" ] \
    || { log "reassembled site.tar.xz fails its sha256: a part is missing or corrupt"; exit 4; }
  mkdir -p "$SITE"
  "$PY" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$STAGE/site.tar.xz" "$SITE"
  rm -f "$STAGE/site.tar.xz"
  "$PY" -c "import cutlass.cute, pytest, pytest_benchmark, fusedkat" || { log "imports still fail after unpacking"; exit 5; }
  log "unpacked the CuTe DSL into $SITE"
}

out_copy() { [ -n "${OUT:-}" ] && cp "$@" "$OUT/" 2>/dev/null || true; }

run_suite() {  # phases: any of build tests kbench gemm model (default: tests kbench gemm model); results merge across calls
  local phases="${*:-tests kbench gemm model}"
  install
  pyenv
  export FUSEDKAT_CACHE_DIR="$STAGE/cache" PYTHONUNBUFFERED=1
  local res="$STAGE/results"; mkdir -p "$res"
  "$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_capability())" \
    | tee "$res/device.txt"
  local rc_tests=- rc_bench=- rc_gemm=- rc_build=- rc_model=-  # "-": phase not run in this call
  local tmo=(); "$PY" -c "import pytest_timeout" 2>/dev/null && tmo=(--timeout "${FUSEDKAT_GPU_TEST_TIMEOUT:-240}" --timeout-method thread)
  for phase in $phases; do
    case "$phase" in
      build)
        log "build check for this GPU's arch"; rc_build=0
        "$PY" -m cutlass_kernels.build --arch "$("$PY" -c 'import torch; from cutlass_kernels.arch import arch_from_capability as a; print(a(torch.cuda.get_device_capability()))')" \
          --check --jobs 16 --json "$res/build.json" > "$res/build.txt" 2>&1 || rc_build=$?
        tail -3 "$res/build.txt" >&2; out_copy "$res/build.txt" ;;
      tests)
        # one process per file, each under a hard timeout, so a hung kernel costs one file, not the call
        : > "$res/gpu_tests.txt"
        for f in "$REPO"/tests/gpu/test_*.py; do
          local name; name="$(basename "$f" .py)"
          log "GPU tests: $name"; [ "$rc_tests" = - ] && rc_tests=0
          (cd "$REPO" && timeout -k 10 "${FUSEDKAT_GPU_FILE_TIMEOUT:-420}" "$PY" -m pytest "$f" -q -rfE -p no:cacheprovider \
              -o addopts="" "${tmo[@]}" --junitxml "$res/junit_$name.xml" >> "$res/gpu_tests.txt" 2>&1) || rc_tests=$?
          tail -4 "$res/gpu_tests.txt" >&2; out_copy "$res/gpu_tests.txt"
        done ;;
      kbench)
        log "kernel benchmarks"; rc_bench=0
        (cd "$REPO" && timeout -k 10 300 "$PY" -m cutlass_kernels.benchmark --json "$res/kernel_bench.json" \
            > "$res/kernel_bench.txt" 2>&1) || rc_bench=$?
        tail -5 "$res/kernel_bench.txt" >&2; out_copy "$res/kernel_bench.txt" ;;
      gemm)
        rc_gemm=0
        export FUSEDKAT_BENCH_SIZE="${FUSEDKAT_BENCH_SIZE:-paper}"  # batch 128: M = 25216 rows
        for f in "$REPO"/bench/bench_gemm_*.py; do
          local name; name="$(basename "$f" .py)"
          log "GEMM benchmarks: $name"
          (cd "$REPO" && timeout -k 10 "${FUSEDKAT_GPU_BENCH_TIMEOUT:-300}" "$PY" -m pytest "$f" -q -rfE -p no:cacheprovider \
              -o addopts="" --benchmark-json "$res/$name.json" > "$res/$name.txt" 2>&1) || rc_gemm=$?
          tail -5 "$res/$name.txt" >&2; out_copy "$res/$name.txt"
        done ;;
      host)
        log "host overhead per launch (cProfile)"
        (cd "$REPO" && timeout -k 10 120 "$PY" -m bench.host_overhead > "$res/host_overhead.txt" 2>&1) || true
        head -c 3000 "$res/host_overhead.txt" >&2; out_copy "$res/host_overhead.txt" ;;
      model)
        log "KAT vs ViT training steps (bf16 autocast, batch 64, 224^2)"; rc_model=0
        (cd "$REPO" && FUSEDKAT_BENCH_SIZE=paper timeout -k 10 "${FUSEDKAT_GPU_BENCH_TIMEOUT:-300}" "$PY" -m pytest \
            bench/bench_model_step.py -q -rfE -p no:cacheprovider -o addopts="" ${FUSEDKAT_GPU_MODEL_FILTER:+-k "$FUSEDKAT_GPU_MODEL_FILTER"} \
            --benchmark-json "$res/model_step.json" > "$res/model_step.txt" 2>&1) || rc_model=$?
        tail -5 "$res/model_step.txt" >&2; out_copy "$res/model_step.txt" ;;
      *) log "unknown phase: $phase"; exit 2 ;;
    esac
  done
  RC_MODEL=$rc_model RC_BUILD=$rc_build RC_TESTS=$rc_tests RC_BENCH=$rc_bench RC_GEMM=$rc_gemm RES="$res" REPO="$REPO" "$PY" - <<'PYEOF'
import datetime, json, os, re, xml.etree.ElementTree as ET
import torch
res, repo = os.environ["RES"], os.environ["REPO"]
def load(name):
    p = os.path.join(res, name)
    return json.load(open(p)) if os.path.exists(p) else None
import glob
tests = None
for xml in sorted(glob.glob(os.path.join(res, "junit_*.xml"))):
    root = ET.parse(xml).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    tests = tests or {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "files": [], "failed_names": []}
    for k in ("tests", "failures", "errors", "skipped"):
        tests[k] += int(suite.get(k, 0))
    tests["files"].append(os.path.basename(xml)[6:-4])
    tests["failed_names"] += [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                              if c.find("failure") is not None or c.find("error") is not None]
gpu = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
out = {"date": date, "gpu": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability()),
       "torch": torch.__version__, "exit_codes": {k: (None if os.environ[k] == "-" else int(os.environ[k])) for k in ("RC_BUILD", "RC_TESTS", "RC_BENCH", "RC_GEMM", "RC_MODEL")},
       "build_check": load("build.json"), "gpu_tests": tests, "kernel_bench": load("kernel_bench.json"),
       "gemm_bench": {"fwd": load("bench_gemm_fwd.json"), "bwd": load("bench_gemm_bwd.json")},
       "model_step": load("model_step.json"),
       "how": "scripts/gpu_suite.sh run; timings are CUDA-event medians within one process (see cutlass_kernels/benchmark.py)"}
path = os.path.join(repo, "bench", "results", f"{date}-{gpu}.json")
os.makedirs(os.path.dirname(path), exist_ok=True)
json.dump(out, open(path, "w"), indent=1)
print(path)
if os.environ.get("OUT"):
    import shutil
    shutil.copy(path, os.environ["OUT"])
PYEOF
  log "exit codes: build=$rc_build tests=$rc_tests kbench=$rc_bench gemm=$rc_gemm model=$rc_model"
  for rc in "$rc_build" "$rc_tests" "$rc_bench" "$rc_gemm" "$rc_model"; do [ "$rc" = - ] || [ "$rc" = 0 ] || return 1; done
}

case "${1:-}" in
  prepare) shift; prepare "$@" ;;
  stage) shift; stage "$@" ;;
  install) install ;;
  run) shift; run_suite "$@" ;;
  *) sed -n '2,30p' "$0"; exit 2 ;;
esac
