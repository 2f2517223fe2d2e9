#!/usr/bin/env bash
# The one GPU script: on a bare GPU machine (the device tool's H100/H200 image: Python 3.12, torch,
# timm, pytest, pytest-benchmark, no internet) unpack the CuTe DSL, run the GPU tests and the
# benchmarks, and write bench/results/<date>-<gpu>.json (also copied to $OUT when set).
#
# The DSL's four wheels are ~96 MB, one device command carries at most 64 MiB, so `prepare` unpacks
# them here, xz's the result (69 MB) and splits it into two parts that travel in consecutive
# commands while the machine stays warm (it is given back 30 s after a call):
#
#   here (internet):  scripts/gpu_suite.sh prepare          # -> build/gpu_wheels/part1, part2 (gitignored)
#   device command 1: scripts/gpu_suite.sh stage build/gpu_wheels/part1      carry=["build/gpu_wheels/part1"]
#   device command 2: scripts/gpu_suite.sh stage build/gpu_wheels/part2 && scripts/gpu_suite.sh run tests host
#                                                                            carry=["build/gpu_wheels/part2"]
#   device command 3: scripts/gpu_suite.sh run gemm model kbench             (results accumulate on the machine)
#
# Subcommands:
#   prepare [MiB]   download, unpack, xz, split (default part size 60 MiB)
#   stage DIR       copy one part into the stage dir (device)
#   install         reassemble, check sha256, unpack into the stage dir (only if the DSL is missing)
#   run [PHASES]    install if needed, then the phases (default: tests kbench gemm model):
#                   build (build check for this GPU's arch), tests (tests/gpu, one process per file,
#                   each under a timeout), host (bench.host_overhead), kbench (elementwise kernels),
#                   gemm (bench/bench_gemm_*.py at batch 128), model (KAT vs ViT training steps),
#                   fwdws (issue 15, ~6 min: tests/gpu/test_gemm_fwd.py against the sm90ws and the old
#                   sm90 kernel, then bench_gemm_fwd without inductor/autotune: cuBLAS, unfused, sm90ws,
#                   sm90, the _fid / _nomma diagnostics, GPU time by CUDA events, SM clocks logged);
#                   bwdws (issue 16, ~6 min: tests/gpu/test_gemm_bwd.py -- sm90wspp by default, sm90ws,
#                   the mma.sync pair by FUSEDKAT_BWD_SM90=0 -- then bench_gemm_bwd's backward cases:
#                   cuBLAS linear backward, unfused, sm90wspp, sm90ws, the mma.sync pair),
#                   goal (issue 21, <= 8 min: bench.goal_table, KAT vs ViT T/S/B per composition CuTe fused /
#                   unfused / decomposed, compiled / CUDA graphs / eager, batch 64 and 256, rows within
#                   FUSEDKAT_GOAL_BUDGET s, then bench.profile_step's per-kernel-class split);
#                   then bench.gpu_results folds everything into the results JSON.
#
# Environment: PYTHON (default: python3), FUSEDKAT_GPU_STAGE, OUT (device tool's output dir),
# FUSEDKAT_GPU_TESTS (glob in tests/gpu, default test_*.py), FUSEDKAT_BENCH_MODELS (model step sizes, e.g. T,S),
# FUSEDKAT_GPU_FILE_TIMEOUT / FUSEDKAT_GPU_TEST_TIMEOUT / FUSEDKAT_GPU_BENCH_TIMEOUT (seconds).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STAGE="${FUSEDKAT_GPU_STAGE:-/tmp/fusedkat_gpu_stage}"
PY="${PYTHON:-python3}"
WHEELS_DIR="$REPO/build/gpu_wheels"
# Only the DSL (and apache-tvm-ffi, its fast calling convention) travels: the GPU image already has torch, timm, torchvision, pytest, pytest-benchmark,
# pytest-timeout, cuda-bindings and protobuf (see the device tool's KINDS.md).
PKGS=("nvidia-cutlass-dsl==4.8.1" "nvidia-cutlass-dsl-libs-base==4.8.1" "nvidia-cutlass-dsl-libs-core==4.8.1"
      "nvidia-cutlass-dsl-libs-cu12==4.8.1" "apache-tvm-ffi==0.1.15.post2")
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
  log "xz -6 of the unpacked site (~1.5 min on 2 cores; 69 MB against the wheels' 96 MB)"
  tar -cf - -C "$WHEELS_DIR/site" . | xz -T0 -6 > "$WHEELS_DIR/site.tar.xz"
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
  if "$PY" -c "import cutlass.cute, tvm_ffi, pytest, pytest_benchmark, fusedkat" 2>/dev/null; then log "CuTe DSL, pytest and fusedkat importable"; return 0; fi
  [ -f "$STAGE/parts/site.tar.xz.sha256" ] || { log "no complete staged site in $STAGE/parts (run 'stage' for every part)"; exit 3; }
  cat "$STAGE"/parts/site.tar.xz.part-* > "$STAGE/site.tar.xz"
  [ "$(sha256sum "$STAGE/site.tar.xz" | cut -d' ' -f1)" = "$(cut -d' ' -f1 "$STAGE/parts/site.tar.xz.sha256")" ] \
    || { log "reassembled site.tar.xz fails its sha256: a part is missing or corrupt"; exit 4; }
  mkdir -p "$SITE"
  "$PY" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$STAGE/site.tar.xz" "$SITE"
  rm -f "$STAGE/site.tar.xz"
  "$PY" -c "import cutlass.cute, tvm_ffi, pytest, pytest_benchmark, fusedkat" || { log "imports still fail after unpacking"; exit 5; }
  log "unpacked the CuTe DSL into $SITE"
}

out_copy() { [ -n "${OUT:-}" ] && cp "$@" "$OUT/" 2>/dev/null || true; }

run_suite() {  # phases: any of build tests kbench gemm model host goal fwdws (default: tests kbench gemm model); results merge across calls
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
        for f in "$REPO"/tests/gpu/${FUSEDKAT_GPU_TESTS:-test_*.py}; do
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
          # the goal ratios per shape, from this run's medians (bench_gemm_*.summarize)
          (cd "$REPO" && "$PY" -m "bench.$name" "$res/$name.json" 2>&1 | tee "$res/${name}_summary.md" >&2) || true
          out_copy "$res/${name}_summary.md"
        done ;;
      host)
        log "host overhead per launch (cProfile)"
        (cd "$REPO" && timeout -k 10 240 "$PY" -m bench.host_overhead > "$res/host_overhead.txt" 2>&1) || true
        head -c 3000 "$res/host_overhead.txt" >&2
        grep "us of GPU work" "$res/host_overhead.txt" >&2 || true  # the per-kernel split, whole
        out_copy "$res/host_overhead.txt" ;;
      model)
        # eager first, then compiled with -x so a failure's traceback is printed before any timeout
        log "KAT vs ViT training steps (bf16 autocast, batch 64, 224^2)"; rc_model=0
        : > "$res/model_step.txt"
        # (FUSEDKAT_BENCH_MODELS=T,S picks sizes; each selection has its own timeout)
        local sels=("eager" "compiled and not cudagraphs" "cudagraphs") names=(eager compiled cudagraphs) i
        for i in 0 1 2; do
          (cd "$REPO" && FUSEDKAT_BENCH_SIZE=paper timeout -k 10 "${FUSEDKAT_GPU_BENCH_TIMEOUT:-300}" "$PY" -m pytest \
              bench/bench_model_step.py -q -rfE --tb=short -x -p no:cacheprovider -o addopts="" \
              -k "${sels[$i]}${FUSEDKAT_GPU_MODEL_FILTER:+ and $FUSEDKAT_GPU_MODEL_FILTER}" \
              --benchmark-json "$res/model_step_${names[$i]}.json" >> "$res/model_step.txt" 2>&1) || rc_model=$?
          out_copy "$res/model_step.txt"
        done
        "$PY" -c "
import json, sys
out = {'benchmarks': []}
for p in sys.argv[1:-1]:
    try:
        d = json.load(open(p))
    except (OSError, ValueError):
        continue
    out = {**d, 'benchmarks': out['benchmarks'] + d.get('benchmarks', [])}
json.dump(out, open(sys.argv[-1], 'w'))" "$res"/model_step_{eager,compiled,cudagraphs}.json "$res/model_step.json" || true
        tail -5 "$res/model_step.txt" >&2; out_copy "$res/model_step.txt" ;;
      goal)
        # issue 21: KAT vs ViT per composition (CuTe fused / unfused / decomposed), compiled / CUDA graphs /
        # eager, two batches, then the per-kernel-class profile; rows start only within the budget and the
        # JSON is rewritten after each row, so the timeout keeps what was measured.  FUSEDKAT_GOAL_ARGS
        # picks a subset for a second call (e.g. "--sizes S,B --modes cudagraphs").
        log "issue 21: goal table (bench.goal_table)"; rc_model=0
        (cd "$REPO" && timeout -k 10 "${FUSEDKAT_GPU_GOAL_TIMEOUT:-470}" "$PY" -m bench.goal_table \
            --budget-s "${FUSEDKAT_GOAL_BUDGET:-400}" --profile ${FUSEDKAT_GOAL_ARGS:-} --json "$res/goal_table.json" \
            > "$res/goal_table.txt" 2>&1) || rc_model=$?
        grep -v "^W[0-9]" "$res/goal_table.txt" | tail -60 >&2; out_copy "$res/goal_table.txt" "$res/goal_table.json" ;;
      fwdws)
        rc_gemm=0; rc_tests=0
        nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,clocks.mem --format=csv > "$res/clocks_fwdws.txt" 2>&1 || true
        log "issue 15: fused forward GPU tests (sm90ws + sm90)"
        (cd "$REPO" && timeout -k 10 "${FUSEDKAT_GPU_FILE_TIMEOUT:-420}" "$PY" -m pytest tests/gpu/test_gemm_fwd.py -q -rfE \
            -p no:cacheprovider -o addopts="" "${tmo[@]}" --junitxml "$res/junit_test_gemm_fwd_ws.xml" \
            > "$res/gpu_tests_fwdws.txt" 2>&1) || rc_tests=$?
        tail -4 "$res/gpu_tests_fwdws.txt" >&2; out_copy "$res/gpu_tests_fwdws.txt"
        log "issue 15: fused forward benchmarks (no inductor / autotune)"
        (cd "$REPO" && FUSEDKAT_BENCH_SIZE="${FUSEDKAT_BENCH_SIZE:-paper}" timeout -k 10 "${FUSEDKAT_GPU_BENCH_TIMEOUT:-300}" \
            "$PY" -m pytest bench/bench_gemm_fwd.py -q -rfE -p no:cacheprovider -o addopts="" \
            -k "not inductor and not autotuned" --benchmark-json "$res/bench_gemm_fwd_ws.json" \
            > "$res/bench_gemm_fwd_ws.txt" 2>&1) || rc_gemm=$?
        nvidia-smi --query-gpu=clocks.sm,clocks.max.sm --format=csv >> "$res/clocks_fwdws.txt" 2>&1 || true
        tail -5 "$res/bench_gemm_fwd_ws.txt" >&2; out_copy "$res/bench_gemm_fwd_ws.txt" "$res/clocks_fwdws.txt"
        (cd "$REPO" && "$PY" -m bench.bench_gemm_fwd "$res/bench_gemm_fwd_ws.json" 2>&1 \
            | tee "$res/bench_gemm_fwd_ws_summary.md" >&2) || true
        out_copy "$res/bench_gemm_fwd_ws_summary.md" "$res/bench_gemm_fwd_ws.json" ;;
      bwdws)
        rc_gemm=0; rc_tests=0
        nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,clocks.mem --format=csv > "$res/clocks_bwdws.txt" 2>&1 || true
        log "issue 16: fused backward GPU tests (sm90wspp default, sm90ws, the mma.sync pair)"
        (cd "$REPO" && timeout -k 10 "${FUSEDKAT_GPU_FILE_TIMEOUT:-420}" "$PY" -m pytest tests/gpu/test_gemm_bwd.py -q -rfE \
            -p no:cacheprovider -o addopts="" "${tmo[@]}" --junitxml "$res/junit_test_gemm_bwd_ws.xml" \
            > "$res/gpu_tests_bwdws.txt" 2>&1) || rc_tests=$?
        tail -4 "$res/gpu_tests_bwdws.txt" >&2; out_copy "$res/gpu_tests_bwdws.txt"
        log "issue 16: backward benchmarks (linear, unfused, sm90wspp, sm90ws, mma.sync pair; no layer steps)"
        (cd "$REPO" && FUSEDKAT_BENCH_SIZE="${FUSEDKAT_BENCH_SIZE:-paper}" timeout -k 10 "${FUSEDKAT_GPU_BENCH_TIMEOUT:-300}" \
            "$PY" -m pytest bench/bench_gemm_bwd.py -q -rfE -p no:cacheprovider -o addopts="" \
            -k "test_gemm_bwd and not atomics" --benchmark-json "$res/bench_gemm_bwd_ws.json" \
            > "$res/bench_gemm_bwd_ws.txt" 2>&1) || rc_gemm=$?
        nvidia-smi --query-gpu=clocks.sm,clocks.max.sm --format=csv >> "$res/clocks_bwdws.txt" 2>&1 || true
        tail -5 "$res/bench_gemm_bwd_ws.txt" >&2; out_copy "$res/bench_gemm_bwd_ws.txt" "$res/clocks_bwdws.txt"
        (cd "$REPO" && "$PY" -m bench.bench_gemm_bwd "$res/bench_gemm_bwd_ws.json" 2>&1 \
            | tee "$res/bench_gemm_bwd_ws_summary.md" >&2) || true
        out_copy "$res/bench_gemm_bwd_ws_summary.md" "$res/bench_gemm_bwd_ws.json" ;;
      *) log "unknown phase: $phase"; exit 2 ;;
    esac
  done
  local slug; slug="$("$PY" -c 'import re, torch; print(re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-"))')"
  local commit; commit="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  local summary="$REPO/bench/results/$(date -u +%Y-%m-%d)-$slug.json"
  (cd "$REPO" && "$PY" -m bench.gpu_results "$res" --out "$summary" \
      --note "scripts/gpu_suite.sh run $phases; exit codes build=$rc_build tests=$rc_tests kbench=$rc_bench gemm=$rc_gemm model=$rc_model; git $commit (the device's copy of .git can lag the tree)") \
    && out_copy "$summary"
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
