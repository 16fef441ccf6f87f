"""LLVM IR the Numba dropout loops emit directly: prefetches and whole-word scaling.

Numba's own loops cannot express a prefetch, a select on a word's 64 keep bits as a
vector mask, or code placed between the Philox blocks of a batch; these intrinsics
emit it. They know element arrays and keep words, nothing of Python objects.
"""
from llvmlite import binding, ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .words import build_keep_words, splat, store_keep_words

# How far ahead the loops ask for elements, in mask words (dropout.h's FDPREFETCH_WORDS).
PREFETCH_WORDS = 20
# Mask words scaled after each Philox block of the pipelined loop's batch (dropout.h's
# FDINTERLEAVE_512).
INTERLEAVE = 3


@intrinsic
def prefetch_for_write(typingctx, array, index):
    """Ask the CPU to fetch array[index]'s cache line (LLVM's prefetch, write intent)."""
    if not isinstance(array, types.Array) or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        values = context.make_array(array_type)(context, builder, args[0])
        _emit_prefetch(builder, cgutils.get_item_pointer(context, builder, array_type, values,
                                                         [args[1]], wraparound=False))
        return context.get_dummy_value()

    return types.none(array, index), codegen


def _emit_prefetch(builder, pointer):
    """LLVM: ask the CPU to fetch the cache line at ``pointer`` (prefetch, write intent)."""
    byte_pointer, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
    name = "llvm.prefetch.p0" if binding.llvm_version_info >= (15,) else "llvm.prefetch.p0i8"
    function = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]), name)
    builder.call(function, [builder.bitcast(pointer, byte_pointer), ir.Constant(i32, 1),
                            ir.Constant(i32, 3), ir.Constant(i32, 1)])


def _emit_scale_words(context, builder, array_type, arrays, keep, scale, group, first, until,
                      prefetch_stop):
    """Emit target word k = source word k * scale where keep[k - group] keeps, +0 elsewhere.

    For k = group + first .. group + until - 1, whole words (64 elements each) only:
    one vector load, multiply, select on the keep bits (the i64 as 64 lanes of i1)
    and store per word, the elements PREFETCH_WORDS words ahead asked for first
    while those lie before word ``prefetch_stop`` (dropout.h's fd_apply_words): the
    source's, and the target's where it is another array. ``arrays`` is (source, target).
    """
    i64 = ir.IntType(64)
    element = context.get_value_type(array_type.dtype)
    words_of = ir.VectorType(element, 64)
    half = array_type.dtype == types.uint16  # float16 bit patterns
    brain = array_type.dtype == types.int16  # bfloat16 bit patterns
    source, target = (context.make_array(array_type)(context, builder, array).data
                      for array in arrays)
    keep = context.make_array(types.Array(types.uint64, 1, "C"))(context, builder, keep).data
    alignment = array_type.dtype.bitwidth // 8
    line = 64 // alignment
    entry = builder.basic_block
    condition = builder.append_basic_block("scale_words.condition")
    body = builder.append_basic_block("scale_words.body")
    fetch = builder.append_basic_block("scale_words.fetch")
    scale_word = builder.append_basic_block("scale_words.scale")
    end = builder.append_basic_block("scale_words.end")
    builder.branch(condition)
    builder.position_at_end(condition)
    index = builder.phi(i64)
    index.add_incoming(first, entry)
    builder.cbranch(builder.icmp_signed("<", index, until), body, end)
    builder.position_at_end(body)
    word = builder.add(group, index)
    start = builder.mul(word, ir.Constant(i64, 64))
    ahead = builder.add(word, ir.Constant(i64, PREFETCH_WORDS))
    builder.cbranch(builder.icmp_signed("<", ahead, prefetch_stop), fetch, scale_word)
    builder.position_at_end(fetch)
    ahead_start = builder.mul(ahead, ir.Constant(i64, 64))

    def fetch_ahead(data):
        for at in range(0, 64, line):
            _emit_prefetch(builder, builder.gep(data, [builder.add(ahead_start,
                                                                  ir.Constant(i64, at))]))

    fetch_ahead(source)
    with builder.if_then(builder.icmp_unsigned("!=", source, target)):  # out of place
        fetch_ahead(target)
    builder.branch(scale_word)
    builder.position_at_end(scale_word)
    values = builder.load(builder.bitcast(builder.gep(source, [start]), words_of.as_pointer()),
                          align=alignment)
    if half:  # widen to float32 (exact), multiply (exact), round once to float16
        widened = builder.fpext(builder.bitcast(values, ir.VectorType(ir.HalfType(), 64)),
                                ir.VectorType(ir.FloatType(), 64))
        product = builder.fmul(widened, splat(builder, scale, 64))
        scaled = builder.bitcast(builder.fptrunc(product, ir.VectorType(ir.HalfType(), 64)),
                                 words_of)
    elif brain:  # the same, with bfloat16's widening (a shift) and rounding on the bits
        scaled = _emit_bfloat16_product(builder, values, scale)
    else:
        scaled = builder.fmul(values, splat(builder, scale, 64))
    lanes = builder.bitcast(builder.load(builder.gep(keep, [index])),
                            ir.VectorType(ir.IntType(1), 64))
    builder.store(builder.select(lanes, scaled, ir.Constant(words_of, None)),
                  builder.bitcast(builder.gep(target, [start]), words_of.as_pointer()),
                  align=alignment)
    following = builder.add(index, ir.Constant(i64, 1))
    index.add_incoming(following, builder.basic_block)
    builder.branch(condition)
    builder.position_at_end(end)


def _emit_bfloat16_product(builder, values, scale):
    """LLVM: 64 bfloat16 bit patterns (i16) times the float32 ``scale``, rounded as half.py does.

    Widen: zero-extend and shift up by 16 (exact). Round the float32 product to nearest
    even on its bits (add 0x7FFF plus the lowest kept bit, shift down by 16); NaN
    becomes 0x7FC0 with its sign. All of it vector integer and float code.
    """
    i32s, floats = ir.VectorType(ir.IntType(32), 64), ir.VectorType(ir.FloatType(), 64)

    def constant(value):
        return ir.Constant(i32s, [value] * 64)

    widened = builder.bitcast(builder.shl(builder.zext(values, i32s), constant(16)), floats)
    product = builder.fmul(widened, splat(builder, scale, 64))
    bits = builder.bitcast(product, i32s)
    high = builder.lshr(bits, constant(16))
    rounded = builder.lshr(builder.add(builder.add(bits, constant(0x7FFF)),
                                       builder.and_(high, constant(1))), constant(16))
    quiet_nan = builder.or_(builder.and_(high, constant(0x8000)), constant(0x7FC0))
    is_nan = builder.fcmp_unordered("uno", product, product)
    return builder.trunc(builder.select(is_nan, quiet_nan, rounded), values.type)


@intrinsic
def draw_scaling(typingctx, out, word, stream, seed, threshold, source, target, keep, scale,
                  group, ready, prefetch_stop):
    """The next batch's keep words, with a group's whole words scaled on the way.

    ``_draw_scaling(out, word, stream, seed, threshold, source, target, keep, scale, group,
    ready, prefetch_stop)`` stores the keep words of global words word .. word+BATCH_WORDS-1
    in out[:BATCH_WORDS] and returns ``done``: after each Philox block of the batch, up
    to INTERLEAVE more of words group .. group + ready - 1 (each of 64 elements) are
    scaled by keep[k - group], and ``done`` of them were. The software pipelining of
    dropout.h's FD_PIPELINE_DEFINE: the out-of-order core overlaps one group's loads
    and stores with the next group's arithmetic.
    """
    def codegen(context, builder, signature, args):
        out, word, stream, seed, threshold, source, target, keep, scale = args[:9]
        group, ready, prefetch_stop = args[9:]
        i64 = ir.IntType(64)

        def after_block(builder, values):
            done = values[0]
            more = builder.add(done, ir.Constant(i64, INTERLEAVE))
            until = builder.select(builder.icmp_signed("<", more, ready), more, ready)
            _emit_scale_words(context, builder, signature.args[5], (source, target), keep,
                              scale, group, done, until, prefetch_stop)
            return (until,)

        words, (done,) = build_keep_words(builder, word, stream, seed, threshold,
                                          carried=(ir.Constant(i64, 0),),
                                          after_block=after_block)
        store_keep_words(context, builder, words, signature.args[0], out, ir.Constant(i64, 0))
        return done

    signature = types.int64(out, *(types.uint64,) * 4, source, target, keep, scale,
                            *(types.int64,) * 3)
    return signature, codegen


@intrinsic
def scale_whole_words(typingctx, source, target, keep, scale, group, first, until,
                       prefetch_stop):
    """`_emit_scale_words` as a call: words group+first .. group+until-1, all of 64 elements."""
    def codegen(context, builder, signature, args):
        source, target, keep, scale = args[:4]
        _emit_scale_words(context, builder, signature.args[0], (source, target), keep, scale,
                          *args[4:])
        return context.get_dummy_value()

    return types.none(source, target, keep, scale, *(types.int64,) * 4), codegen
