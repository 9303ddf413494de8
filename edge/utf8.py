# Well-formed UTF-8, checked where MicroPython does not check it.
#
# MicroPython's str(data, "utf-8") also takes overlong forms (b"\xc0\xaf"),
# UTF-16 surrogates (b"\xed\xa0\x80") and code points past U+10FFFF
# (b"\xf4\x90\x80\x80"), which CPython, the official FlatBuffers runtime and
# the hub refuse. edge/codec.py imports this module only for a string that is
# not plain ASCII, so a device that never sees one never loads it.


def well_formed(b, i, n):
    # Whether b[i:n] is well-formed UTF-8 (the Unicode standard's table 3-7):
    # for each lead byte, the range of the byte after it, then plain
    # continuation bytes.
    while i < n:
        c = b[i]
        if c < 0x80:
            i += 1
            continue
        if c < 0xC2 or c > 0xF4:
            return False
        if c < 0xE0:
            k, lo, hi = 1, 0x80, 0xBF
        elif c < 0xF0:
            k = 2
            lo = 0xA0 if c == 0xE0 else 0x80
            hi = 0x9F if c == 0xED else 0xBF
        else:
            k = 3
            lo = 0x90 if c == 0xF0 else 0x80
            hi = 0x8F if c == 0xF4 else 0xBF
        if i + k >= n:  # the sequence runs past the end
            return False
        if not lo <= b[i + 1] <= hi:
            return False
        for j in range(i + 2, i + k + 1):
            if b[j] & 0xC0 != 0x80:
                return False
        i += k + 1
    return True
