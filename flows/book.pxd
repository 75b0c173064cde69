# Cython declarations for flows/book.py (infra/core.py compiles it): the trade loop's `bar` is a
# compiled MinuteBar (flows/bars.pxd); its other C-typed locals are declared in the .py itself.
from flows.bars cimport MinuteBar
