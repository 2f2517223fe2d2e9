"""Application code behind the ``fusedkat`` console script (see :mod:`fusedkat.cli`).

Modules: ``data`` (bundled digits), ``twins`` (KAT/ViT pair), ``train`` (loop + metrics),
``memory`` (peak step memory), ``plots``, and one module per subcommand (``demo``, ``info``,
``fitcmd``, ``convert``, ``benchcmd``). Nothing here is imported by ``import fusedkat``.
"""
