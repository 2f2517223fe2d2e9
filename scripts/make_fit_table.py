#!/usr/bin/env python
"""Regenerate fusedkat/init/fit_table.json: fresh LM fits of every named target, both forms.

Usage: python scripts/make_fit_table.py [--check]
  --check  do not write; exit 1 if a fresh fit is worse than the stored one (or entries are missing).

The table lets ``import fusedkat`` and model construction skip scipy.  tests/test_init_fit.py
re-fits a few entries and checks them against the table.
"""
from __future__ import annotations

import argparse
import json
import sys

from fusedkat.files import atomic_write_text
from fusedkat.init import fit as fitmod
from fusedkat.init.fit import DEFAULT_INTERVAL, DEFAULT_NUM_POINTS, fit_rational
from fusedkat.init.targets import TARGETS
from fusedkat.ops.rational_math import DEFAULT_ORDER, FORMS

ORDERS = [DEFAULT_ORDER]


def build() -> dict:
    fits: dict = {}
    for form in FORMS:
        for m, n in ORDERS:
            row = fits.setdefault(form, {}).setdefault(f"{m}/{n}", {})
            for name in sorted(TARGETS):
                if name == "identity":
                    continue  # exact, never tabulated
                f = fit_rational(name, m=m, n=n, form=form, use_table=False)
                row[name] = {"numerator": [float(v) for v in f.numerator],
                             "denominator": [float(v) for v in f.denominator], "mse": f.mse}
                print(f"{form} {m}/{n} {name:12s} mse={f.mse:.3e}", file=sys.stderr)
    return {"version": 1, "num_points": DEFAULT_NUM_POINTS, "interval": list(DEFAULT_INTERVAL), "fits": fits}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    table = build()
    if args.check:
        old = fitmod._load_table()
        bad = [(form, o, name) for form, rows in table["fits"].items() for o, row in rows.items()
               for name, e in row.items()
               if old.get("fits", {}).get(form, {}).get(o, {}).get(name, {}).get("mse", -1.0) < 0
               or e["mse"] < 0.5 * old["fits"][form][o][name]["mse"] - 1e-15]
        print("stale entries:", bad if bad else "none")
        return 1 if bad else 0
    atomic_write_text(fitmod.TABLE_PATH, json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote {fitmod.TABLE_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
