"""CuTe DSL kernels for fusedkat, with their compile / cache / launch plumbing.

Importing this package is cheap: nothing here imports the DSL (``cutlass``) or torch.cuda at
import time.  Layout:

* :mod:`.config`    frozen-dataclass kernel configs with a derived, stable cache key
* :mod:`.arch`      GPU arch detection (device capability) with an explicit override
* :mod:`.cache`     on-disk compile cache (config + source fingerprint + DSL version), process-safe
* :mod:`.sass`      cubin inspection: registers, local memory (spills), SASS opcode counts
* :mod:`.registry`  the kernel variants the library can dispatch to (iterated by the build check)
* :mod:`.build`     ``python -m cutlass_kernels.build --arch sm_80,sm_90a --check [--json PATH]``
* :mod:`.dsl`       DSL helpers shared by kernel generators (MathOps on Float32, compile options)
* :mod:`.rational_elementwise` / :mod:`.rational_variants`  group-rational fwd/bwd kernels
* :mod:`.runtime`   compiled-kernel loading for launches (memo + disk cache + JIT)
* :mod:`.launch`    torch-facing launchers (same signatures as ``fusedkat.ops.torch_impl``)
* :mod:`.dispatch_probe`  tells ``fusedkat.ops.dispatch`` whether the kernels can run
* :mod:`.gemm`      fused rational GEMMs (issues 6/7)
* :mod:`.costmodel` static cycle model (SASS counts x pipe rates, validated on the H100 results):
  ``python -m cutlass_kernels.costmodel``; its parts :mod:`.costmodel_sass` (loops and issue slots
  per role), :mod:`.costmodel_hw` (GPU constants), :mod:`.costmodel_data` (the measurements),
  :mod:`.costmodel_kernels` (time formulas), :mod:`.costmodel_report` (tables)
"""
