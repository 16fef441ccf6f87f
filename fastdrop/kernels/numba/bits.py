"""Bit reinterpretation of floats for Numba ``@njit`` code (LLVM bitcasts, no arithmetic)."""
from numba import types
from numba.extending import intrinsic


def _reinterpretation(source, result, doc):
    """An intrinsic reinterpreting a ``source`` value's bits as ``result`` (same width).

    Integer sources take any integer, converted to ``source`` first (its low bits).
    """
    @intrinsic
    def reinterpret(typingctx, value):
        if value != source and not (isinstance(source, types.Integer)
                                    and isinstance(value, types.Integer)):
            return None

        def codegen(context, builder, signature, args):
            converted = context.cast(builder, args[0], signature.args[0], source)
            return builder.bitcast(converted, context.get_value_type(result))

        return result(value), codegen

    reinterpret.__doc__ = doc
    return reinterpret


float32_bits = _reinterpretation(types.float32, types.uint32,
                                 "Reinterpret a float32 as its uint32 bit pattern.")
float32_from_bits = _reinterpretation(
    types.uint32, types.float32, "Reinterpret the low 32 bits of an unsigned integer as a float32.")
float64_bits = _reinterpretation(types.float64, types.uint64,
                                 "Reinterpret a float64 as its uint64 bit pattern.")
float64_from_bits = _reinterpretation(
    types.uint64, types.float64, "Reinterpret the low 64 bits of an integer as a float64.")
