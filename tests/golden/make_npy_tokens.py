#!/usr/bin/env python3
"""Writes the .npy token files tests/calib/test_npy_tokens.cpp reads (NumPy's own writer, so the
C++ reader is checked against the format as NumPy produces it). Each array's values are
arange-based so the test can restate them.

    .venv/bin/python tests/golden/make_npy_tokens.py
"""
import pathlib

import numpy as np

OUT = pathlib.Path(__file__).resolve().parents[1] / "data" / "npy"


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    np.save(OUT / "ids_u2.npy", np.arange(100, 130, dtype="<u2"))
    np.save(OUT / "ids_i8_2d.npy", np.arange(24, dtype="<i8").reshape(4, 6) * 3)
    np.save(OUT / "ids_i4_fortran.npy", np.asfortranarray(np.arange(15, dtype="<i4").reshape(3, 5)))
    np.save(OUT / "ids_u4_big_endian.npy", np.arange(70000, 70010, dtype=">u4"))
    np.save(OUT / "ids_u1.npy", np.arange(0, 250, 10, dtype="u1"))
    with open(OUT / "ids_u2_v2.npy", "wb") as f:
        np.lib.format.write_array(f, np.arange(7, dtype="<u2"), version=(2, 0))
    np.save(OUT / "float_ids.npy", np.arange(5, dtype="<f4"))
    np.save(OUT / "negative_ids.npy", np.array([3, 1, -2, 5], dtype="<i2"))


if __name__ == "__main__":
    main()
