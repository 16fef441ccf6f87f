"""Bit reinterpretation of floats for Numba ``@njit`` code (LLVM bitcasts, no arithmetic)."""
from numba import types
from numba.extending import intrinsic


@intrinsic
def float32_bits(typingctx, value):
    """Reinterpret a float32 as its uint32 bit pattern."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.uint32))

    return types.uint32(types.float32), codegen


@intrinsic
def float32_from_bits(typingctx, bits):
    """Reinterpret the low 32 bits of an unsigned integer as a float32."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        low_bits = context.cast(builder, args[0], signature.args[0], types.uint32)
        return builder.bitcast(low_bits, context.get_value_type(types.float32))

    return types.float32(bits), codegen


@intrinsic
def float64_bits(typingctx, value):
    """Reinterpret a float64 as its uint64 bit pattern."""
    if value != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.uint64))

    return types.uint64(types.float64), codegen


@intrinsic
def float64_from_bits(typingctx, bits):
    """Reinterpret a uint64 bit pattern as a float64."""
    if bits != types.uint64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))

    return types.float64(types.uint64), codegen
