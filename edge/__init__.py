# The edge runtime (edge/DESIGN.md). Its modules run on MicroPython and on
# CPython, and take const() from here:
#
#   from edge import const
#   _LIMIT = const(512)   # MicroPython inlines it: no global, no RAM
try:
    from micropython import const
except ImportError:  # CPython

    def const(x):  # type: ignore[misc]  # stubs: MicroPython's const
        return x
